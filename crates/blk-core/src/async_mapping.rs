//! What a format tells its asynchronous queue: where a guest range lives on the host ([`AsyncMapper`]).
//!
//! A format's async path is a translator. For each guest read or write of a batch, [`MappedQueue`](crate::MappedQueue)
//! asks the format's mapper where the bytes live, from its cached metadata, and submits the
//! data I/O of the whole batch on the backend in one go: reads of holes and zero clusters complete without I/O,
//! compressed data is read by the backend and decoded on the queue's worker pool, and writes into fresh clusters
//! are linked into the metadata when their data is written. What the mapper cannot
//! translate (a backing file's data, copy-on-write of partial clusters, flush, discard,
//! write-zeroes) it answers [`Mapped::Slow`], and the queue runs that request through the format's synchronous
//! [`DiskFile`] methods on a small worker pool, completing out of order.

use std::fmt::Debug;

use crate::direct_io::DirectIoAlignment;
use crate::disk_file::DiskFile;
use crate::error::Result;
use crate::host_file::HostFile;

/// Where a piece of a guest read lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMapping {
    /// `len` guest bytes are at `offset` of host file `file` (an index into [`AsyncMapper::host_files`]).
    Host {
        /// Index into [`AsyncMapper::host_files`].
        file: usize,
        /// Byte offset in that file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `len` guest bytes read as zeros: filled in memory, no I/O.
    Zero {
        /// Length in bytes.
        len: u64,
    },
    /// `len` guest bytes lie inside an encoded (e.g. compressed) unit: the queue reads `host_len` bytes at
    /// `offset` of host file `file` on the backend (bytes past the end of the file read as zeros), has
    /// [`AsyncMapper::decode`] turn them into `decoded_len` bytes on its worker pool, and copies the `len`
    /// bytes starting `skip` bytes into the decoded unit to the guest.
    Encoded {
        /// Index into [`AsyncMapper::host_files`].
        file: usize,
        /// Byte offset of the encoded data in that file.
        offset: u64,
        /// Encoded bytes to read.
        host_len: u64,
        /// Size of the decoded unit (e.g. one cluster).
        decoded_len: u64,
        /// Where the piece starts in the decoded unit.
        skip: u64,
        /// Guest bytes of the piece.
        len: u64,
        /// Mapper-defined (e.g. the codec), handed back to [`AsyncMapper::decode`].
        codec: u64,
    },
}

impl ReadMapping {
    /// The guest bytes the piece covers.
    pub fn len(&self) -> u64 {
        match *self {
            ReadMapping::Host { len, .. }
            | ReadMapping::Zero { len }
            | ReadMapping::Encoded { len, .. } => len,
        }
    }

    /// Whether the piece covers no guest bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extends `self` by `next` when `next` continues it (host-contiguous data of the same file, or zeros after
    /// zeros), so a mapper pushes one piece per run; returns whether it did.
    pub fn try_extend(&mut self, next: &ReadMapping) -> bool {
        match (self, next) {
            (ReadMapping::Zero { len }, ReadMapping::Zero { len: more }) => {
                *len += more;
                true
            }
            (
                ReadMapping::Host { file, offset, len },
                ReadMapping::Host {
                    file: next_file,
                    offset: next_offset,
                    len: more,
                },
            ) if *file == *next_file && offset.checked_add(*len) == Some(*next_offset) => {
                *len += more;
                true
            }
            _ => false,
        }
    }
}

impl WriteMapping {
    /// Extends `self` by `next` when both are in-place writes to adjacent ranges of the same host file;
    /// returns whether it did.
    pub fn try_extend(&mut self, next: &WriteMapping) -> bool {
        match (self, next) {
            (
                WriteMapping::Host { file, offset, len },
                WriteMapping::Host {
                    file: next_file,
                    offset: next_offset,
                    len: more,
                },
            ) if *file == *next_file && offset.checked_add(*len) == Some(*next_offset) => {
                *len += more;
                true
            }
            _ => false,
        }
    }
}

/// A freshly allocated host range a write fills: the mapper links it into its metadata in
/// [`AsyncMapper::finish_allocation`] once the data is written. The fields are the mapper's own (the queue
/// only hands the value back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationLink {
    /// Mapper-defined, e.g. the first guest cluster.
    pub guest: u64,
    /// Mapper-defined, e.g. the first host cluster.
    pub host: u64,
    /// Mapper-defined, e.g. the number of clusters.
    pub count: u64,
}

/// Where a piece of a guest write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMapping {
    /// Overwrite `len` bytes at `offset` of host file `file` in place.
    Host {
        /// Index into [`AsyncMapper::host_files`].
        file: usize,
        /// Byte offset in that file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Fill `len` bytes at `offset` of host file `file`, newly allocated; then call
    /// [`AsyncMapper::finish_allocation`] with `link` and the outcome of the write.
    Allocated {
        /// Index into [`AsyncMapper::host_files`].
        file: usize,
        /// Byte offset in that file.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// What to hand back to [`AsyncMapper::finish_allocation`].
        link: AllocationLink,
    },
}

/// Whether a request was mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// The mappings pushed cover the whole request, in guest order.
    Fast,
    /// The request needs the synchronous path; nothing was pushed and nothing was allocated.
    Slow,
}

/// A format's translator from guest ranges to host ranges, for [`MappedQueue`](crate::MappedQueue).
///
/// Implementations answer from cached metadata under their metadata lock and never do data I/O. A
/// `map_*` call that fails (corrupt metadata) must leave nothing allocated: the queue completes the request with
/// the error.
pub trait AsyncMapper: Send + Sync + Debug {
    /// The disk serving [`Mapped::Slow`] requests, flushes, discards and write-zeroes (the same image: its
    /// synchronous path, sharing the mapper's metadata).
    fn disk(&self) -> &dyn DiskFile;

    /// The host files mappings index (the image file; for QCOW2 with an external data file, also that file).
    fn host_files(&self) -> Vec<&HostFile>;

    /// Maps the guest read `offset..offset + len` (inside the disk) by pushing its pieces, in order, onto `out`.
    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<Mapped>;

    /// Maps the guest write `offset..offset + len` (inside the disk, on a writable disk), allocating where
    /// needed, by pushing its pieces, in order, onto `out`.
    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<Mapped>;

    /// Links an allocation after its data write finished (`written` is the write's outcome): on success the
    /// new range becomes visible to readers; on failure it is given back. Called exactly once per
    /// [`WriteMapping::Allocated`].
    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()>;

    /// Decodes the `input` of a [`ReadMapping::Encoded`] piece (its `codec`) into `output` (its `decoded_len`
    /// bytes). Runs on the queue's worker pool, several at once. Mappers that never answer `Encoded` keep the
    /// default, which refuses.
    fn decode(&self, codec: u64, input: &[u8], output: &mut [u8]) -> Result<()> {
        let _ = (codec, input, output);
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Unsupported,
            "this format has no encoded data",
        ))
    }

    /// What O_DIRECT requires of requests, when a host file is open with O_DIRECT: the queue refuses
    /// requests that do not meet it (the synchronous path bounces them instead).
    fn direct_io_alignment(&self) -> Option<DirectIoAlignment> {
        self.host_files()
            .iter()
            .filter_map(|f| f.direct_io_alignment())
            .reduce(|a, b| DirectIoAlignment {
                memory: a.memory.max(b.memory),
                offset: a.offset.max(b.offset),
            })
    }
}

/// Implements [`AsyncIo`](crate::AsyncIo) for a format's named queue type by delegating to its
/// [`MappedQueue`](crate::MappedQueue) field: `delegate_async_io!(Qcow2Async, queue);`.
#[macro_export]
macro_rules! delegate_async_io {
    ($queue_type:ty, $field:ident) => {
        impl $crate::AsyncIo for $queue_type {
            fn notifier(&self) -> &$crate::EventFd {
                $crate::AsyncIo::notifier(&self.$field)
            }

            fn submit(&mut self, batch: &[$crate::Request<'_>]) -> $crate::Result<()> {
                $crate::AsyncIo::submit(&mut self.$field, batch)
            }

            fn next_completed_request(&mut self) -> Option<$crate::Completion> {
                $crate::AsyncIo::next_completed_request(&mut self.$field)
            }

            fn ring_depth(&self) -> u32 {
                $crate::AsyncIo::ring_depth(&self.$field)
            }
        }
    };
}
