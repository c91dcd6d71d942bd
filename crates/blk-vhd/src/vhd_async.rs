//! The asynchronous path: [`VhdMapper`] translates guest requests into host ranges from the cached BAT, and
//! [`VhdAsync`] is the [`AsyncIo`](blk_core::AsyncIo) queue built on it with blk-core's [`MappedQueue`].
//!
//! What is mapped (everything else is answered [`Mapped::Slow`] and runs through the synchronous path, which
//! stays the only writer of metadata):
//!
//! | request | fixed disk | dynamic disk | differencing disk |
//! |---|---|---|---|
//! | read | one host range | per block: a block whose sector bitmap is known full is a host range, an unallocated block zeros | per block: a block whose sector bitmap is known full is a host range |
//! | write | one host range | blocks whose sector bitmap is known full | the same, for sector-aligned pieces |
//!
//! A block's bitmap is "known full" once the synchronous path has read it (the first request touching an
//! allocated block runs slow and warms the per-block state) or allocated the block itself. Writes that allocate
//! a block or set sector bitmap bits, reads of partially present blocks and of the parent, and unaligned writes
//! to differencing disks (which merge partial sectors with the parent's data under `merge_lock`) are slow.
//! Nothing is ever allocated by the mapper, so [`AsyncMapper::finish_allocation`] is never called.

use std::sync::{Arc, PoisonError};

use blk_core::{
    check_range, read_only_error, AllocationLink, AsyncMapper, DiskFile, Error, ErrorKind,
    HostFile, HostQueueBackend, Mapped, MappedQueue, Operation, ReadMapping, Result, WriteMapping,
};

use crate::bat::{SparseLayout, BITMAP_FULL, UNALLOCATED};
use crate::footer::DiskType;
use crate::vhd::Vhd;

/// The index of the image file in [`AsyncMapper::host_files`].
const IMAGE_FILE: usize = 0;

/// A VHD image's translator from guest ranges to ranges of the image file, for [`MappedQueue`].
///
/// It owns a handle of the image (sharing its metadata with every other handle) and serves
/// [`Mapped::Slow`] requests through it.
#[derive(Debug)]
pub struct VhdMapper {
    image: Vhd,
}

impl VhdMapper {
    /// A mapper over a new handle of `image`.
    pub fn new(image: &Vhd) -> Result<VhdMapper> {
        Ok(VhdMapper {
            image: image.duplicate()?,
        })
    }

    fn checked(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        check_range(offset, len, self.image.shared.size)
            .map_err(|e| self.image.context(e, operation, Some(offset)))
    }

    /// Maps the blocks of `offset..offset + len` of a sparse disk with `piece`, which answers for one
    /// block-bounded chunk (`block`, its BAT entry, offset in the block, length) or `None` for slow.
    fn map_blocks<T>(
        sparse: &SparseLayout,
        offset: u64,
        len: u64,
        out: &mut Vec<T>,
        mut piece: impl FnMut(u64, u32, u64, u64) -> Option<T>,
        merge: impl Fn(&mut T, &T) -> bool,
    ) -> Mapped {
        let start = out.len();
        // One read lock for the whole request; only atomics and in-memory entries are read under it.
        let bat = sparse.bat.read().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let block = pos / sparse.block_size;
            let in_block = pos % sparse.block_size;
            let n = (sparse.block_size - in_block).min(len - done);
            let entry = usize::try_from(block)
                .ok()
                .and_then(|i| bat.get(i).copied())
                .unwrap_or(UNALLOCATED);
            let Some(mapping) = piece(block, entry, in_block, n) else {
                out.truncate(start);
                return Mapped::Slow;
            };
            let merged = out.len() > start && out.last_mut().is_some_and(|l| merge(l, &mapping));
            if !merged {
                out.push(mapping);
            }
            done += n;
        }
        Mapped::Fast
    }

    /// The host offset of `in_block` in the allocated block at `entry`.
    fn host_offset(sparse: &SparseLayout, entry: u32, in_block: u64) -> u64 {
        u64::from(entry) * 512 + sparse.bitmap_size + in_block
    }
}

impl AsyncMapper for VhdMapper {
    fn disk(&self) -> &dyn DiskFile {
        &self.image
    }

    fn host_files(&self) -> Vec<&HostFile> {
        vec![&self.image.file]
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<Mapped> {
        self.checked(offset, len, Operation::Read)?;
        if len == 0 {
            return Ok(Mapped::Fast);
        }
        let Some(sparse) = &self.image.shared.sparse else {
            out.push(ReadMapping::Host {
                file: IMAGE_FILE,
                offset,
                len,
            });
            return Ok(Mapped::Fast);
        };
        let differencing = self.image.shared.disk_type == DiskType::Differencing;
        let piece = |block, entry, in_block, n| {
            if entry == UNALLOCATED {
                // A differencing disk shows its parent here.
                return (!differencing).then_some(ReadMapping::Zero { len: n });
            }
            (sparse.bitmap_state(block) == BITMAP_FULL).then(|| ReadMapping::Host {
                file: IMAGE_FILE,
                offset: Self::host_offset(sparse, entry, in_block),
                len: n,
            })
        };
        Ok(Self::map_blocks(
            sparse,
            offset,
            len,
            out,
            piece,
            ReadMapping::try_extend,
        ))
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<Mapped> {
        if self.image.file.is_read_only() {
            let operation = Operation::Write;
            return Err(self
                .image
                .context(read_only_error(operation), operation, Some(offset)));
        }
        self.checked(offset, len, Operation::Write)?;
        if len == 0 {
            return Ok(Mapped::Fast);
        }
        let Some(sparse) = &self.image.shared.sparse else {
            out.push(WriteMapping::Host {
                file: IMAGE_FILE,
                offset,
                len,
            });
            return Ok(Mapped::Fast);
        };
        let differencing = self.image.shared.disk_type == DiskType::Differencing;
        let piece = |block, entry, in_block: u64, n: u64| {
            let aligned = in_block % 512 == 0 && n % 512 == 0;
            let in_place = entry != UNALLOCATED
                && sparse.bitmap_state(block) == BITMAP_FULL
                && (aligned || !differencing);
            in_place.then(|| WriteMapping::Host {
                file: IMAGE_FILE,
                offset: Self::host_offset(sparse, entry, in_block),
                len: n,
            })
        };
        Ok(Self::map_blocks(
            sparse,
            offset,
            len,
            out,
            piece,
            WriteMapping::try_extend,
        ))
    }

    /// Never called: the mapper answers allocating writes [`Mapped::Slow`].
    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        written?;
        Err(self.image.context(
            Error::new(
                ErrorKind::InvalidInput,
                format!("the VHD async path allocates nothing, yet was asked to link {link:?}"),
            ),
            Operation::Write,
            None,
        ))
    }
}

/// An asynchronous queue on a VHD image: [`VhdMapper`] over a [`MappedQueue`].
///
/// ```
/// use blk_core::{AsyncDiskFile, DenyNamedImages, IoBuf, IoBufMut, Request, RequestOp};
/// use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.vhd");
/// Vhd::create(&path, &VhdCreateOptions::from_key_values(Some(8 << 20), &[])?, &DenyNamedImages)?;
/// let disk = Vhd::open(&path, &VhdOpenOptions::default())?;
/// let mut queue = disk.create_async_io(32)?; // a VhdAsync on the disk's backend
/// // Buffers must outlive their requests: leaked here, guest memory in a VMM.
/// let data: &'static [u8] = Box::leak(vec![7u8; 4096].into_boxed_slice());
/// let back: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
/// let back = IoBufMut::from(back);
/// let (wbufs, rbufs) = ([IoBuf::from(data)], [back]);
/// queue.submit(&[Request::new(1, RequestOp::Write { offset: 1 << 20, bufs: &wbufs })])?;
/// while queue.next_completed_request().is_none() {
///     let _ = queue.notifier().read();
/// }
/// queue.submit(&[Request::new(2, RequestOp::Read { offset: 1 << 20, bufs: &rbufs })])?;
/// let done = loop {
///     match queue.next_completed_request() {
///         Some(done) => break done,
///         None => { let _ = queue.notifier().read(); }
///     }
/// };
/// assert_eq!(done.result?, 4096);
/// let mut copy = [0u8; 4096];
/// back.as_io_buf().copy_to(&mut copy);
/// assert_eq!(copy, [7u8; 4096]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct VhdAsync {
    queue: MappedQueue,
}

impl VhdAsync {
    /// A queue of at most `ring_depth` requests in flight on a new handle of `image`, doing host I/O on
    /// `backend`.
    pub fn new(image: &Vhd, backend: &dyn HostQueueBackend, ring_depth: u32) -> Result<VhdAsync> {
        let mapper = Arc::new(VhdMapper::new(image)?);
        let queue = MappedQueue::new(mapper, backend, ring_depth)
            .map_err(|e| image.context(e, Operation::Open, None))?;
        Ok(VhdAsync { queue })
    }
}

blk_core::delegate_async_io!(VhdAsync, queue);
