//! What a format answers, once, for every path: where a guest range lives ([`Mapper`]).
//!
//! A format is a translator. For each guest read or write it says, from its metadata, where the bytes live:
//! a range of one of its host files, zeros, an encoded (compressed) unit, a range of another disk (a backing
//! file, a parent, an external data file), a fresh allocation to link once written, or "slow" (the format must
//! change metadata in ways beyond a link: copy-on-write, bitmap or log updates). blk-core does the data I/O
//! from that one answer on both paths: [`MappedDisk`](crate::MappedDisk) for the synchronous
//! [`DiskFile`] methods, [`MappedQueue`](crate::MappedQueue) for asynchronous queues. A format's own
//! synchronous data code is left only for the pieces it answers [`WriteMapping::Slow`].
//!
//! # The contract
//!
//! What a mapping may assume:
//! - The range lies inside the disk (`offset + len <= logical_size()`, `len > 0`), and for
//!   [`map_write`](Mapper::map_write) the disk is writable: [`MappedDisk`](crate::MappedDisk) and
//!   [`MappedQueue`](crate::MappedQueue) check both before they ask.
//! - It may read metadata (tables, bitmaps) from its files and cache it, under its own locks; it never does
//!   guest-data I/O, and never calls another disk while holding a lock that the other disk's I/O could need.
//! - Several threads map at once (clones from [`duplicate`](Mapper::duplicate) share the metadata).
//!
//! What a mapping must deliver:
//! - Pieces pushed onto `out` cover the request exactly, in guest order, and index only the mapper's own host
//!   files ([`host_files`](Mapper::host_files)) and disks ([`disk`](Mapper::disk)). A queue refuses a mapping
//!   that does not (the request fails with [`ErrorKind::CorruptImage`]).
//! - A [`ReadMapping::Host`] range may reach past the end of its host file: what lies past the end reads as
//!   zeros (as QEMU's file driver reads it). Formats that must refuse such ranges check them while mapping.
//! - A read mapping is valid until a later write changes the metadata; a racing write makes the read see the
//!   old or the new data of the range, as with any disk.
//! - A write piece is [`WriteMapping::Host`] or [`WriteMapping::Disk`] only where the bytes can be overwritten
//!   in place with no metadata change, now and until the write completes (no copy-on-write, no bitmap bit to
//!   set). Everything else is [`WriteMapping::Allocated`] (the format reserved fresh space no reader sees; the
//!   link that makes it visible waits for the data) or [`WriteMapping::Slow`].
//! - A `map_*` call that fails leaves nothing allocated and pushes nothing (the request fails with its error).
//!
//! What the engines guarantee in return:
//! - [`finish_allocation`](Mapper::finish_allocation) is called exactly once for every
//!   [`WriteMapping::Allocated`] piece handed out, after its data write completed (with the write's outcome),
//!   or with an error when the write never ran (an earlier piece failed, the request was refused): the
//!   format links the space or gives it back, and wakes writers waiting for it.
//! - [`write_slow`](Mapper::write_slow) runs each [`WriteMapping::Slow`] piece with exactly the guest bytes
//!   of that piece, on the calling thread (synchronous path) or on the queue's worker pool (async path); it may
//!   block, wait for other writers, allocate and write metadata in whatever order the format's crash safety
//!   needs, and may call [`write_mapped`](crate::mapped_io::write_mapped) on itself for parts it finds fast.
//! - Decoding ([`decode`](Mapper::decode)) runs on worker threads, several at once.

use std::fmt::Debug;
use std::sync::Arc;

use crate::buffer::IoBuf;
use crate::direct_io::DirectIoAlignment;
use crate::disk_file::DiskFile;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::extent::Extent;
use crate::host_file::HostFile;
use crate::topology::DiskTopology;

/// Whether `len` bytes at `offset` of file (or disk) `file` are followed directly by the range at `next_offset`
/// of `next_file`: the test of every `try_extend`.
#[inline]
fn continues(file: usize, offset: u64, len: u64, next_file: usize, next_offset: u64) -> bool {
    file == next_file && offset.checked_add(len) == Some(next_offset)
}

/// Pushes `piece` onto `out`, or merges it into the last piece when `extend` says it continues it (never into
/// a piece before index `start`, another request's).
#[inline]
fn push_merged<P>(out: &mut Vec<P>, start: usize, piece: P, extend: impl Fn(&mut P, &P) -> bool) {
    if out.len() > start && out.last_mut().is_some_and(|last| extend(last, &piece)) {
        return;
    }
    out.push(piece);
}

/// Where a piece of a guest read lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMapping {
    /// `len` guest bytes are at `offset` of host file `file` (an index into [`Mapper::host_files`]); bytes past
    /// the end of the file read as zeros.
    Host {
        /// Index into [`Mapper::host_files`].
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
    /// `len` guest bytes lie inside an encoded (e.g. compressed, or encrypted) unit: the engine reads `host_len` bytes at
    /// `offset` of host file `file` (bytes past the end of the file read as zeros), has [`Mapper::decode`] turn
    /// them into `decoded_len` bytes, and copies the `len` bytes starting `skip` bytes into the decoded unit to
    /// the guest.
    Encoded {
        /// Index into [`Mapper::host_files`].
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
        /// Mapper-defined (e.g. the codec, or what an encrypted unit's IVs derive from), handed back to
        /// [`Mapper::decode`].
        codec: u64,
    },
    /// `len` guest bytes are at guest offset `offset` of another disk, [`Mapper::disk`]`(disk)`: a backing
    /// file, a differencing parent, an external data file. The range lies inside that disk (see
    /// [`push_disk_read`] for a disk shorter than this one).
    Disk {
        /// Index for [`Mapper::disk`].
        disk: usize,
        /// Guest offset in that disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl ReadMapping {
    /// The guest bytes the piece covers.
    #[inline]
    pub fn len(&self) -> u64 {
        match *self {
            ReadMapping::Host { len, .. }
            | ReadMapping::Zero { len }
            | ReadMapping::Encoded { len, .. }
            | ReadMapping::Disk { len, .. } => len,
        }
    }

    /// Whether the piece covers no guest bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extends `self` by `next` when `next` continues it (contiguous bytes of the same host file or disk, or
    /// zeros after zeros), so a mapper pushes one piece per run; returns whether it did.
    #[inline]
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
            )
            | (
                ReadMapping::Disk {
                    disk: file,
                    offset,
                    len,
                },
                ReadMapping::Disk {
                    disk: next_file,
                    offset: next_offset,
                    len: more,
                },
            ) if continues(*file, *offset, *len, *next_file, *next_offset) => {
                *len += more;
                true
            }
            _ => false,
        }
    }

    /// Pushes `self` onto `out`, merged into the last piece when it continues it (see
    /// [`try_extend`](ReadMapping::try_extend)); `start` is the index of the request's first piece in `out`,
    /// so pieces of an earlier request are never extended.
    #[inline]
    pub fn push_onto(self, out: &mut Vec<ReadMapping>, start: usize) {
        push_merged(out, start, self, ReadMapping::try_extend);
    }
}

/// Pushes the pieces of a read of `len` guest bytes at `offset` that another disk of `disk_size` bytes holds
/// (a backing file or parent, which may be shorter than the image): [`ReadMapping::Disk`] for the part inside
/// it, [`ReadMapping::Zero`] past its end, as QEMU reads a short backing file. `start` is as in
/// [`ReadMapping::push_onto`].
#[inline]
pub fn push_disk_read(
    out: &mut Vec<ReadMapping>,
    start: usize,
    disk: usize,
    disk_size: u64,
    offset: u64,
    len: u64,
) {
    let inside = disk_size.saturating_sub(offset).min(len);
    if inside > 0 {
        ReadMapping::Disk {
            disk,
            offset,
            len: inside,
        }
        .push_onto(out, start);
    }
    if inside < len {
        ReadMapping::Zero { len: len - inside }.push_onto(out, start);
    }
}

/// A freshly allocated host range a write fills: the mapper links it into its metadata in
/// [`Mapper::finish_allocation`] once the data is written. The fields are the mapper's own (the engines only
/// hand the value back).
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
        /// Index into [`Mapper::host_files`].
        file: usize,
        /// Byte offset in that file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Fill `len` bytes at `offset` of host file `file`, newly allocated; then call
    /// [`Mapper::finish_allocation`] with `link` and the outcome of the write.
    Allocated {
        /// Index into [`Mapper::host_files`].
        file: usize,
        /// Byte offset in that file.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// What to hand back to [`Mapper::finish_allocation`].
        link: AllocationLink,
    },
    /// Overwrite `len` bytes at guest offset `offset` of [`Mapper::disk`]`(disk)` in place (an external data
    /// file).
    Disk {
        /// Index for [`Mapper::disk`].
        disk: usize,
        /// Guest offset in that disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `len` guest bytes need the format's own write path, [`Mapper::write_slow`]: copy-on-write, allocation
    /// that changes more than a link, bitmap or log updates, clusters another writer is allocating.
    Slow {
        /// Length in bytes.
        len: u64,
    },
}

impl WriteMapping {
    /// The guest bytes the piece covers.
    #[inline]
    pub fn len(&self) -> u64 {
        match *self {
            WriteMapping::Host { len, .. }
            | WriteMapping::Allocated { len, .. }
            | WriteMapping::Disk { len, .. }
            | WriteMapping::Slow { len } => len,
        }
    }

    /// Whether the piece covers no guest bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extends `self` by `next` when both are in-place writes to adjacent ranges of the same host file or
    /// disk, or both slow; returns whether it did.
    #[inline]
    pub fn try_extend(&mut self, next: &WriteMapping) -> bool {
        match (self, next) {
            (WriteMapping::Slow { len }, WriteMapping::Slow { len: more }) => {
                *len += more;
                true
            }
            (
                WriteMapping::Host { file, offset, len },
                WriteMapping::Host {
                    file: next_file,
                    offset: next_offset,
                    len: more,
                },
            )
            | (
                WriteMapping::Disk {
                    disk: file,
                    offset,
                    len,
                },
                WriteMapping::Disk {
                    disk: next_file,
                    offset: next_offset,
                    len: more,
                },
            ) if continues(*file, *offset, *len, *next_file, *next_offset) => {
                *len += more;
                true
            }
            _ => false,
        }
    }

    /// Pushes `self` onto `out`, merged into the last piece when it continues it (see
    /// [`try_extend`](WriteMapping::try_extend)); `start` is the index of the request's first piece in `out`.
    #[inline]
    pub fn push_onto(self, out: &mut Vec<WriteMapping>, start: usize) {
        push_merged(out, start, self, WriteMapping::try_extend);
    }
}

/// A format's one translator from guest ranges to host ranges, and the metadata operations the guest can ask
/// for. [`MappedDisk`](crate::MappedDisk) serves it as a [`DiskFile`], [`MappedQueue`](crate::MappedQueue) as an
/// asynchronous queue; see the [module docs](self) for the contract.
///
/// Errors may come without context: the engines add the format, the image path, the operation and the
/// request's guest offset where the error does not name its own.
pub trait Mapper: Send + Sync + Debug {
    /// The format's name as qemu-img spells it (`qcow2`, `vpc`, ...), for error messages.
    fn format_name(&self) -> &'static str;

    /// The guest-visible size in bytes.
    fn logical_size(&self) -> u64;

    /// The host files mappings index: the image file first (its path names the image in errors), then any
    /// other file the format reads directly. Never empty.
    fn host_files(&self) -> &[HostFile];

    /// Another handle of the same open image: its own descriptors, the same metadata. Each queue and worker
    /// thread maps through its own handle.
    fn duplicate(&self) -> Result<Arc<dyn Mapper>>;

    /// Maps the guest read `offset..offset + len` by pushing its pieces, in order, onto `out`.
    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()>;

    /// Maps the guest write `offset..offset + len` by pushing its pieces, in order, onto `out`, allocating
    /// where the format links new space after the data ([`WriteMapping::Allocated`]).
    ///
    /// The default refuses: a read-only format.
    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        let _ = (len, out);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this image format cannot be written",
        )
        .with_offset(offset))
    }

    /// Links an allocation after its data write finished (`written` is the write's outcome): on success the
    /// new range becomes visible to readers; on failure it is given back. Called exactly once per
    /// [`WriteMapping::Allocated`]. The default refuses (for mappers that never allocate).
    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        written?;
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("this format allocates nothing, yet was asked to link {link:?}"),
        ))
    }

    /// Writes the guest bytes `bufs` at `offset`: a range this mapper answered [`WriteMapping::Slow`] for,
    /// done by the format itself (see the [module docs](self)). The default refuses (for mappers that never
    /// answer slow).
    fn write_slow(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let _ = bufs;
        Err(Error::new(
            ErrorKind::InvalidInput,
            "this format has no slow writes, yet was asked for one",
        )
        .with_offset(offset)
        .with_operation(Operation::Write))
    }

    /// Decodes the `input` of a [`ReadMapping::Encoded`] piece (its `codec`) into `output` (its `decoded_len`
    /// bytes). Mappers that never answer `Encoded` keep the default, which refuses.
    fn decode(&self, codec: u64, input: &[u8], output: &mut [u8]) -> Result<()> {
        let _ = (codec, input, output);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this format has no encoded data",
        ))
    }

    /// The other disk a [`ReadMapping::Disk`] or [`WriteMapping::Disk`] piece names (`None` for an index the
    /// mapper never hands out).
    fn disk(&self, index: usize) -> Option<&dyn DiskFile> {
        let _ = index;
        None
    }

    /// The host file this image is, byte for byte, when it is one (guest offset `x` is offset `x` of the file,
    /// every request maps to that one range: raw). A format that reaches this image as a file it names (a
    /// QCOW2 external data file) may then map its pieces there as host pieces of its own, served on its host
    /// queue instead of through [`DiskFile`] calls on a worker pool. The default: none.
    fn identity_file(&self) -> Option<&HostFile> {
        None
    }

    /// Whether the disk was opened read-only. The default asks the image file.
    fn is_read_only(&self) -> bool {
        self.host_files().first().is_none_or(HostFile::is_read_only)
    }

    /// The block geometry to show the guest. The default is the image file's.
    fn topology(&self) -> DiskTopology {
        self.host_files()
            .first()
            .map(HostFile::topology)
            .unwrap_or_default()
    }

    /// Host bytes allocated to the image. The default counts the image file's.
    fn physical_size(&self) -> Result<u64> {
        match self.host_files().first() {
            Some(file) => file.allocated_size(),
            None => Ok(0),
        }
    }

    /// Where the guest range starting at `offset` (at most `len` bytes, inside the disk) lives: the first run
    /// of equal status, for `map`, `convert` and sparse copies. The default says "all data", which is always
    /// correct, only not sparse.
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        Ok(Extent::data(offset, len, None))
    }

    /// Makes `len` bytes at `offset` read as zeros; with `may_unmap`, the range may be deallocated. The
    /// default writes zeros through the mapping.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let _ = may_unmap;
        crate::mapped_io::write_zeros_mapped(self, offset, len)
    }

    /// Tells the format that `len` bytes at `offset` are no longer needed. The default does nothing (a
    /// discard is a hint).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Makes every completed write durable. The default syncs the host files (nothing on a read-only disk).
    fn flush(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.host_files().iter().try_for_each(HostFile::sync_data)
    }

    /// What O_DIRECT requires of requests, when a host file is open with O_DIRECT: queues refuse requests that
    /// do not meet it (the synchronous path bounces them instead).
    fn direct_io_alignment(&self) -> Option<DirectIoAlignment> {
        self.host_files()
            .iter()
            .filter_map(HostFile::direct_io_alignment)
            .reduce(|a, b| DirectIoAlignment {
                memory: a.memory.max(b.memory),
                offset: a.offset.max(b.offset),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_merge_only_when_they_continue() {
        let mut out = Vec::new();
        ReadMapping::Host {
            file: 0,
            offset: 0,
            len: 4,
        }
        .push_onto(&mut out, 0);
        ReadMapping::Host {
            file: 0,
            offset: 4,
            len: 4,
        }
        .push_onto(&mut out, 0);
        ReadMapping::Host {
            file: 1,
            offset: 8,
            len: 4,
        }
        .push_onto(&mut out, 0);
        push_disk_read(&mut out, 0, 0, 10, 8, 4);
        assert_eq!(
            out,
            [
                ReadMapping::Host {
                    file: 0,
                    offset: 0,
                    len: 8
                },
                ReadMapping::Host {
                    file: 1,
                    offset: 8,
                    len: 4
                },
                ReadMapping::Disk {
                    disk: 0,
                    offset: 8,
                    len: 2
                },
                ReadMapping::Zero { len: 2 },
            ]
        );
        // A new request's first piece never extends the previous request's last.
        let start = out.len();
        ReadMapping::Zero { len: 1 }.push_onto(&mut out, start);
        assert_eq!(out.len(), 5);

        let mut writes = Vec::new();
        WriteMapping::Slow { len: 3 }.push_onto(&mut writes, 0);
        WriteMapping::Slow { len: 5 }.push_onto(&mut writes, 0);
        WriteMapping::Disk {
            disk: 0,
            offset: 8,
            len: 8,
        }
        .push_onto(&mut writes, 0);
        WriteMapping::Disk {
            disk: 0,
            offset: 16,
            len: 8,
        }
        .push_onto(&mut writes, 0);
        assert_eq!(
            writes,
            [
                WriteMapping::Slow { len: 8 },
                WriteMapping::Disk {
                    disk: 0,
                    offset: 8,
                    len: 16
                }
            ]
        );
        assert_eq!(writes.iter().map(WriteMapping::len).sum::<u64>(), 24);
    }
}
