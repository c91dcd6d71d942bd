//! The slot table: each pushed operation copied into a slot the queue owns, with its progress, until its
//! completion is returned.
//!
//! A slot's buffer list is reused from one operation to the next (no allocation per operation once the table
//! is warm). The kernel reads the iovec array straight from a slot's buffer list, so a slot's lists are never
//! modified while an SQE built from them is in the ring; the table's own `Vec` may grow meanwhile (that moves
//! the `Slot` structs, not the heap arrays the SQEs point into).

use blk_core::buffer::{as_iovecs, as_iovecs_mut};
use blk_core::host_queue::HostTransfer;
use blk_core::{HostOp, IoBuf, IoBufMut};
use io_uring::{opcode, squeue, types};

use crate::fixed_buffers::FixedBuffers;

/// `IOV_MAX`: the most iovecs one `READV`/`WRITEV` takes. Longer lists go out in several SQEs, one after the
/// other.
pub(crate) const MAX_IOVECS_PER_SQE: usize = blk_core::host_queue::IOV_MAX;

/// The most bytes one single-buffer `READ`/`WRITE` SQE asks for (its length field is 32 bits; the kernel
/// transfers at most `MAX_RW_COUNT` anyway and the rest is resubmitted).
const MAX_SINGLE_BUFFER_LEN: usize = 0x7fff_f000;

/// How an SQE names its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileRef {
    /// Index in the ring's registered file table.
    Fixed(u32),
    /// A descriptor the queue owns.
    Fd(i32),
}

/// What a slot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotKind {
    Read,
    Write,
    SyncData,
}

/// One operation between [`HostQueue::push`](blk_core::HostQueue::push) and its completion.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The caller's `user_data`.
    pub(crate) user_data: u64,
    pub(crate) kind: SlotKind,
    /// Index into the queue's files.
    pub(crate) file: usize,
    /// Where a read or write stands: the next offset, the first buffer left, the bytes done (blk-core's rules
    /// on short transfers).
    pub(crate) transfer: HostTransfer,
    /// Destination buffers of a read (the first one left cut as bytes arrive).
    read_bufs: Vec<IoBufMut<'static>>,
    /// Source buffers of a write (likewise).
    write_bufs: Vec<IoBuf<'static>>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            user_data: 0,
            kind: SlotKind::SyncData,
            file: 0,
            transfer: HostTransfer::read(0, 0),
            read_bufs: Vec::new(),
            write_bufs: Vec::new(),
        }
    }

    /// Copies `op` into the slot (buffer lists reuse their capacity).
    fn fill(&mut self, user_data: u64, op: HostOp<'_>) {
        self.user_data = user_data;
        self.read_bufs.clear();
        self.write_bufs.clear();
        match op {
            HostOp::Read { file, offset, bufs } => {
                self.kind = SlotKind::Read;
                self.file = file;
                self.read_bufs.extend_from_slice(bufs);
                self.transfer = HostTransfer::read(offset, blk_core::buffer::total_len_mut(bufs));
            }
            HostOp::Write { file, offset, bufs } => {
                self.kind = SlotKind::Write;
                self.file = file;
                self.write_bufs.extend_from_slice(bufs);
                self.transfer = HostTransfer::write(offset, blk_core::buffer::total_len(bufs));
            }
            HostOp::SyncData { file } => {
                self.kind = SlotKind::SyncData;
                self.file = file;
                self.transfer = HostTransfer::read(0, 0);
            }
        }
    }

    /// Accounts for one finished SQE of a read or write (`result`: bytes or errno): `None` when the operation
    /// goes on (its buffer list is cut to what is left), or its result. `file_len` is asked only when a read
    /// fails after a partial transfer. Called only while no SQE of this slot is in the ring.
    pub(crate) fn step(
        &mut self,
        result: std::result::Result<usize, i32>,
        file_len: impl FnOnce() -> Option<u64>,
    ) -> Option<std::result::Result<u64, i32>> {
        match self.kind {
            SlotKind::Read => {
                let outcome = self.transfer.step(result, &self.read_bufs, file_len);
                self.transfer.cut_in_place(&mut self.read_bufs);
                outcome
            }
            SlotKind::Write => {
                let outcome = self.transfer.step(result, &self.write_bufs, file_len);
                self.transfer.cut_in_place(&mut self.write_bufs);
                outcome
            }
            SlotKind::SyncData => Some(result.map(|_| 0)),
        }
    }

    /// The SQE for the next part of this operation (at most [`MAX_IOVECS_PER_SQE`] buffers), tagged with
    /// `slot_index`, and whether it uses a registered buffer.
    ///
    /// The entry points into this slot's buffer list (for `READV`/`WRITEV`) or into the caller's buffer (for
    /// `READ`/`WRITE` and their `_FIXED` forms, used when the buffer lies inside a region of `fixed`); see the
    /// SAFETY comment where the queue pushes it.
    pub(crate) fn sqe(
        &self,
        slot_index: u32,
        file: FileRef,
        single_buffer_ops: bool,
        fixed: &FixedBuffers,
    ) -> (squeue::Entry, bool) {
        macro_rules! with_file {
            ($fd:ident => $build:expr) => {
                match file {
                    FileRef::Fixed(i) => {
                        let $fd = types::Fixed(i);
                        $build
                    }
                    FileRef::Fd(raw) => {
                        let $fd = types::Fd(raw);
                        $build
                    }
                }
            };
        }
        let mut uses_fixed = false;
        let entry = match self.kind {
            SlotKind::Read => {
                let bufs = self
                    .read_bufs
                    .get(self.transfer.first_buffer()..)
                    .unwrap_or(&[]);
                let bufs = bufs.get(..MAX_IOVECS_PER_SQE).unwrap_or(bufs);
                let registered = match bufs {
                    [one] if one.len() <= MAX_SINGLE_BUFFER_LEN => {
                        fixed.find(one.as_mut_ptr() as usize, one.len())
                    }
                    _ => None,
                };
                match (bufs, registered) {
                    ([one], Some(index)) => {
                        uses_fixed = true;
                        // The cast cannot truncate: the length was checked against MAX_SINGLE_BUFFER_LEN.
                        let len = one.len() as u32;
                        with_file!(fd => opcode::ReadFixed::new(fd, one.as_mut_ptr(), len, index)
                            .offset(self.transfer.offset())
                            .build())
                    }
                    ([one], None) if single_buffer_ops && one.len() <= MAX_SINGLE_BUFFER_LEN => {
                        // The cast cannot truncate: the length was checked against MAX_SINGLE_BUFFER_LEN.
                        let len = one.len() as u32;
                        with_file!(fd => opcode::Read::new(fd, one.as_mut_ptr(), len)
                            .offset(self.transfer.offset())
                            .build())
                    }
                    _ => {
                        let iovecs = as_iovecs_mut(bufs);
                        // The cast cannot truncate: at most MAX_IOVECS_PER_SQE entries.
                        let count = iovecs.len() as u32;
                        with_file!(fd => opcode::Readv::new(fd, iovecs.as_ptr(), count)
                            .offset(self.transfer.offset())
                            .build())
                    }
                }
            }
            SlotKind::Write => {
                let bufs = self
                    .write_bufs
                    .get(self.transfer.first_buffer()..)
                    .unwrap_or(&[]);
                let bufs = bufs.get(..MAX_IOVECS_PER_SQE).unwrap_or(bufs);
                let registered = match bufs {
                    [one] if one.len() <= MAX_SINGLE_BUFFER_LEN => {
                        fixed.find(one.as_ptr() as usize, one.len())
                    }
                    _ => None,
                };
                match (bufs, registered) {
                    ([one], Some(index)) => {
                        uses_fixed = true;
                        // The cast cannot truncate: the length was checked against MAX_SINGLE_BUFFER_LEN.
                        let len = one.len() as u32;
                        with_file!(fd => opcode::WriteFixed::new(fd, one.as_ptr(), len, index)
                            .offset(self.transfer.offset())
                            .build())
                    }
                    ([one], None) if single_buffer_ops && one.len() <= MAX_SINGLE_BUFFER_LEN => {
                        // The cast cannot truncate: the length was checked against MAX_SINGLE_BUFFER_LEN.
                        let len = one.len() as u32;
                        with_file!(fd => opcode::Write::new(fd, one.as_ptr(), len)
                            .offset(self.transfer.offset())
                            .build())
                    }
                    _ => {
                        let iovecs = as_iovecs(bufs);
                        // The cast cannot truncate: at most MAX_IOVECS_PER_SQE entries.
                        let count = iovecs.len() as u32;
                        with_file!(fd => opcode::Writev::new(fd, iovecs.as_ptr(), count)
                            .offset(self.transfer.offset())
                            .build())
                    }
                }
            }
            SlotKind::SyncData => with_file!(fd => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
        };
        (entry.user_data(u64::from(slot_index)), uses_fixed)
    }
}

/// Slots by index, with a free list. Grows as the caller pushes more operations than are completed; slots are
/// reused, never freed, while the queue lives.
#[derive(Debug, Default)]
pub(crate) struct SlotTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl SlotTable {
    /// Copies `op` into a free slot and returns its index, or `None` when the table already has `u32::MAX`
    /// slots (2^32 operations pushed and not returned: not reachable in practice).
    pub(crate) fn insert(&mut self, user_data: u64, op: HostOp<'_>) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot::empty());
                i
            }
        };
        let slot = self.slots.get_mut(index as usize)?;
        slot.fill(user_data, op);
        Some(index)
    }

    /// The slot at `index`, if it exists.
    pub(crate) fn get(&self, index: u32) -> Option<&Slot> {
        self.slots.get(index as usize)
    }

    /// The slot at `index`, if it exists.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut Slot> {
        self.slots.get_mut(index as usize)
    }

    /// Returns slot `index` to the free list; its buffer lists are cleared so they hold no caller pointers.
    pub(crate) fn release(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.read_bufs.clear();
            slot.write_bufs.clear();
            self.free.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_trims_buffers_across_boundaries() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 0];
        let mut c = [0u8; 5];
        let bufs: Vec<IoBufMut<'static>> = [&mut a[..], &mut b[..], &mut c[..]]
            .into_iter()
            .map(|s| {
                // SAFETY: the arrays outlive the slot table and the buffers; nothing is transferred.
                unsafe { IoBufMut::from_raw_parts(s.as_mut_ptr(), s.len()) }
            })
            .collect();
        let mut table = SlotTable::default();
        let i = table
            .insert(
                7,
                HostOp::Read {
                    file: 0,
                    offset: 100,
                    bufs: &bufs,
                },
            )
            .unwrap();
        let slot = table.get_mut(i).unwrap();
        assert_eq!(slot.transfer.remaining(), 8);
        assert_eq!(slot.step(Ok(4), || None), None);
        let t = slot.transfer;
        assert_eq!((t.done(), t.remaining(), t.offset()), (4, 4, 104));
        assert_eq!(t.first_buffer(), 2);
        assert_eq!(slot.read_bufs[2].len(), 4);
        assert_eq!(slot.step(Ok(10), || None), Some(Ok(8)));
        assert_eq!((slot.transfer.done(), slot.transfer.remaining()), (8, 0));
        table.release(i);
        assert_eq!(table.insert(1, HostOp::SyncData { file: 0 }), Some(i));
    }
}
