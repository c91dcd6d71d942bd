//! [`FormatDescriptor`]: what a format crate registers with the factory, so that no other crate lists formats.
//!
//! Each format crate exports one descriptor as `pub const FORMAT: &dyn FormatDescriptor`. The factory keeps a
//! list of the descriptors compiled in (one line per format) and does everything through it: detection
//! ([`probe`](FormatDescriptor::probe)), opening, creating, measuring, resizing, and the capabilities the CLI
//! and the factory check before an operation (with qemu-img's messages). The CLI reads the creation options
//! (`-o help`, the `Formatting ...` line) from the descriptor too.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use crate::create_option::{CreateOptionInfo, FormattingOption};
use crate::disk_file::AsyncDiskFile;
use crate::error::{Error, ErrorKind, Result};
use crate::host_file::{HostFile, HostOpenOptions, LockMode};
use crate::host_queue::HostQueueBackend;
use crate::image_admin::ImageAdmin;
use crate::image_opener::{DenyNamedImages, ImageOpener};
use crate::info::SnapshotSelector;
use crate::mapped_disk::MappedDisk;
use crate::mapper::Mapper;
use crate::measure::{Measure, MeasureSource};
use crate::sync_host_queue::SyncHostBackend;

/// The probe score of a format recognised by its magic number.
pub const PROBE_MAGIC: u32 = 100;
/// The probe score of the format that takes any file (raw).
pub const PROBE_ANY_FILE: u32 = 1;

/// What kind of files an image of the format may name below itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFiles {
    /// None: creating an image with a backing file fails.
    None,
    /// A backing file of any format, which must be given (qemu-img's `-F`); creating opens it to check it.
    AnyFormat,
    /// A parent of the image's own format (differencing VHD and VHDX), which creating opens itself.
    OwnFormat,
}

/// What a format can do beyond guest I/O and `info`: the factory and the CLI check these before an operation,
/// so an unsupported one fails with qemu-img's message before any file is opened.
///
/// Build one with struct update syntax from [`FormatCapabilities::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatCapabilities {
    /// What images may name below themselves.
    pub backing_files: BackingFiles,
    /// Compressed clusters ([`ImageAdmin::write_compressed`], `convert -c`).
    pub compression: bool,
    /// Internal snapshots ([`ImageAdmin::create_snapshot`] and the rest, opening one read-only).
    pub internal_snapshots: bool,
    /// Options changed in place ([`ImageAdmin::amend`]).
    pub amend: bool,
    /// The recorded backing file rewritten ([`ImageAdmin::change_backing_file`], `rebase`).
    pub change_backing_file: bool,
    /// The virtual size changed ([`FormatDescriptor::resize`]).
    pub resize: bool,
    /// New images measured ([`FormatDescriptor::measure`]).
    pub measure: bool,
}

impl FormatCapabilities {
    /// Nothing beyond guest I/O and `info`.
    pub const NONE: FormatCapabilities = FormatCapabilities {
        backing_files: BackingFiles::None,
        compression: false,
        internal_snapshots: false,
        amend: false,
        change_backing_file: false,
        resize: false,
        measure: false,
    };
}

/// How to open an image, whatever its format (a format takes what applies to it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// How to open the image file.
    pub host: HostOpenOptions,
    /// The gate for files named inside the image (backing files, parents, data files).
    pub opener: Arc<dyn ImageOpener>,
    /// The backend of the disk's asynchronous queues.
    pub backend: Arc<dyn HostQueueBackend>,
    /// qemu's `BDRV_O_CHECK`: no automatic repair of a dirty image, and a writable open of an image marked
    /// corrupt is allowed, so `check -r` can repair it.
    pub check_mode: bool,
    /// The backing file's format, overriding the one the image records (qemu's `backing.driver`).
    pub backing_format: Option<String>,
    /// Open this internal snapshot instead of the current disk (read-only opens of formats with
    /// [`FormatCapabilities::internal_snapshots`]).
    pub snapshot: Option<SnapshotSelector>,
    /// The format's runtime options, as QEMU names them (`overlap-check`, `l2-cache-size`, ...), in the order
    /// given: the names come from [`FormatDescriptor::runtime_options`], and the format's `open` parses the
    /// values with QEMU's messages. Empty by default.
    pub runtime_options: Vec<(String, String)>,
    /// The secret unlocking an encrypted image (QCOW2's `encrypt.key-secret`: the secret's bytes, not its id);
    /// `None` by default. Formats without encryption ignore it.
    pub key_secret: Option<crate::Secret>,
}

impl OpenOptions {
    /// Options for opening with `host`: named files refused, queues on [`SyncHostBackend`], a normal open of the
    /// current disk with its recorded backing format.
    pub fn new(host: HostOpenOptions) -> OpenOptions {
        OpenOptions {
            host,
            opener: Arc::new(DenyNamedImages),
            backend: Arc::new(SyncHostBackend),
            check_mode: false,
            backing_format: None,
            snapshot: None,
            runtime_options: Vec::new(),
            key_secret: None,
        }
    }

    /// Sets the secret unlocking an encrypted image (see [`OpenOptions::key_secret`]).
    pub fn key_secret(mut self, secret: Option<crate::Secret>) -> OpenOptions {
        self.key_secret = secret;
        self
    }

    /// Sets the gate for named files.
    pub fn opener(mut self, opener: Arc<dyn ImageOpener>) -> OpenOptions {
        self.opener = opener;
        self
    }

    /// Sets the backend of the disk's queues.
    pub fn backend(mut self, backend: Arc<dyn HostQueueBackend>) -> OpenOptions {
        self.backend = backend;
        self
    }

    /// Sets check mode (see [`OpenOptions::check_mode`]).
    pub fn check_mode(mut self, check_mode: bool) -> OpenOptions {
        self.check_mode = check_mode;
        self
    }

    /// Overrides the backing file's recorded format.
    pub fn backing_format(mut self, format: Option<String>) -> OpenOptions {
        self.backing_format = format;
        self
    }

    /// Opens an internal snapshot instead of the current disk.
    pub fn snapshot(mut self, snapshot: Option<SnapshotSelector>) -> OpenOptions {
        self.snapshot = snapshot;
        self
    }

    /// Adds one of the format's runtime options (see [`OpenOptions::runtime_options`]); a later value for the
    /// same key wins, as in QEMU.
    ///
    /// ```
    /// use blk_core::{HostOpenOptions, OpenOptions};
    /// let options = OpenOptions::new(HostOpenOptions::default()).runtime_option("overlap-check", "none");
    /// assert_eq!(options.runtime_options, [("overlap-check".to_string(), "none".to_string())]);
    /// ```
    pub fn runtime_option(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> OpenOptions {
        let key = key.into();
        let value = value.into();
        match self.runtime_options.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.runtime_options.push((key, value)),
        }
        self
    }
}

/// An open image: the data plane a VMM serves its guest from, and the administration handle on the same open
/// image (sharing its metadata and locks).
#[derive(Debug)]
pub struct OpenedImage {
    /// Guest I/O and queues.
    pub disk: Box<dyn AsyncDiskFile>,
    /// `info`, `check`, snapshots, ...
    pub admin: Arc<dyn ImageAdmin>,
}

impl OpenedImage {
    /// The image served by a [`MappedDisk`] with queues on `backend`, and its administration.
    pub fn new<I: Mapper + ImageAdmin + 'static>(
        image: I,
        backend: Arc<dyn HostQueueBackend>,
    ) -> OpenedImage {
        let image = Arc::new(image);
        OpenedImage {
            disk: Box::new(MappedDisk::from_arc(Arc::clone(&image), backend)),
            admin: image,
        }
    }
}

/// A new image to create.
#[derive(Debug, Clone, Copy)]
pub struct CreateRequest<'a> {
    /// Its path (an existing file is overwritten, as qemu-img does).
    pub path: &'a Path,
    /// The virtual size; may be omitted when a backing file gives it.
    pub size: Option<u64>,
    /// Creation options, as qemu-img's `-o key=value,...` (a backing file and its format among them, as
    /// `backing_file=` / `backing_fmt=`).
    pub options: &'a [(String, String)],
    /// Opens the backing file or parent the options name (the user's own choice).
    pub opener: &'a dyn ImageOpener,
}

/// A resize of an image that is not in use.
#[derive(Debug, Clone, Copy)]
pub struct ResizeRequest<'a> {
    /// The image.
    pub path: &'a Path,
    /// The new virtual size in bytes.
    pub size: u64,
    /// Allow a smaller size (qemu-img's `--shrink`).
    pub shrink: bool,
    /// qemu-img's `--preallocation` for the added range (`None` is off).
    pub preallocation: Option<&'a str>,
    /// Advisory locking while the image is changed.
    pub lock: LockMode,
}

/// A file's first bytes and length, for [`FormatDescriptor::probe`].
#[derive(Debug, Clone, Copy)]
pub struct ProbeInput<'a> {
    /// The file (read-only, unlocked), for probes that look further than `head`.
    pub file: &'a HostFile,
    /// The file's length in bytes (more than 0).
    pub len: u64,
    /// Its first bytes (up to 512).
    pub head: &'a [u8],
}

/// A format crate's registration: its name, detection, open, create and capabilities (see the
/// [module docs](self)).
pub trait FormatDescriptor: Send + Sync + Debug {
    /// The name qemu-img uses (`raw`, `qcow2`, `vpc`, `vhdx`).
    fn name(&self) -> &'static str;

    /// Other names the format is known by on the command line (`vhd` for `vpc`).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// What the format can do beyond guest I/O and `info`.
    fn capabilities(&self) -> FormatCapabilities;

    /// The runtime options [`open`](FormatDescriptor::open) takes in [`OpenOptions::runtime_options`], by
    /// QEMU's names (QCOW2: `overlap-check`, `l2-cache-size`, ...). None by default.
    fn runtime_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// Refuses a runtime option the format does not take ([`runtime_options`](FormatDescriptor::runtime_options)),
    /// with QEMU's message: `Block format 'qcow2' does not support the option 'x'`.
    ///
    /// ```
    /// # use blk_core::FormatDescriptor;
    /// # fn check(format: &dyn FormatDescriptor) {
    /// let bogus = [("bogus".to_string(), "1".to_string())];
    /// assert!(format.check_runtime_options(&bogus).is_err());
    /// # }
    /// ```
    fn check_runtime_options(&self, options: &[(String, String)]) -> Result<()> {
        let known = self.runtime_options();
        match options
            .iter()
            .find(|(key, _)| !known.contains(&key.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "Block format '{}' does not support the option '{key}'",
                    self.name()
                ),
            )
            .with_format(self.name())),
        }
    }

    /// How sure the format is that the file is one of its images: 0 when it is not, [`PROBE_MAGIC`] for a
    /// magic number, [`PROBE_ANY_FILE`] for a format that takes anything. An error when the file carries the
    /// format's magic but cannot be one of its images (truncated). Probing only reads.
    fn probe(&self, input: &ProbeInput<'_>) -> Result<u32>;

    /// Opens the image at `path`.
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage>;

    /// Creates a new image.
    fn create(&self, request: &CreateRequest<'_>) -> Result<()>;

    /// The creation options, as `create -o help` lists them.
    fn create_options(&self) -> &'static [CreateOptionInfo];

    /// The creation options in the order of qemu's option list, with the defaults qemu prints on its
    /// `Formatting ...` line (the `file` protocol's options, which qemu appends, excluded).
    fn formatting_options(&self) -> &'static [FormattingOption];

    /// The creation options [`ImageAdmin::amend`] can change, as `qemu-img amend -o help` lists them (empty
    /// for formats without [`FormatCapabilities::amend`]).
    fn amend_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// Options only `amend` has (not among [`create_options`](FormatDescriptor::create_options)), with their
    /// help, for `qemu-img amend -o help` (QCOW2: the LUKS keyslot options). Empty by default.
    fn amend_only_options(&self) -> &'static [CreateOptionInfo] {
        &[]
    }

    /// How big a new image with `options` would be for `source` (`qemu-img measure`); the options were
    /// checked against [`create_options`](FormatDescriptor::create_options) already.
    fn measure(&self, options: &[(String, String)], source: MeasureSource<'_>) -> Result<Measure> {
        let _ = (options, source);
        Err(Error::new(
            ErrorKind::UnsupportedFeature,
            format!(
                "Block driver '{}' does not support size measurement",
                self.name()
            ),
        ))
    }

    /// Changes the virtual size of an image that is not in use (`qemu-img resize`).
    fn resize(&self, request: &ResizeRequest<'_>) -> Result<()> {
        let _ = request;
        Err(Error::new(
            ErrorKind::Unsupported,
            "Image format driver does not support resize",
        ))
    }
}
