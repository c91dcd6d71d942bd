//! The native asynchronous path: [`Qcow2Mapper`] translates guest requests into host ranges from the cached
//! metadata (blk-core's [`AsyncMapper`]), and [`Qcow2Async`] is the [`AsyncIo`](blk_core::AsyncIo) queue built from it and a
//! [`HostQueueBackend`] ([`MappedQueue`]).
//!
//! What the mapper serves itself ("fast") and what it hands to the synchronous path ("slow"):
//!
//! | request | fast | slow |
//! |---|---|---|
//! | read | data clusters (host-contiguous ones merged into one piece), zero clusters, unallocated clusters of an image without backing file; compressed clusters (an encoded piece: the backend reads the compressed bytes, the queue's pool inflates them, sequential readers are served from read-ahead windows); with extended L2 entries the same per subcluster | backing-file data, anything in an external data file |
//! | write | clusters already allocated with refcount 1 (`COPIED`, in place; with extended L2 entries only where every covered subcluster is allocated), and whole clusters that are unallocated or zero without host cluster (allocated in runs, one per L2 table) on an image without extended L2 entries | partial writes needing copy-on-write, shared or compressed clusters, preallocated zero clusters, clusters another writer is allocating, external data files, fresh clusters with extended L2 entries |
//!
//! Flush, write-zeroes, discard and FUA writes always take the synchronous path (the queue decides that).
//! The mapping of one request takes the metadata lock once; an allocating write marks its clusters in flight
//! under that hold and [`AsyncMapper::finish_allocation`] links them (or gives them back) under a second one,
//! after the data write: the sync path's rules hold (see the crate docs, "Locking").

use std::sync::Arc;

use blk_core::{
    check_range, AllocationLink, AsyncMapper, DiskFile, HostFile, HostQueueBackend, Mapped,
    MappedQueue, Operation, ReadMapping, Result, WriteMapping,
};

use crate::metadata::Metadata;
use crate::qcow2::Qcow2;
use crate::subclusters::Subcluster;

/// Index of the image file in [`AsyncMapper::host_files`].
pub(crate) const IMAGE_FILE: usize = 0;

/// The QCOW2 [`AsyncMapper`]: answers from the metadata cache of one open image, which it shares with every
/// other handle of that image (a clone made by [`Qcow2Mapper::new`]).
#[derive(Debug)]
pub struct Qcow2Mapper {
    pub(crate) image: Qcow2,
}

impl Qcow2Mapper {
    /// A mapper over a new handle of `image` (its own descriptor, shared metadata).
    pub fn new(image: &Qcow2) -> Result<Qcow2Mapper> {
        Ok(Qcow2Mapper {
            image: image.duplicate()?,
        })
    }

    /// Maps a read under the metadata lock (see [`AsyncMapper::map_read`]).
    fn map_read_locked(
        &self,
        meta: &mut Metadata,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadMapping>,
    ) -> Result<Mapped> {
        let image = &self.image;
        let g = &image.shared.geometry;
        let cs = g.cluster_size;
        let step = g.subcluster_size();
        let has_backing = image.shared.backing.is_some();
        let has_data_file = image.shared.data_file.is_some();
        let start = out.len();
        let end = offset + len;
        let mut pos = offset;
        // The entry of the cluster being walked (looked up once for all its subclusters).
        let mut current = None;
        while pos < end {
            let gc = pos >> g.cluster_bits;
            let (entry, bitmap) = match current {
                Some((c, e, b)) if c == gc => (e, b),
                _ => {
                    let (e, b) = if g.extended_l2 {
                        image.lookup_with_bitmap(meta, gc)?
                    } else {
                        (image.lookup(meta, gc)?, 0)
                    };
                    current = Some((gc, e, b));
                    (e, b)
                }
            };
            let index = (pos % cs) >> g.subcluster_bits;
            let n = (step - pos % step).min(end - pos);
            let piece = match Subcluster::of(entry, bitmap, index, g, pos)? {
                Subcluster::Data { host } if !has_data_file => ReadMapping::Host {
                    file: IMAGE_FILE,
                    offset: host + pos % cs,
                    len: n,
                },
                Subcluster::Zero { .. } => ReadMapping::Zero { len: n },
                Subcluster::Unallocated { .. } if !has_backing => ReadMapping::Zero { len: n },
                // Read by the backend, inflated on the queue's worker pool (`decode`), as the sync path
                // reads it: at most two clusters of compressed bytes, zeros past the end of the file.
                Subcluster::Compressed { host, size } => ReadMapping::Encoded {
                    file: IMAGE_FILE,
                    offset: host,
                    host_len: size.min(2 * cs),
                    decoded_len: cs,
                    skip: pos % cs,
                    len: n,
                    codec: u64::from(g.compression_type),
                },
                _ => {
                    out.truncate(start);
                    return Ok(Mapped::Slow);
                }
            };
            push_read(out, start, piece);
            pos += n;
        }
        Ok(Mapped::Fast)
    }
}

/// Pushes `piece`, merged into the previous piece of the same request (from index `start`) when it continues
/// it (host-contiguous data, or zeros after zeros).
fn push_read(out: &mut Vec<ReadMapping>, start: usize, piece: ReadMapping) {
    if out.len() > start && out.last_mut().is_some_and(|last| last.try_extend(&piece)) {
        return;
    }
    out.push(piece);
}

impl AsyncMapper for Qcow2Mapper {
    fn disk(&self) -> &dyn DiskFile {
        &self.image
    }

    fn host_files(&self) -> Vec<&HostFile> {
        // An external data file is a `DiskFile` from the opener, without a host file to hand out: its data
        // pieces take the slow path, so only the image file is listed.
        vec![&self.image.file]
    }

    fn decode(&self, codec: u64, input: &[u8], output: &mut [u8]) -> Result<()> {
        let image = &self.image;
        // The codec is the image's (the only one a mapping names); decompression checks the output size.
        let kind = image.shared.geometry.compression_type;
        debug_assert_eq!(codec, u64::from(kind));
        crate::compression::decompress(kind, input, output)
            .map_err(|e| image.context(e, Operation::Read, None))
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<Mapped> {
        let image = &self.image;
        check_range(offset, len, image.shared.geometry.size)
            .map_err(|e| image.context(e, Operation::Read, Some(offset)))?;
        let mut meta = image.lock_metadata();
        self.map_read_locked(&mut meta, offset, len, out)
            .map_err(|e| image.context(e, Operation::Read, Some(offset)))
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<Mapped> {
        let image = &self.image;
        image.writable(Operation::Write, offset)?;
        check_range(offset, len, image.shared.geometry.size)
            .map_err(|e| image.context(e, Operation::Write, Some(offset)))?;
        let mut meta = image.lock_metadata();
        let mapped = self.map_write_locked(&mut meta, offset, len, out);
        drop(meta);
        if !matches!(mapped, Ok(Mapped::Fast)) {
            // An undone allocation may have taken clusters out of flight: wake writers waiting for them.
            image.shared.linked.notify_all();
        }
        mapped.map_err(|e| image.context(e, Operation::Write, Some(offset)))
    }

    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let image = &self.image;
        let guest = link.guest.saturating_mul(image.cluster_size());
        self.link_allocation(link, written)
            .map_err(|e| image.context(e, Operation::Write, Some(guest)))
    }
}

/// A QCOW2 image's native asynchronous queue: requests mapped by a [`Qcow2Mapper`], data I/O submitted in
/// batches on a [`HostQueueBackend`], the rest served by the image's synchronous path (see the
/// [module docs](self) for which requests are which).
///
/// ```
/// use std::sync::Arc;
/// use blk_core::{AsyncIo, DenyNamedImages, HostOpenOptions, IoBuf, IoBufMut, Request, RequestOp};
/// use blk_core::SyncHostBackend;
/// use blk_qcow::{Qcow2, Qcow2Async, Qcow2CreateOptions, Qcow2OpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// Qcow2::create(&path, &Qcow2CreateOptions::from_key_values(Some(1 << 20), &[])?, &DenyNamedImages)?;
/// let disk = Qcow2::open(&path, &Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages)))?;
/// let mut queue = Qcow2Async::new(&disk, &SyncHostBackend, 32)?;
///
/// // Request buffers must outlive the request: guest memory in a VMM, leaked memory here.
/// let data: &'static [u8] = Box::leak(vec![0xa5u8; 65536].into_boxed_slice());
/// let back: &'static mut [u8] = Box::leak(vec![0u8; 65536].into_boxed_slice());
/// let (write, read) = ([IoBuf::from(data)], [IoBufMut::from(back)]);
/// // A whole fresh cluster: allocated by the mapper, written by the backend, then linked.
/// queue.submit(&[Request::new(1, RequestOp::Write { offset: 65536, bufs: &write })])?;
/// let mut done = Vec::new();
/// while done.is_empty() {
///     done.extend(std::iter::from_fn(|| queue.next_completed_request()));
/// }
/// queue.submit(&[Request::new(2, RequestOp::Read { offset: 65536, bufs: &read })])?;
/// while done.len() < 2 {
///     done.extend(std::iter::from_fn(|| queue.next_completed_request()));
/// }
/// assert!(done.iter().all(|c| c.result.is_ok()));
/// let mut copy = vec![0u8; 65536];
/// read[0].as_io_buf().copy_to(&mut copy);
/// assert!(copy.iter().all(|&b| b == 0xa5));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Qcow2Async {
    queue: MappedQueue,
}

impl Qcow2Async {
    /// A queue of at most `ring_depth` requests in flight over `image` (a new handle sharing its metadata),
    /// doing host I/O on `backend`.
    pub fn new(
        image: &Qcow2,
        backend: &dyn HostQueueBackend,
        ring_depth: u32,
    ) -> Result<Qcow2Async> {
        let mapper = Arc::new(Qcow2Mapper::new(image)?);
        let queue = MappedQueue::new(mapper, backend, ring_depth)
            .map_err(|e| image.context(e, Operation::Open, None))?;
        Ok(Qcow2Async { queue })
    }
}

blk_core::delegate_async_io!(Qcow2Async, queue);
