//! How a format opens another image it names (a backing file, an external data file, a differencing parent)
//! without depending on the factory or on other formats: it asks an [`ImageOpener`], which the factory
//! implements and gates.
//!
//! The gate is the caller's: whether files named inside an untrusted image may be opened at all, and never by
//! probing their format (the format must be recorded in the image or given by the caller).

use std::path::PathBuf;

use crate::disk_file::DiskFile;
use crate::error::{Error, ErrorKind, Operation, Result};

/// Why an image names another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamedImageRole {
    /// A backing file (QCOW2 `backing_file`).
    Backing,
    /// An external data file (QCOW2 `data_file`).
    DataFile,
    /// A differencing disk's parent (VHD, VHDX).
    Parent,
}

/// A request to open a file named inside an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// The path, already resolved against the naming image's directory.
    pub path: PathBuf,
    /// The format recorded in the image (or given by the caller); `None` means unknown and is refused by the
    /// factory's opener rather than probed.
    pub format: Option<String>,
    /// Why the file is needed.
    pub role: NamedImageRole,
    /// Whether the file must be opened read-only (backing files and parents always are).
    pub read_only: bool,
    /// How far below the naming image this file sits: 1 for its own backing file or parent. Formats do not
    /// know their own place in a chain; the opener (which does) adds its own depth and caps chains.
    pub depth: u32,
}

/// Opens files named inside images, deciding whether that is allowed.
pub trait ImageOpener: Send + Sync + std::fmt::Debug {
    /// Opens `image` or refuses with [`ErrorKind::PermissionDenied`] (not allowed) or
    /// [`ErrorKind::InvalidInput`] (no recorded format).
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>>;

    /// Whether the caller wants the image without its backing file (qemu's `BDRV_O_NO_BACKING`, how
    /// `qemu-img info` opens images): a format that honours it does not ask for the backing file at all and
    /// serves the image as if it had none (ranges the backing file would provide read as zeros), while still
    /// reporting the recorded name. QCOW2 honours it; a differencing VHD or VHDX still opens its parent, which
    /// it needs to describe itself.
    fn skips_backing(&self) -> bool {
        false
    }
}

/// An opener that refuses every named file: the safe default for untrusted images.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyNamedImages;

impl ImageOpener for DenyNamedImages {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "opening files named inside images is not allowed ({:?} requested)",
                image.role
            ),
        )
        .with_path(&image.path)
        .with_operation(Operation::Open))
    }
}
