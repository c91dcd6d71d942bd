//! Opening images: the parameters a VMM or the CLI gives, and the wiring of a format to a backend.

use std::path::PathBuf;
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
use std::sync::Arc;

use blk_core::{AsyncDiskFile, HostOpenOptions, LockMode, Operation, Result};

use crate::backend::{choose_backend, Backend};
use crate::detect::detect_format;
use crate::format::ImageFormat;
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
use crate::named::FactoryOpener;
use crate::named::NamedImagePolicy;

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
            backend: Backend::Auto,
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
/// a [`crate::FactoryOpener`] applying [`DiskFileParams::named_images`].
pub fn open_disk_file(params: &DiskFileParams) -> Result<Box<dyn AsyncDiskFile>> {
    let format = match params.format {
        Some(format) => format,
        None => detect_format(&params.path)?,
    };
    let ctx = |e: blk_core::Error| {
        e.with_format(format.name())
            .with_path(&params.path)
            .with_operation(Operation::Open)
    };
    if params.snapshot.is_some() && format != ImageFormat::Qcow2 {
        return Err(ctx(blk_core::Error::new(
            blk_core::ErrorKind::UnsupportedFeature,
            format!(
                "Failed to load snapshot: Block format '{}' used by device '' does not support temporarily loading internal snapshots",
                format.name()
            ),
        )));
    }
    let io_backend = choose_backend(params.backend).handle();
    match format {
        ImageFormat::Raw => {
            let mut raw = blk_raw::Raw::open(&params.path, params.host_options()).map_err(ctx)?;
            raw.set_io_backend(io_backend);
            Ok(Box::new(raw))
        }
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => {
            let mut options =
                blk_qcow::Qcow2OpenOptions::new(params.host_options(), opener_for(params));
            options.check_mode = params.check_mode;
            options.backing_format = params.backing_format.map(|f| f.name().to_string());
            options.snapshot = params.snapshot.clone();
            let mut image = blk_qcow::Qcow2::open(&params.path, &options).map_err(ctx)?;
            image.set_io_backend(io_backend);
            Ok(Box::new(image))
        }
        #[cfg(feature = "vhd")]
        ImageFormat::Vpc => {
            let options = blk_vhd::VhdOpenOptions::new(params.host_options(), opener_for(params));
            let mut image = blk_vhd::Vhd::open(&params.path, &options).map_err(ctx)?;
            image.set_io_backend(io_backend);
            Ok(Box::new(image))
        }
        #[cfg(feature = "vhdx")]
        ImageFormat::Vhdx => {
            let mut options =
                blk_vhdx::VhdxOpenOptions::new(params.host_options(), opener_for(params));
            options.check_mode = params.check_mode;
            let mut image = blk_vhdx::Vhdx::open(&params.path, &options).map_err(ctx)?;
            image.set_io_backend(io_backend);
            Ok(Box::new(image))
        }
        #[allow(unreachable_patterns)] // every format compiled in
        _ => Err(ctx(format.not_compiled_in())),
    }
}

/// The gate for the files the image `params` open names.
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
fn opener_for(params: &DiskFileParams) -> Arc<dyn blk_core::ImageOpener> {
    Arc::new(FactoryOpener::for_params(params))
}
