//! The contracts every blk crate shares.
//!
//! A VMM serves a virtio-blk queue with a [`DiskFile`] (synchronous, `&self`, one handle per thread via
//! [`DiskFile::try_clone`]) or an [`AsyncIo`] queue from an [`AsyncDiskFile`]. Formats (`blk-raw`, `blk-qcow`, ...)
//! implement these traits as translators from guest offsets to ranges of a [`HostFile`]; backends (`blk-uring`,
//! `blk-aio`) provide asynchronous submission; `blk-factory` picks and wires them. Every fallible call returns the
//! one [`Error`], which names the file, offset and operation.
//!
//! | module | what it holds |
//! |---|---|
//! | [`disk_file`] | [`DiskFile`], [`AsyncDiskFile`]: the data plane; range checks |
//! | [`image_admin`] | [`ImageAdmin`]: info, check, compressed writes, snapshots, ... on an open image |
//! | [`mapper`] | [`Mapper`]: a format's one answer to "where does this guest range live" |
//! | [`mapped_disk`] | [`MappedDisk`]: a mapper served as a `DiskFile` and `AsyncDiskFile` |
//! | [`mapped_io`] | the synchronous engine: a read or write served from the mapping on the calling thread |
//! | [`format_descriptor`] | [`FormatDescriptor`]: what a format crate registers (probe, open, create, capabilities) |
//! | [`measure`] | [`Measure`], [`MeasureSource`]: `qemu-img measure` |
//! | [`async_io`] | [`AsyncIo`], [`Request`], [`RequestFlags`], [`Completion`]: the raw queue (buffers over raw memory) |
//! | [`guest_queue`] | [`GuestQueue`], [`GuestRequest`], [`GuestIoVec`]: a queue serving guest memory safely (bounds checks, dirty pages, registration) |
//! | `completion_wait` | [`AsyncIo::wait`]: blocking waits for completions, with adaptive busy polling |
//! | [`properties`] | [`DiskProperties`]: what a virtio-blk or NVMe front end shows (alignments, limits, discard) |
//! | [`sync_adaptor`] | [`SyncAdaptor`]: any `DiskFile` as an `AsyncIo` queue, with real batching |
//! | [`host_queue`] | [`HostQueue`], [`HostQueueBackend`], [`BackendDescriptor`]: the asynchronous host-file layer backends implement, and its contract; [`HostTransfer`]: a transfer continued over short steps |
//! | [`sync_host_queue`] | [`SyncHostBackend`]: that layer on `preadv`/`pwritev` |
//! | [`mapped_queue`] | [`MappedQueue`]: a format's `AsyncIo` queue from its mapper and a host queue |
//! | [`worker_pool`] | the threads serving a `MappedQueue`'s slow requests, flushes, discards and write-zeroes |
//! | `request_slots` | a `MappedQueue`'s bookkeeping: guest requests and host operations in flight, flush barriers |
//! | `queue_errors` | the errors a `MappedQueue` completes requests with when the host or the mapping fails |
//! | `request_buffers` | slicing, zero-filling and O_DIRECT-checking a request's buffers without allocating |
//! | [`buffer`] | [`IoBuf`], [`IoBufMut`]: byte slices or guest memory, laid out as `iovec` |
//! | [`host_file`] | [`HostFile`]: the host file layer formats are written against |
//! | [`direct_io`] | O_DIRECT alignment and bounce buffers |
//! | [`topology`] | [`DiskTopology`]: guest-visible block geometry |
//! | [`extent`] | [`Extent`]: where a guest range lives (data, zero, unallocated) |
//! | [`create_option`] | [`CreateOptionInfo`], [`FormattingOption`]: a format's creation options, for `-o help` and `Formatting ...`; qemu's value rules |
//! | [`info`] | [`ImageInfo`], [`CheckReport`]: what `info` and `check` report |
//! | [`image_opener`] | [`ImageOpener`]: the gate for files named inside images |
//! | [`size`] | [`parse_size`]: qemu-img's size syntax |
//! | [`error`] | [`Error`], [`ErrorKind`], [`Operation`] |
//!
//! # Example
//!
//! Serving a host file through the host-file layer and the queue model:
//!
//! ```
//! use blk_core::{HostFile, HostOpenOptions, IoBuf, IoBufMut};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.img");
//! let file = HostFile::create(&path, HostOpenOptions::default())?;
//! file.set_len(1 << 20)?;
//! file.write_vectored_at(4096, &[IoBuf::from(&b"hello"[..]), IoBuf::from(&b" world"[..])])?;
//! let mut back = [0u8; 11];
//! file.read_exact_vectored_at(4096, &[IoBufMut::from(&mut back[..])])?;
//! assert_eq!(&back, b"hello world");
//! // Hosts zeros without writing them, and reports what is allocated.
//! file.zero_range(0, 1 << 20, false, false)?;
//! assert_eq!(file.next_data(0)?, None);
//!
//! let err = HostFile::open(dir.path().join("missing.img"), HostOpenOptions::default()).unwrap_err();
//! assert_eq!(err.kind(), blk_core::ErrorKind::NotFound);
//! # Ok(())
//! # }
//! ```

pub mod async_io;
pub mod buffer;
mod completion_wait;
pub mod create_option;
pub mod direct_io;
pub mod dirty_bitmaps;
pub mod disk_file;
mod encoded_read;
pub mod error;
pub mod extent;
pub mod format_descriptor;
pub mod guest_queue;
pub mod host_file;
pub mod host_queue;
pub mod image_admin;
pub mod image_opener;
pub mod info;
pub mod mapped_disk;
pub mod mapped_io;
pub mod mapped_queue;
pub mod mapper;
pub mod measure;
pub mod properties;
mod queue_errors;
mod request_buffers;
mod request_slots;
mod secret;
pub mod size;
pub mod sync_adaptor;
pub mod sync_host_queue;
mod sys;
pub mod topology;
pub mod worker_pool;

pub use async_io::{AsyncIo, Completion, Request, RequestFlags, RequestOp};
pub use buffer::{IoBuf, IoBufMut};
pub use create_option::{
    parse_bool_param, single_size, CreateOptionInfo, FormattingOption, OptionPrint,
    FILE_FORMATTING_OPTIONS,
};
pub use direct_io::DirectIoAlignment;
pub use dirty_bitmaps::{BitmapAction, DirtyBitmapInfo, DirtyBitmaps};
pub use disk_file::{check_range, read_only_error, AsyncDiskFile, DiskFile};
pub use error::{Error, ErrorKind, Operation, Result, ResultExt};
pub use extent::{Extent, ExtentKind};
pub use format_descriptor::{
    BackingFiles, CreateRequest, FormatCapabilities, FormatDescriptor, OpenOptions, OpenedImage,
    ProbeInput, ResizeRequest, PROBE_ANY_FILE, PROBE_MAGIC,
};
pub use guest_queue::{GuestIoVec, GuestOp, GuestQueue, GuestRequest};
pub use host_file::{
    inject_host_faults, resolve_relative_to, HostCall, HostFault, HostFaults,
    HostFaultsRegistration, HostFile, HostOpenOptions, LockMode,
};
pub use host_queue::{
    BackendDescriptor, HostCompletion, HostOp, HostQueue, HostQueueBackend, HostTransfer,
    TransferBuffer,
};
pub use image_admin::ImageAdmin;
pub use image_opener::{DenyNamedImages, ImageOpener, NamedImage, NamedImageRole};
pub use info::{CheckReport, ImageInfo, InfoValue, RepairMode, SnapshotInfo, SnapshotSelector};
pub use mapped_disk::MappedDisk;
pub use mapped_io::{read_mapped, write_mapped, write_zeros_mapped};
pub use mapped_queue::MappedQueue;
pub use mapper::{push_disk_read, AllocationLink, Mapper, ReadMapping, WriteMapping};
pub use measure::{Measure, MeasureSource};
pub use properties::DiskProperties;
pub use secret::Secret;
pub use size::{parse_size, parse_size_param};
pub use sync_adaptor::SyncAdaptor;
pub use sync_host_queue::{SyncHostBackend, SYNC_BACKEND};
pub use topology::DiskTopology;
pub use vm_memory;
pub use vmm_sys_util::eventfd::EventFd;
