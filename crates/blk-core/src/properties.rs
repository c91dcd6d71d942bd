//! [`DiskProperties`]: everything a virtio-blk or NVMe front end shows the guest about a disk, beside the
//! block geometry of [`DiskTopology`].

use crate::direct_io::DirectIoAlignment;
use crate::host_queue::IOV_MAX;
use crate::topology::DiskTopology;

/// The most bytes one discard or write-zeroes request should cover (1 GiB): such a request runs whole on a
/// queue's worker pool, so the cap bounds how long one holds a worker. Larger requests still work.
pub const MAX_ZEROING_LEN: u64 = 1 << 30;

/// The most bytes one read or write request should move (the largest multiple of 4 KiB a virtio-blk
/// `size_max` or a kernel `MAX_RW_COUNT` takes). Larger requests still work.
pub const MAX_TRANSFER: u64 = 0x7fff_f000;

/// What a front end tells the guest (virtio-blk's config space, NVMe's Identify Namespace), in one place:
/// capacity, geometry, alignments, request limits, discard and write-zeroes support, FUA.
///
/// From [`DiskFile::properties`](crate::DiskFile::properties). Limits are advice for the guest: requests
/// beyond `max_segments`, `max_transfer` or the zeroing caps still work (split or served whole), but
/// requests that do not meet `request_alignment`/`buffer_alignment` on a disk opened with O_DIRECT fail on
/// an [`AsyncIo`](crate::AsyncIo) queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DiskProperties {
    /// Guest-visible size in bytes.
    pub capacity: u64,
    /// Whether the disk refuses writes (virtio-blk `VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// Block geometry: `blk_size`, `physical_block_exp`, `min_io_size`, `opt_io_size`, discard granularity
    /// (a QCOW2's cluster size, a VHDX's block size, the host file system's block for raw files).
    pub topology: DiskTopology,
    /// Offsets and lengths of reads and writes must be multiples of this (the logical block size, or
    /// O_DIRECT's offset alignment when larger).
    pub request_alignment: u32,
    /// Buffer addresses and lengths must be multiples of this: O_DIRECT's memory alignment, else 1.
    pub buffer_alignment: u32,
    /// Buffers aligned to this avoid any bounce or read-modify-write on the host (the page size).
    pub optimal_buffer_alignment: u32,
    /// The most buffers one request should have (virtio-blk `seg_max`): Linux's `IOV_MAX`.
    pub max_segments: u32,
    /// The most bytes one read or write should move (virtio-blk `size_max` per segment is at most this).
    pub max_transfer: u64,
    /// Whether discard does something (virtio-blk `VIRTIO_BLK_F_DISCARD`).
    pub supports_discard: bool,
    /// The most bytes one discard should cover (`max_discard_sectors * 512`).
    pub max_discard_len: u64,
    /// Whether write-zeroes is served without writing zero buffers where the format can
    /// (`VIRTIO_BLK_F_WRITE_ZEROES`; it always works).
    pub supports_write_zeroes: bool,
    /// The most bytes one write-zeroes should cover (`max_write_zeroes_sectors * 512`).
    pub max_write_zeroes_len: u64,
    /// Whether write-zeroes may deallocate (`write_zeroes_may_unmap`).
    pub write_zeroes_may_unmap: bool,
    /// Whether a FUA write costs no more than a write: `false` here, as FUA is a write then a flush.
    pub native_fua: bool,
    /// Whether writes stay volatile until a flush (a writeback cache: `VIRTIO_BLK_F_FLUSH`): always `true`.
    pub needs_flush: bool,
}

impl DiskProperties {
    /// The properties of a disk of `capacity` bytes with `topology`, opened `read_only`, with O_DIRECT's
    /// `direct` alignment when it has one.
    pub fn new(
        capacity: u64,
        read_only: bool,
        topology: DiskTopology,
        direct: Option<DirectIoAlignment>,
    ) -> DiskProperties {
        let logical = topology.logical_block_size.max(1);
        let (request_alignment, buffer_alignment) = match direct {
            Some(a) => (logical.max(a.offset), a.memory.max(1)),
            None => (logical, 1),
        };
        let supports_discard = !read_only && topology.discard_granularity > 0;
        DiskProperties {
            capacity,
            read_only,
            topology,
            request_alignment,
            buffer_alignment,
            optimal_buffer_alignment: page_size().max(buffer_alignment),
            max_segments: IOV_MAX as u32,
            max_transfer: MAX_TRANSFER,
            supports_discard,
            max_discard_len: if supports_discard { MAX_ZEROING_LEN } else { 0 },
            supports_write_zeroes: !read_only,
            max_write_zeroes_len: if read_only { 0 } else { MAX_ZEROING_LEN },
            write_zeroes_may_unmap: supports_discard,
            native_fua: false,
            needs_flush: true,
        }
    }
}

/// The host's page size.
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_raises_the_alignments() {
        let topology = DiskTopology {
            discard_granularity: 65536,
            ..DiskTopology::default()
        };
        let p = DiskProperties::new(1 << 20, false, topology, None);
        assert_eq!((p.request_alignment, p.buffer_alignment), (512, 1));
        assert!(p.supports_discard && p.write_zeroes_may_unmap);
        assert_eq!(p.topology.discard_granularity, 65536);
        let direct = DirectIoAlignment {
            memory: 512,
            offset: 4096,
        };
        let p = DiskProperties::new(1 << 20, true, topology, Some(direct));
        assert_eq!((p.request_alignment, p.buffer_alignment), (4096, 512));
        assert!(!p.supports_discard && !p.supports_write_zeroes);
        assert_eq!(p.max_segments, 1024);
    }
}
