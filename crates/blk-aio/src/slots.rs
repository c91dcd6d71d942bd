//! [`SlotTable`]: the iocbs of one queue, each with its reused iovec array and the progress of its operation,
//! and [`QueuedOp`], an operation waiting for a slot.
//!
//! Slot `i` owns `iocbs[i]`; the iocbs live in a boxed slice that is never reallocated, so a pointer handed to
//! `io_submit` stays valid while the operation is in flight. A read or write may take several iocbs, one after
//! the other in the same slot: each event is a step of the operation's [`HostTransfer`] (blk-core's rules on
//! short transfers), which says whether the rest goes out again or what the operation completes with.

use blk_core::host_queue::{HostTransfer, TransferKind};
use blk_core::{HostOp, IoBuf, IoBufMut};

use crate::abi::{
    Iocb, IOCB_CMD_FDSYNC, IOCB_CMD_PREAD, IOCB_CMD_PREADV, IOCB_CMD_PWRITE, IOCB_CMD_PWRITEV,
    IOCB_FLAG_RESFD,
};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// Read into the iovecs.
    Read,
    /// Write from the iovecs.
    Write,
    /// `fdatasync` the file.
    SyncData,
}

/// An operation copied out of a [`HostOp`]: what a slot or the backlog holds.
#[derive(Debug)]
pub(crate) struct QueuedOp {
    /// The caller's tag, returned in the completion.
    pub(crate) user_data: u64,
    /// What to do.
    pub(crate) kind: OpKind,
    /// Index of the file in the queue's files.
    pub(crate) file: usize,
    /// Byte offset in the file (checked to fit an `i64` by the queue).
    pub(crate) offset: u64,
    /// The buffers, as the kernel reads them.
    pub(crate) iovecs: Vec<libc::iovec>,
}

impl QueuedOp {
    /// The parts of `op` apart from its buffers, which [`copy_iovecs`] copies.
    pub(crate) fn describe(op: &HostOp<'_>) -> (OpKind, usize, u64) {
        match *op {
            HostOp::Read { file, offset, .. } => (OpKind::Read, file, offset),
            HostOp::Write { file, offset, .. } => (OpKind::Write, file, offset),
            HostOp::SyncData { file } => (OpKind::SyncData, file, 0),
        }
    }
}

/// The number of buffers of `op` and their total length in bytes (saturating).
pub(crate) fn buffer_shape(op: &HostOp<'_>) -> (usize, u64) {
    let total = |lens: &mut dyn Iterator<Item = usize>| {
        lens.fold(0u64, |total, len| total.saturating_add(len as u64))
    };
    match *op {
        HostOp::Read { bufs, .. } => (bufs.len(), total(&mut bufs.iter().map(IoBufMut::len))),
        HostOp::Write { bufs, .. } => (bufs.len(), total(&mut bufs.iter().map(IoBuf::len))),
        HostOp::SyncData { .. } => (0, 0),
    }
}

/// Replaces the contents of `iovecs` with `op`'s buffers (none for a sync), keeping its allocation.
pub(crate) fn copy_iovecs(op: &HostOp<'_>, iovecs: &mut Vec<libc::iovec>) {
    iovecs.clear();
    match *op {
        HostOp::Read { bufs, .. } => iovecs.extend(bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })),
        HostOp::Write { bufs, .. } => iovecs.extend(bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        })),
        HostOp::SyncData { .. } => {}
    }
}

/// The slots of one queue: iocbs in place, their iovec arrays, tags and a free list.
pub(crate) struct SlotTable {
    /// Slot `i`'s iocb; never reallocated.
    iocbs: Box<[Iocb]>,
    /// Slot `i`'s iovec array (vectored operations point `aio_buf` at it); reused from one operation to the next.
    iovecs: Box<[Vec<libc::iovec>]>,
    /// Slot `i`'s operation: its tag, kind and file index.
    ops: Box<[(u64, OpKind, usize)]>,
    /// Slot `i`'s progress (a read or write; unused for a sync).
    transfers: Box<[HostTransfer]>,
    /// Free slot indices.
    free: Vec<usize>,
    /// Whether slot `i` is taken (not in `free`).
    taken: Box<[bool]>,
}

impl SlotTable {
    /// `count` free slots.
    pub(crate) fn new(count: usize) -> SlotTable {
        SlotTable {
            iocbs: vec![Iocb::default(); count].into_boxed_slice(),
            iovecs: (0..count).map(|_| Vec::new()).collect(),
            ops: vec![(0, OpKind::SyncData, 0); count].into_boxed_slice(),
            transfers: vec![HostTransfer::read(0, 0); count].into_boxed_slice(),
            // Popped from the end: slot 0 first.
            free: (0..count).rev().collect(),
            taken: vec![false; count].into_boxed_slice(),
        }
    }

    /// The number of slots.
    pub(crate) fn len(&self) -> usize {
        self.iocbs.len()
    }

    /// A free slot, now taken, or `None` when all are in use.
    pub(crate) fn take_free(&mut self) -> Option<usize> {
        let slot = self.free.pop()?;
        if let Some(taken) = self.taken.get_mut(slot) {
            *taken = true;
        }
        Some(slot)
    }

    /// Returns `slot` to the free list.
    pub(crate) fn release(&mut self, slot: usize) {
        if let Some(taken) = self.taken.get_mut(slot) {
            if *taken {
                *taken = false;
                self.free.push(slot);
            }
        }
    }

    /// Whether `slot` exists and is taken.
    pub(crate) fn is_taken(&self, slot: usize) -> bool {
        self.taken.get(slot).copied().unwrap_or(false)
    }

    /// The tag, kind and file index of the operation in `slot`.
    pub(crate) fn op(&self, slot: usize) -> Option<(u64, OpKind, usize)> {
        self.ops.get(slot).copied()
    }

    /// The iovec array of `slot`, for filling it before [`SlotTable::prepare`].
    pub(crate) fn iovecs_mut(&mut self, slot: usize) -> Option<&mut Vec<libc::iovec>> {
        self.iovecs.get_mut(slot)
    }

    /// Takes `op`'s iovec array into `slot` (keeping the slot's old allocation in `op`) and prepares the iocb.
    pub(crate) fn load(&mut self, slot: usize, op: &mut QueuedOp, fd: u32, resfd: u32) {
        if let Some(iovecs) = self.iovecs.get_mut(slot) {
            std::mem::swap(iovecs, &mut op.iovecs);
        }
        self.prepare(slot, op.user_data, op.kind, op.file, op.offset, fd, resfd);
    }

    /// Fills `slot`'s iocb for an operation whose buffers are already in the slot's iovec array. `offset` must
    /// fit an `i64` (the queue checks).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        &mut self,
        slot: usize,
        user_data: u64,
        kind: OpKind,
        file: usize,
        offset: u64,
        fd: u32,
        resfd: u32,
    ) {
        let (Some(iovecs), Some(op), Some(transfer)) = (
            self.iovecs.get(slot),
            self.ops.get_mut(slot),
            self.transfers.get_mut(slot),
        ) else {
            return;
        };
        *op = (user_data, kind, file);
        let len = iovecs
            .iter()
            .fold(0u64, |total, iov| total.saturating_add(iov.iov_len as u64));
        *transfer = match kind {
            OpKind::Write => HostTransfer::new(TransferKind::Write, offset, len),
            OpKind::Read | OpKind::SyncData => HostTransfer::new(TransferKind::Read, offset, len),
        };
        self.fill_iocb(slot, fd, resfd);
    }

    /// Accounts for one event of `slot` (`result`: bytes or errno): `None` when the operation goes on (the iocb
    /// is filled again for the rest, to be submitted anew), or its result. `file_len` gives the length of the
    /// operation's file; it is asked only when a read fails after a partial transfer.
    pub(crate) fn step(
        &mut self,
        slot: usize,
        result: std::result::Result<usize, i32>,
        file_len: impl FnOnce(usize) -> Option<u64>,
    ) -> Option<std::result::Result<u64, i32>> {
        let (Some(&(_, kind, file)), Some(iovecs), Some(transfer), Some(iocb)) = (
            self.ops.get(slot),
            self.iovecs.get_mut(slot),
            self.transfers.get_mut(slot),
            self.iocbs.get(slot),
        ) else {
            return Some(Err(libc::EBADF));
        };
        if kind == OpKind::SyncData {
            return Some(result.map(|_| 0));
        }
        let outcome = transfer.step(result, iovecs, || file_len(file));
        if outcome.is_none() {
            transfer.cut_in_place(iovecs);
            let (fd, resfd) = (iocb.aio_fildes, iocb.aio_resfd);
            self.fill_iocb(slot, fd, resfd);
        }
        outcome
    }

    /// Fills `slot`'s iocb for the next step of its operation: what its transfer has left, from its offset.
    fn fill_iocb(&mut self, slot: usize, fd: u32, resfd: u32) {
        let (Some(iocb), Some(iovecs), Some(&(_, kind, _)), Some(transfer)) = (
            self.iocbs.get_mut(slot),
            self.iovecs.get(slot),
            self.ops.get(slot),
            self.transfers.get(slot),
        ) else {
            return;
        };
        let rest = iovecs.get(transfer.first_buffer()..).unwrap_or(&[]);
        let (opcode, buf, nbytes) = match (kind, rest) {
            (OpKind::SyncData, _) => (IOCB_CMD_FDSYNC, 0, 0),
            (OpKind::Read, [one]) => (
                IOCB_CMD_PREAD,
                one.iov_base as usize as u64,
                one.iov_len as u64,
            ),
            (OpKind::Write, [one]) => (
                IOCB_CMD_PWRITE,
                one.iov_base as usize as u64,
                one.iov_len as u64,
            ),
            (OpKind::Read, many) => (
                IOCB_CMD_PREADV,
                many.as_ptr() as usize as u64,
                many.len() as u64,
            ),
            (OpKind::Write, many) => (
                IOCB_CMD_PWRITEV,
                many.as_ptr() as usize as u64,
                many.len() as u64,
            ),
        };
        *iocb = Iocb {
            aio_data: slot as u64,
            aio_lio_opcode: opcode,
            aio_fildes: fd,
            aio_buf: buf,
            aio_nbytes: nbytes,
            aio_offset: i64::try_from(transfer.offset()).unwrap_or(i64::MAX),
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: resfd,
            ..Iocb::default()
        };
    }

    /// The address of the first iocb; slot `i`'s is `base.wrapping_add(i)`. Taken once per `io_submit`, so
    /// every pointer of one call derives from the same borrow.
    pub(crate) fn iocb_base(&mut self) -> *mut Iocb {
        self.iocbs.as_mut_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_buffer_uses_pread_and_many_use_preadv() {
        let mut table = SlotTable::new(2);
        let a = table.take_free().unwrap(); // a fresh table has free slots
        let data: &'static mut [u8] = Box::leak(Box::new([0u8; 8]));
        let bufs = [IoBufMut::from(data)];
        let op = HostOp::Read {
            file: 0,
            offset: 512,
            bufs: &bufs,
        };
        copy_iovecs(&op, table.iovecs_mut(a).unwrap()); // `a` exists
        table.prepare(a, 7, OpKind::Read, 0, 512, 3, 9);
        let iocb = table.iocbs[a];
        assert_eq!(iocb.aio_lio_opcode, IOCB_CMD_PREAD);
        assert_eq!(iocb.aio_nbytes, 8);
        assert_eq!(iocb.aio_offset, 512);
        assert_eq!(iocb.aio_resfd, 9);
        assert_eq!(iocb.aio_flags, IOCB_FLAG_RESFD);

        let b = table.take_free().unwrap(); // two slots
        assert!(table.take_free().is_none());
        let mut queued = QueuedOp {
            user_data: 8,
            kind: OpKind::Write,
            file: 0,
            offset: 0,
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                3
            ],
        };
        table.load(b, &mut queued, 3, 9);
        assert_eq!(table.iocbs[b].aio_lio_opcode, IOCB_CMD_PWRITEV);
        assert_eq!(table.iocbs[b].aio_nbytes, 3);
        assert_eq!(table.op(b), Some((8, OpKind::Write, 0)));
        assert_eq!(table.step(b, Ok(0), |_| None), Some(Ok(0)));
        table.release(b);
        table.release(b);
        assert!(!table.is_taken(b));
        assert!(table.is_taken(a));
        assert_eq!(table.take_free(), Some(b));
    }

    /// A short event sends the rest from where it stopped; what ends the operation is blk-core's rule.
    #[test]
    fn a_short_event_fills_the_iocb_for_the_rest() {
        let mut table = SlotTable::new(1);
        let slot = table.take_free().unwrap(); // a fresh table has a free slot
        let data: &'static mut [u8] = Box::leak(Box::new([0u8; 300]));
        let base = data.as_mut_ptr() as u64;
        let (a, rest) = data.split_at_mut(100);
        let bufs = [IoBufMut::from(a), IoBufMut::from(rest)];
        let op = HostOp::Read {
            file: 2,
            offset: 4096,
            bufs: &bufs,
        };
        for (error, file_len, outcome) in [
            // The file goes on past where the read stopped: the read's error.
            (libc::EIO, 1 << 20, Err(libc::EIO)),
            // The file ends where the read stopped: the bytes so far.
            (libc::EINVAL, 4096 + 150, Ok(150)),
        ] {
            copy_iovecs(&op, table.iovecs_mut(slot).unwrap()); // `slot` exists
            table.prepare(slot, 7, OpKind::Read, 2, 4096, 3, 9);
            assert_eq!(table.iocbs[slot].aio_lio_opcode, IOCB_CMD_PREADV);
            assert_eq!(table.iocbs[slot].aio_nbytes, 2);
            assert_eq!(table.step(slot, Ok(150), |_| None), None);
            let iocb = table.iocbs[slot];
            assert_eq!(iocb.aio_lio_opcode, IOCB_CMD_PREAD);
            assert_eq!((iocb.aio_buf, iocb.aio_nbytes), (base + 150, 150));
            assert_eq!(
                (iocb.aio_offset, iocb.aio_fildes, iocb.aio_resfd),
                (4096 + 150, 3, 9)
            );
            assert_eq!(iocb.aio_data, slot as u64);
            let asked = std::cell::Cell::new(None);
            let result = table.step(slot, Err(error), |file| {
                asked.set(Some(file));
                Some(file_len)
            });
            assert_eq!(result, Some(outcome));
            assert_eq!(asked.get(), Some(2));
        }
    }
}
