//! Opening images: the parameters a VMM or the CLI gives, and the wiring of a format to a backend.

use std::path::PathBuf;
use std::sync::Arc;

use blk_core::{
    AsyncDiskFile, HostOpenOptions, ImageOpener, LockMode, OpenOptions, OpenedImage, Operation,
    Result,
};

use crate::backend::{choose_backend, Backend};
use crate::chain::open_chain;
use crate::detect::detect_format;
use crate::format::ImageFormat;
use crate::named::{FactoryOpener, NamedImagePolicy};

/// What to open and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFileParams {
    /// The image file or block device.
    pub path: PathBuf,
    /// The format; `None` detects it from magic numbers (read-only, before the real open).
    pub format: Option<ImageFormat>,
    /// Open without write access.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// Advisory locking (qemu-img's `-U` is [`LockMode::None`]).
    pub lock: LockMode,
    /// The backend for asynchronous queues, as [`choose_backend`] resolves it (falling back from io_uring to AIO
    /// to synchronous I/O).
    pub backend: Backend,
    /// Whether files named inside the image (backing files, data files, parents) may be opened.
    pub named_images: NamedImagePolicy,
    /// The backing file's format, overriding the one the image records (qemu's `backing.driver`).
    pub backing_format: Option<ImageFormat>,
    /// Open for a consistency check (qemu's `BDRV_O_CHECK`): no automatic repair of a dirty image, and a
    /// writable open of an image marked corrupt is allowed, so `check -r` can repair it.
    pub check_mode: bool,
    /// How deep in a chain of named images this one is (0 for the image the caller names); the factory's
    /// opener sets it for backing files and parents so chains stay below [`crate::MAX_CHAIN_DEPTH`].
    pub chain_depth: u32,
    /// Open the image without its backing file (qemu's `BDRV_O_NO_BACKING`, how `qemu-img info` opens): the
    /// backing file is neither opened nor required to exist, and ranges it would provide read as zeros. Honoured
    /// by QCOW2; see [`ImageOpener::skips_backing`](blk_core::ImageOpener::skips_backing).
    pub skip_backing: bool,
    /// Open this internal snapshot instead of the current disk (read-only; QCOW2 only: qemu-img's `-l`).
    pub snapshot: Option<blk_core::SnapshotSelector>,
}

impl DiskFileParams {
    /// Parameters for a writable, buffered, locked open of `path` with format detection, where files named
    /// inside the image are refused.
    pub fn new(path: impl Into<PathBuf>) -> DiskFileParams {
        DiskFileParams {
            path: path.into(),
            format: None,
            read_only: false,
            direct: false,
            lock: LockMode::Auto,
            backend: Backend::AUTO,
            named_images: NamedImagePolicy::Deny,
            backing_format: None,
            check_mode: false,
            chain_depth: 0,
            skip_backing: false,
            snapshot: None,
        }
    }

    /// Sets the format (`None`: detect).
    pub fn format(mut self, format: Option<ImageFormat>) -> DiskFileParams {
        self.format = format;
        self
    }

    /// Sets read-only.
    pub fn read_only(mut self, read_only: bool) -> DiskFileParams {
        self.read_only = read_only;
        self
    }

    /// Sets O_DIRECT.
    pub fn direct(mut self, direct: bool) -> DiskFileParams {
        self.direct = direct;
        self
    }

    /// Sets the locking mode.
    pub fn lock(mut self, lock: LockMode) -> DiskFileParams {
        self.lock = lock;
        self
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> DiskFileParams {
        self.backend = backend;
        self
    }

    /// Sets whether files named inside the image may be opened.
    pub fn named_images(mut self, policy: NamedImagePolicy) -> DiskFileParams {
        self.named_images = policy;
        self
    }

    /// Overrides the backing file's recorded format.
    pub fn backing_format(mut self, format: Option<ImageFormat>) -> DiskFileParams {
        self.backing_format = format;
        self
    }

    /// Sets check mode (see [`DiskFileParams::check_mode`]).
    pub fn check_mode(mut self, check_mode: bool) -> DiskFileParams {
        self.check_mode = check_mode;
        self
    }

    /// Sets whether the backing file is left unopened (see [`DiskFileParams::skip_backing`]).
    pub fn skip_backing(mut self, skip_backing: bool) -> DiskFileParams {
        self.skip_backing = skip_backing;
        self
    }

    pub(crate) fn host_options(&self) -> HostOpenOptions {
        HostOpenOptions {
            read_only: self.read_only,
            direct: self.direct,
            lock: self.lock,
        }
    }
}

/// Opens the image `params` describe, detecting its format unless one is given.
///
/// The returned disk serves synchronous I/O directly and one asynchronous queue per
/// [`AsyncDiskFile::create_async_io`] call. Files the image names (backing files, parents) are opened through
/// a [`crate::FactoryOpener`] applying [`DiskFileParams::named_images`]. It is the guest's data plane only;
/// [`open_image`] gives the image's administration too.
pub fn open_disk_file(params: &DiskFileParams) -> Result<Box<dyn AsyncDiskFile>> {
    open_image(params).map(|image| image.disk)
}

/// Opens the image `params` describe, as [`open_disk_file`] does, with its administration handle
/// ([`ImageAdmin`](blk_core::ImageAdmin): info, check, snapshots, ...) beside the disk, both on the same open
/// image.
pub fn open_image(params: &DiskFileParams) -> Result<OpenedImage> {
    let format = match params.format {
        Some(format) => format,
        None => detect_format(&params.path)?,
    };
    let ctx = |e: blk_core::Error| {
        e.with_format(format.name())
            .with_path(&params.path)
            .with_operation(Operation::Open)
    };
    if params.snapshot.is_some() && !format.capabilities().internal_snapshots {
        return Err(ctx(blk_core::Error::new(
            blk_core::ErrorKind::UnsupportedFeature,
            format!(
                "Failed to load snapshot: Block format '{}' used by device '' does not support temporarily loading internal snapshots",
                format.name()
            ),
        )));
    }
    if params.named_images == NamedImagePolicy::Deny {
        return open_one(params, format, Arc::new(FactoryOpener::for_params(params))).map_err(ctx);
    }
    // Backing files and parents allowed: the chain opened iteratively (see `chain`).
    open_chain(params, format, open_one).map_err(ctx)
}

/// Opens one image with `opener` for the files it names (no format detection).
fn open_one(
    params: &DiskFileParams,
    format: ImageFormat,
    opener: Arc<dyn ImageOpener>,
) -> Result<OpenedImage> {
    let options = OpenOptions::new(params.host_options())
        .opener(opener)
        .backend(choose_backend(params.backend).handle())
        .check_mode(params.check_mode)
        .backing_format(params.backing_format.map(|f| f.name().to_string()))
        .snapshot(params.snapshot.clone());
    format.descriptor().open(&params.path, &options)
}
