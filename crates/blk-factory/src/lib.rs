//! Opens and creates blk disk images: the one crate a VMM depends on.
//!
//! [`open_disk_file`] detects the format (unless given), opens the image with the right format crate and
//! returns an [`AsyncDiskFile`]: synchronous I/O through its [`DiskFile`] methods and one [`AsyncIo`] queue
//! per virtio queue, which a [`GuestQueue`] wraps to serve guest memory safely. This crate re-exports what a
//! VMM needs of `blk-core` (the queue API, [`DiskProperties`], [`Error`]) and [`vm_memory`], so it is the one
//! dependency.
//! [`open_image`] gives the image's administration ([`ImageAdmin`]: info, check, snapshots, ...) beside it.
//! [`create_disk_file`] makes new images. Formats and backends are registrations: each format crate exports a
//! [`FormatDescriptor`](blk_core::FormatDescriptor), each backend crate a
//! [`BackendDescriptor`](blk_core::BackendDescriptor), and this crate keeps one list of each, every entry
//! behind its own Cargo feature; raw is always there, so `default-features = false` builds a raw-only block
//! layer.
//!
//! | module | what it holds |
//! |---|---|
//! | [`format`](mod@format) | the registered formats; [`ImageFormat`]: a format by its qemu-img name |
//! | [`detect`] | [`detect_format`]: every format's probe (read-only, side-effect free) |
//! | [`open`] | [`DiskFileParams`], [`open_disk_file`], [`open_image`] |
//! | [`backend`](mod@backend) | the registered backends; [`Backend`], [`choose_backend`]: io_uring, else AIO, else synchronous I/O |
//! | [`create`] | [`CreateParams`], [`create_disk_file`] |
//! | [`measure`](mod@measure) | [`MeasureParams`], [`measure()`]: `qemu-img measure` |
//! | [`resize`] | [`ResizeParams`], [`resize_disk_file`]: `qemu-img resize` |
//! | [`amend`] | [`AmendParams`], [`amend_disk_file`]: `qemu-img amend` |
//! | [`backing`] | [`ChangeBackingParams`], [`change_backing_file`]: `qemu-img rebase -u` |
//! | [`snapshot`] | [`SnapshotParams`], [`SnapshotOp`], [`change_snapshots`]: `qemu-img snapshot -c/-d/-a` |
//! | [`named`] | [`FactoryOpener`], [`NamedImagePolicy`]: the gate for files named inside images |
//!
//! # Example
//!
//! ```
//! use blk_factory::{create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat};
//! use blk_core::{Request, RequestOp, IoBuf};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.img");
//! create_disk_file(&CreateParams::new(&path, ImageFormat::RAW, Some(1 << 20)))?;
//!
//! let disk = open_disk_file(&DiskFileParams::new(&path))?;
//! disk.write_all_at(0, b"boot sector")?;
//!
//! // One queue per virtio queue: submit a batch, wait on the eventfd, reap completions.
//! let mut queue = disk.create_async_io(32)?;
//! static DATA: [u8; 512] = [0x5a; 512];
//! let bufs = [IoBuf::from(&DATA[..])];
//! queue.submit(&[Request::new(7, RequestOp::Write { offset: 4096, bufs: &bufs }), Request::new(8, RequestOp::Flush)])?;
//! // (A VMM polls the eventfd in its event loop; completions come in any order, the flush after the write.)
//! let mut done = Vec::new();
//! while done.len() < 2 {
//!     match queue.next_completed_request() {
//!         Some(c) => done.push((c.user_data, c.result?)),
//!         None => drop(queue.notifier().read()),
//!     }
//! }
//! assert_eq!(done, [(7, 512), (8, 0)]);
//!
//! let mut back = [0u8; 11];
//! disk.read_exact_at(0, &mut back)?;
//! assert_eq!(&back, b"boot sector");
//! # Ok(())
//! # }
//! ```
//!
//! # Embedding in a VMM
//!
//! Guest memory goes through a [`GuestQueue`]: requests name guest addresses, the queue keeps the memory
//! mapped, checks bounds and marks dirty pages; no `unsafe`. This is the README's example, kept identical to
//! it (a test compares them):
//!
#![doc = include_str!("embedding.md")]

pub mod amend;
pub mod backend;
pub mod backing;
mod chain;
pub mod create;
pub mod detect;
pub mod format;
pub mod measure;
pub mod named;
mod offline;
pub mod open;
pub mod resize;
pub mod snapshot;

pub use amend::{amend_disk_file, AmendParams};
pub use backend::{choose_backend, choose_backend_strict, Backend, BackendChoice};
pub use backing::{change_backing_file, ChangeBackingParams};
pub use blk_core::{parse_size, parse_size_param, ImageAdmin, OpenedImage};
// Persistent dirty bitmaps of an opened image (`OpenedImage::admin.dirty_bitmaps()`).
pub use blk_core::{BitmapAction, DirtyBitmapInfo, DirtyBitmaps};
// What a VMM needs, so that blk-factory is its one dependency (ADR 0009).
pub use blk_core::{
    vm_memory, AsyncDiskFile, AsyncIo, Completion, DiskFile, DiskProperties, DiskTopology, Error,
    ErrorKind, EventFd, GuestIoVec, GuestOp, GuestQueue, GuestRequest, IoBuf, IoBufMut, LockMode,
    Request, RequestFlags, RequestOp, Result, Secret,
};
#[cfg(feature = "io-uring")]
pub use blk_uring::DISABLE_IO_URING_ENV;
pub use create::{check_backing, create_disk_file, create_options, CreateParams};
pub use detect::detect_format;
pub use format::ImageFormat;
pub use measure::{measure, Measure, MeasureParams, MeasureSource};
pub use named::{FactoryOpener, NamedImagePolicy, MAX_CHAIN_DEPTH};
pub use open::{open_disk_file, open_image, DiskFileParams};
pub use resize::{resize_disk_file, ResizeParams};
pub use snapshot::{change_snapshots, SnapshotOp, SnapshotParams};
