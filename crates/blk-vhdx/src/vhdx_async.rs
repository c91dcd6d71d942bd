//! The asynchronous path: [`VhdxMapper`] translates guest requests into host ranges from the cached BAT, and
//! [`VhdxAsync`] is the [`AsyncIo`](blk_core::AsyncIo) queue built on it with blk-core's [`MappedQueue`].
//!
//! Per payload block, by BAT state (exactly what the synchronous reader does with each):
//!
//! | state | read | write |
//! |---|---|---|
//! | FULLY_PRESENT | host range (adjacent blocks merged) | host range, in place |
//! | NOT_PRESENT, no parent | zeros | slow (allocation) |
//! | NOT_PRESENT with a parent | slow (the parent's data) | slow (allocation, copy from the parent) |
//! | ZERO, UNDEFINED, UNMAPPED (and the v0.95 UNMAPPED) | zeros | slow (allocation) |
//! | PARTIALLY_PRESENT | slow (sector bitmap) | slow (promotion) |
//! | any other | the synchronous reader's `CorruptImage` error | the same error |
//!
//! Writes are also slow until the session's first guest-visible change has rewritten the data write GUID (the
//! synchronous path does it under the metadata lock, so the header update is logged in order). Every metadata
//! change (allocation, BAT state, the log) thus stays on the synchronous path and keeps its crash-safety order;
//! the mapper allocates nothing, so [`AsyncMapper::finish_allocation`] is never called.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use blk_core::{
    check_range, read_only_error, AllocationLink, AsyncMapper, DiskFile, Error, ErrorKind,
    HostFile, HostQueueBackend, Mapped, MappedQueue, Operation, ReadMapping, Result, WriteMapping,
};

use crate::bat::{self, *};
use crate::vhdx::Vhdx;

/// The index of the image file in [`AsyncMapper::host_files`].
const IMAGE_FILE: usize = 0;

/// A VHDX image's translator from guest ranges to ranges of the image file, for [`MappedQueue`].
///
/// It owns a handle of the image (sharing its metadata with every other handle) and serves
/// [`Mapped::Slow`] requests through it.
#[derive(Debug)]
pub struct VhdxMapper {
    image: Vhdx,
}

/// What one block-bounded piece of a request maps to.
enum Piece<T> {
    Mapped(T),
    Slow,
}

impl VhdxMapper {
    /// A mapper over a new handle of `image`.
    pub fn new(image: &Vhdx) -> Result<VhdxMapper> {
        Ok(VhdxMapper {
            image: image
                .duplicate()
                .map_err(|e| image.context(e, Operation::Open))?,
        })
    }

    fn checked(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        check_range(offset, len, self.image.shared.geometry.virtual_size)
            .map_err(|e| self.image.context(e, operation))
    }

    /// Maps `offset..offset + len` block by block with `piece` (BAT index, entry, offset in the block,
    /// length), taking the BAT's read lock once for the whole request.
    fn map_blocks<T>(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<T>,
        piece: impl Fn(usize, u64, u64, u64) -> Result<Piece<T>>,
        merge: impl Fn(&mut T, &T) -> bool,
    ) -> Result<Mapped> {
        let shared = &self.image.shared;
        let g = &shared.geometry;
        let start = out.len();
        let bat = shared.bat.read().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (block, in_off) = (pos / g.block_size, pos % g.block_size);
            let n = (g.block_size - in_off).min(len - done);
            let index = g.payload_index(block);
            // 0 (not present) past the table, as the synchronous path reads it; validated geometry never asks.
            let entry = bat.get(index).copied().unwrap_or(0);
            let mapping = match piece(index, entry, in_off, n) {
                Ok(Piece::Mapped(mapping)) => mapping,
                Ok(Piece::Slow) => {
                    out.truncate(start);
                    return Ok(Mapped::Slow);
                }
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            };
            let merged = out.len() > start && out.last_mut().is_some_and(|l| merge(l, &mapping));
            if !merged {
                out.push(mapping);
            }
            done += n;
        }
        Ok(Mapped::Fast)
    }
}

impl AsyncMapper for VhdxMapper {
    fn disk(&self) -> &dyn DiskFile {
        &self.image
    }

    fn host_files(&self) -> Vec<&HostFile> {
        vec![&self.image.file]
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<Mapped> {
        self.checked(offset, len, Operation::Read)?;
        let has_parent = self.image.shared.parent.is_some();
        let piece = |index, entry, in_off, n| {
            Ok(match bat::state(entry) {
                PAYLOAD_FULLY_PRESENT => Piece::Mapped(ReadMapping::Host {
                    file: IMAGE_FILE,
                    offset: file_offset(entry) + in_off,
                    len: n,
                }),
                PAYLOAD_PARTIALLY_PRESENT => Piece::Slow,
                PAYLOAD_NOT_PRESENT if has_parent => Piece::Slow,
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => Piece::Mapped(ReadMapping::Zero { len: n }),
                st => {
                    let err = self.image.invalid_state(index, st);
                    return Err(self.image.context(err, Operation::Read));
                }
            })
        };
        self.map_blocks(offset, len, out, piece, ReadMapping::try_extend)
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<Mapped> {
        if self.image.shared.read_only {
            let operation = Operation::Write;
            let err = read_only_error(operation).with_offset(offset);
            return Err(self.image.context(err, operation));
        }
        self.checked(offset, len, Operation::Write)?;
        if len == 0 {
            return Ok(Mapped::Fast);
        }
        if !self.image.shared.data_guid_written.load(Ordering::Acquire) {
            // The first guest-visible change of the session updates the headers first.
            return Ok(Mapped::Slow);
        }
        let piece = |_index, entry, in_off, n| {
            Ok(if bat::state(entry) == PAYLOAD_FULLY_PRESENT {
                Piece::Mapped(WriteMapping::Host {
                    file: IMAGE_FILE,
                    offset: file_offset(entry) + in_off,
                    len: n,
                })
            } else {
                Piece::Slow
            })
        };
        self.map_blocks(offset, len, out, piece, WriteMapping::try_extend)
    }

    /// Never called: the mapper answers allocating writes [`Mapped::Slow`].
    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        written?;
        let err = Error::new(
            ErrorKind::InvalidInput,
            format!("the VHDX async path allocates nothing, yet was asked to link {link:?}"),
        );
        Err(self.image.context(err, Operation::Write))
    }
}

/// An asynchronous queue on a VHDX image: [`VhdxMapper`] over a [`MappedQueue`].
///
/// ```
/// use std::sync::Arc;
/// use blk_core::{AsyncDiskFile, DenyNamedImages, HostOpenOptions, IoBuf, IoBufMut, Request, RequestOp};
/// use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.vhdx");
/// Vhdx::create(&path, &VhdxCreateOptions::from_key_values(Some(8 << 20), &[])?, &DenyNamedImages)?;
/// let options = VhdxOpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
/// let disk = Vhdx::open(&path, &options)?;
/// let mut queue = disk.create_async_io(32)?; // a VhdxAsync on the disk's backend
/// // Buffers must outlive their requests: leaked here, guest memory in a VMM.
/// let data: &'static [u8] = Box::leak(vec![7u8; 4096].into_boxed_slice());
/// let back = IoBufMut::from(Box::leak(vec![0u8; 4096].into_boxed_slice()) as &'static mut [u8]);
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
pub struct VhdxAsync {
    queue: MappedQueue,
}

impl VhdxAsync {
    /// A queue of at most `ring_depth` requests in flight on a new handle of `image`, doing host I/O on
    /// `backend`.
    pub fn new(image: &Vhdx, backend: &dyn HostQueueBackend, ring_depth: u32) -> Result<VhdxAsync> {
        let mapper = Arc::new(VhdxMapper::new(image)?);
        let queue = MappedQueue::new(mapper, backend, ring_depth)
            .map_err(|e| image.context(e, Operation::Open))?;
        Ok(VhdxAsync { queue })
    }
}

blk_core::delegate_async_io!(VhdxAsync, queue);
