//! [`MappedQueue`](crate::MappedQueue)'s bookkeeping: the guest requests in flight ([`SlotTable`]), the host
//! operations serving them ([`HostOpTable`]) and the flushes waiting for earlier requests ([`FlushBarriers`]).
//!
//! All three reuse their storage: once they have grown to the queue's working set, serving a request allocates
//! nothing.

use std::collections::VecDeque;

use crate::async_io::Completion;
use crate::buffer::IoBufMut;
use crate::error::Error;
use crate::mapper::AllocationLink;

/// One guest request in flight.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The request's `user_data`.
    pub(crate) user_data: u64,
    /// Submission order on this queue (flushes wait for smaller ones).
    pub(crate) seq: u64,
    /// Host operations (or pool jobs) not yet finished.
    pub(crate) outstanding: u32,
    /// The result on success: the request's bytes (0 for flush, discard, write-zeroes).
    pub(crate) bytes: u64,
    /// The first error of any piece.
    pub(crate) error: Option<Error>,
    /// A read's buffer list, to zero-fill the tail of a short host read (capacity reused).
    pub(crate) bufs: Vec<IoBufMut<'static>>,
    /// Whether a later flush waits for it: everything but reads (a flush orders only what changes the
    /// disk).
    pub(crate) ordered: bool,
    /// A FUA write: complete only once a flush after its data has finished.
    pub(crate) fua: bool,
    in_use: bool,
}

impl Slot {
    /// Records a piece's error; the first one wins.
    pub(crate) fn fail(&mut self, error: Error) {
        self.error.get_or_insert(error);
    }
}

/// The guest requests in flight, indexed by slot number.
#[derive(Debug, Default)]
pub(crate) struct SlotTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Live slots that later flushes wait for.
    live_ordered: usize,
    next_seq: u64,
}

impl SlotTable {
    /// A table with room for `depth` requests before it grows.
    pub(crate) fn with_capacity(depth: usize) -> SlotTable {
        SlotTable {
            slots: Vec::with_capacity(depth),
            free: Vec::with_capacity(depth),
            live: 0,
            live_ordered: 0,
            next_seq: 0,
        }
    }

    /// Takes a free slot for a request: `outstanding` pieces, `bytes` on success; `ordered` when later flushes
    /// must wait for it (anything but a read).
    pub(crate) fn acquire(
        &mut self,
        user_data: u64,
        outstanding: u32,
        bytes: u64,
        ordered: bool,
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live += 1;
        self.live_ordered += usize::from(ordered);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                // A queue holds far fewer than 2^32 requests (each one is a pinned guest buffer).
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.user_data = user_data;
            slot.seq = seq;
            slot.outstanding = outstanding;
            slot.bytes = bytes;
            slot.error = None;
            slot.bufs.clear();
            slot.ordered = ordered;
            slot.fua = false;
            slot.in_use = true;
        }
        index
    }

    /// The slot `index`, when it is in use.
    pub(crate) fn get_mut(&mut self, index: u32) -> Option<&mut Slot> {
        self.slots.get_mut(index as usize).filter(|s| s.in_use)
    }

    /// Frees slot `index`; returns its completion, its sequence number and whether later flushes waited for
    /// it.
    pub(crate) fn release(&mut self, index: u32) -> Option<(Completion, u64, bool)> {
        let slot = self.slots.get_mut(index as usize).filter(|s| s.in_use)?;
        slot.in_use = false;
        slot.bufs.clear();
        let result = match slot.error.take() {
            Some(e) => Err(e),
            None => Ok(slot.bytes),
        };
        self.live -= 1;
        self.live_ordered -= usize::from(slot.ordered);
        self.free.push(index);
        Some((
            Completion {
                user_data: slot.user_data,
                result,
            },
            slot.seq,
            slot.ordered,
        ))
    }

    /// Requests in flight.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Requests in flight that a flush submitted now waits for.
    pub(crate) fn live_ordered(&self) -> usize {
        self.live_ordered
    }
}

/// One host operation in flight: which part of which request it serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostOpRecord {
    /// The guest request's slot.
    pub(crate) slot: u32,
    /// Where the piece starts within the request.
    pub(crate) start: u64,
    /// The piece's length.
    pub(crate) len: u64,
    /// The host file index and offset, for error messages.
    pub(crate) file: usize,
    pub(crate) host_offset: u64,
    /// Whether it is a read (else a write).
    pub(crate) read: bool,
    /// For a write into a fresh allocation: what to hand to the mapper when it finishes.
    pub(crate) link: Option<AllocationLink>,
    /// For the read of an encoded piece: its index in the queue's `EncodedReads`.
    pub(crate) encoded: Option<u32>,
}

impl HostOpRecord {
    /// A read of `len` bytes at `host_offset` of host file `file` into the request in `slot`, from `start`.
    pub(crate) fn read(slot: u32, start: u64, len: u64, file: usize, host_offset: u64) -> Self {
        HostOpRecord {
            slot,
            start,
            len,
            file,
            host_offset,
            read: true,
            link: None,
            encoded: None,
        }
    }

    /// A write of `len` bytes of the request in `slot`, from `start`, at `host_offset` of host file `file`
    /// (into a fresh allocation to link when `link` is given).
    pub(crate) fn write(
        slot: u32,
        start: u64,
        len: u64,
        file: usize,
        host_offset: u64,
        link: Option<AllocationLink>,
    ) -> Self {
        HostOpRecord {
            read: false,
            link,
            ..HostOpRecord::read(slot, start, len, file, host_offset)
        }
    }
}

/// The host operations in flight, indexed by the `user_data` given to the host queue.
#[derive(Debug, Default)]
pub(crate) struct HostOpTable {
    ops: Vec<Option<HostOpRecord>>,
    free: Vec<u32>,
}

impl HostOpTable {
    /// A table with room for `depth` operations before it grows.
    pub(crate) fn with_capacity(depth: usize) -> HostOpTable {
        HostOpTable {
            ops: Vec::with_capacity(depth),
            free: Vec::with_capacity(depth),
        }
    }

    /// Records an operation; returns its index (the host queue's `user_data`).
    pub(crate) fn insert(&mut self, record: HostOpRecord) -> u64 {
        match self.free.pop() {
            Some(i) => {
                if let Some(entry) = self.ops.get_mut(i as usize) {
                    *entry = Some(record);
                }
                u64::from(i)
            }
            None => {
                self.ops.push(Some(record));
                (self.ops.len() - 1) as u64
            }
        }
    }

    /// Takes the record of operation `index` out of the table.
    pub(crate) fn remove(&mut self, index: u64) -> Option<HostOpRecord> {
        let i = u32::try_from(index).ok()?;
        let record = self.ops.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(record)
    }
}

/// A flush waiting for the requests submitted before it.
#[derive(Debug, Clone, Copy)]
struct WaitingFlush {
    slot: u32,
    seq: u64,
    waiting: usize,
}

/// The flushes waiting for earlier requests to complete, in submission order.
#[derive(Debug, Default)]
pub(crate) struct FlushBarriers {
    waiting: VecDeque<WaitingFlush>,
}

impl FlushBarriers {
    /// A flush in slot `slot` (sequence `seq`) waits for `waiting` requests in flight before it.
    pub(crate) fn add(&mut self, slot: u32, seq: u64, waiting: usize) {
        self.waiting.push_back(WaitingFlush { slot, seq, waiting });
    }

    /// A request of sequence `seq` completed: flushes submitted after it wait for one request less. Appends
    /// the slots of flushes now free to run to `ready`.
    pub(crate) fn completed(&mut self, seq: u64, ready: &mut Vec<u32>) {
        if self.waiting.is_empty() {
            return;
        }
        for flush in self.waiting.iter_mut() {
            if flush.seq > seq {
                flush.waiting = flush.waiting.saturating_sub(1);
                if flush.waiting == 0 {
                    ready.push(flush.slot);
                }
            }
        }
        self.waiting.retain(|f| f.waiting > 0);
    }

    /// Whether no flush is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_ops_are_reused() {
        let mut slots = SlotTable::with_capacity(2);
        let a = slots.acquire(10, 1, 512, false);
        let b = slots.acquire(11, 1, 0, true);
        assert_eq!(slots.live(), 2);
        if let Some(s) = slots.get_mut(b) {
            s.fail(Error::new(crate::ErrorKind::Io, "x"));
        }
        assert_eq!(slots.live_ordered(), 1);
        let (done, seq, ordered) = slots.release(b).unwrap();
        assert_eq!((done.user_data, seq, ordered), (11, 1, true));
        assert_eq!(slots.live_ordered(), 0);
        assert!(done.result.is_err());
        assert!(slots.release(b).is_none());
        assert_eq!(slots.acquire(12, 1, 0, true), b);
        assert_eq!(slots.release(a).unwrap().0.result.unwrap(), 512);

        let mut ops = HostOpTable::with_capacity(1);
        let rec = HostOpRecord {
            slot: 0,
            start: 0,
            len: 1,
            file: 0,
            host_offset: 0,
            read: true,
            link: None,
            encoded: None,
        };
        let i = ops.insert(rec);
        assert!(ops.remove(i).is_some());
        assert!(ops.remove(i).is_none());
        assert_eq!(ops.insert(rec), i);
    }

    #[test]
    fn flushes_wait_for_earlier_requests_only() {
        let mut barriers = FlushBarriers::default();
        let mut ready = Vec::new();
        barriers.add(7, 5, 2);
        barriers.completed(6, &mut ready);
        barriers.completed(1, &mut ready);
        assert!(ready.is_empty());
        barriers.completed(3, &mut ready);
        assert_eq!(ready, [7]);
        assert!(barriers.is_empty());
    }
}
