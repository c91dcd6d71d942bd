//! Opening images: the parameters a VMM or the CLI gives, and the wiring of a format to a backend.

use std::path::PathBuf;
use std::sync::Arc;

use blk_core::{
    AsyncDiskFile, HostOpenOptions, ImageOpener, LockMode, OpenOptions, OpenedImage, Operation,
    Result,
};

use crate::backend::{choose_backend, choose_backend_strict, Backend};
use crate::chain::open_chain;
use crate::detect::detect_format;
use crate::format::ImageFormat;
use crate::named::{FactoryOpener, NamedImagePolicy};

/// What to open and how: built with [`DiskFileParams::new`] and chained setters, read with getters of the
/// same names.
///
/// ```
/// use blk_factory::{Backend, DiskFileParams, ImageFormat};
/// let params = DiskFileParams::new("disk.qcow2")
///     .format(Some(ImageFormat::RAW))
///     .read_only(true)
///     .backend(Backend::named("io_uring").unwrap())
///     .strict_backend(true); // fail rather than fall back when io_uring does not work here
/// assert!(params.is_read_only() && params.is_strict_backend());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskFileParams {
    /// The image file or block device.
    pub(crate) path: PathBuf,
    /// The format; `None` detects it from magic numbers (read-only, before the real open).
    pub(crate) format: Option<ImageFormat>,
    /// Open without write access.
    pub(crate) read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub(crate) direct: bool,
    /// Advisory locking (qemu-img's `-U` is [`LockMode::None`]).
    pub(crate) lock: LockMode,
    /// The backend for asynchronous queues, as [`choose_backend`] resolves it (falling back from io_uring to AIO
    /// to synchronous I/O).
    pub(crate) backend: Backend,
    /// Fail instead of falling back when the requested backend does not work here.
    pub(crate) strict_backend: bool,
    /// Whether files named inside the image (backing files, data files, parents) may be opened.
    pub(crate) named_images: NamedImagePolicy,
    /// The backing file's format, overriding the one the image records (qemu's `backing.driver`).
    pub(crate) backing_format: Option<ImageFormat>,
    /// Open for a consistency check (qemu's `BDRV_O_CHECK`): no automatic repair of a dirty image, and a
    /// writable open of an image marked corrupt is allowed, so `check -r` can repair it.
    pub(crate) check_mode: bool,
    /// How deep in a chain of named images this one is (0 for the image the caller names); the factory's
    /// opener sets it for backing files and parents so chains stay below [`crate::MAX_CHAIN_DEPTH`].
    pub(crate) chain_depth: u32,
    /// Open the image without its backing file (qemu's `BDRV_O_NO_BACKING`, how `qemu-img info` opens): the
    /// backing file is neither opened nor required to exist, and ranges it would provide read as zeros. Honoured
    /// by QCOW2; see [`ImageOpener::skips_backing`](blk_core::ImageOpener::skips_backing).
    pub(crate) skip_backing: bool,
    /// Open this internal snapshot instead of the current disk (read-only; QCOW2 only: qemu-img's `-l`).
    pub(crate) snapshot: Option<blk_core::SnapshotSelector>,
    /// The format's runtime options (QEMU's `overlap-check=none`, `l2-cache-size=1M`, ...), for this image only
    /// (not its backing files); names the format does not take are refused.
    pub(crate) runtime_options: Vec<(String, String)>,
    /// The secret unlocking an encrypted image (QCOW2's `encrypt.key-secret`), for this image only.
    pub(crate) key_secret: Option<blk_core::Secret>,
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
            strict_backend: false,
            named_images: NamedImagePolicy::Deny,
            backing_format: None,
            check_mode: false,
            chain_depth: 0,
            skip_backing: false,
            snapshot: None,
            runtime_options: Vec::new(),
            key_secret: None,
        }
    }

    /// Sets the secret unlocking an encrypted image (QCOW2's `encrypt.key-secret`; its bytes, zeroed when the
    /// last copy is dropped), for this image only (not its backing files).
    pub fn key_secret(mut self, secret: Option<blk_core::Secret>) -> DiskFileParams {
        self.key_secret = secret;
        self
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

    /// Fails the open (with [`ErrorKind::Unsupported`](blk_core::ErrorKind::Unsupported) and the reason) when
    /// the backend set with [`backend`](DiskFileParams::backend) does not work on this host, instead of
    /// falling back to the next one; no effect with [`Backend::AUTO`].
    pub fn strict_backend(mut self, strict: bool) -> DiskFileParams {
        self.strict_backend = strict;
        self
    }

    /// Opens this internal snapshot instead of the current disk (read-only; QCOW2 only: qemu-img's `-l`).
    pub fn snapshot(mut self, snapshot: Option<blk_core::SnapshotSelector>) -> DiskFileParams {
        self.snapshot = snapshot;
        self
    }

    /// Adds one of the format's runtime options, by QEMU's name (a later value for the same key wins). The open
    /// refuses a name the format does not list in
    /// [`FormatDescriptor::runtime_options`](blk_core::FormatDescriptor::runtime_options), with QEMU's message,
    /// and the format checks the value.
    ///
    /// ```
    /// use blk_factory::{DiskFileParams, ImageFormat};
    /// let params = DiskFileParams::new("disk.qcow2")
    ///     .format(ImageFormat::by_name("qcow2"))
    ///     .runtime_option("overlap-check", "none")
    ///     .runtime_option("l2-cache-size", "4M");
    /// assert_eq!(params.runtime_options().len(), 2);
    /// ```
    pub fn runtime_option(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> DiskFileParams {
        let key = key.into();
        let value = value.into();
        match self.runtime_options.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.runtime_options.push((key, value)),
        }
        self
    }

    /// The format's runtime options, in the order given.
    pub fn runtime_options(&self) -> &[(String, String)] {
        &self.runtime_options
    }

    /// The image file or block device.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The format, or `None` to detect it.
    pub fn image_format(&self) -> Option<ImageFormat> {
        self.format
    }

    /// Whether the open is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the host page cache is bypassed (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The locking mode.
    pub fn lock_mode(&self) -> LockMode {
        self.lock
    }

    /// The backend requested for asynchronous queues.
    pub fn requested_backend(&self) -> Backend {
        self.backend
    }

    /// Whether a backend that does not work here fails the open (see
    /// [`strict_backend`](DiskFileParams::strict_backend)).
    pub fn is_strict_backend(&self) -> bool {
        self.strict_backend
    }

    /// Whether files named inside the image may be opened.
    pub fn named_image_policy(&self) -> NamedImagePolicy {
        self.named_images
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
    format
        .descriptor()
        .check_runtime_options(&params.runtime_options)
        .map_err(ctx)?;
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
    let backend = if params.strict_backend {
        choose_backend_strict(params.backend)?
    } else {
        choose_backend(params.backend)
    };
    let mut options = OpenOptions::new(params.host_options())
        .opener(opener)
        .backend(backend.handle())
        .check_mode(params.check_mode)
        .backing_format(params.backing_format.map(|f| f.name().to_string()))
        .snapshot(params.snapshot.clone());
    options.runtime_options = params.runtime_options.clone();
    options.key_secret = params.key_secret.clone();
    format.descriptor().open(&params.path, &options)
}
