//! One virtqueue's worker: turns descriptor chains into requests on the queue's own blk queue
//! ([`GuestQueue`] on a clone of the disk: guest memory goes to the kernel without a copy, and pages a read
//! wrote are marked in the dirty log), and completes them into the used ring.
//!
//! Reads, writes and flushes are asynchronous: a kick parses every available chain, submits them as one batch,
//! and their completions come back on the queue's eventfd (watched by the same worker thread). `GET_ID`,
//! discard and write-zeroes are served at once (rare, and discard's ranges may be many). Refused chains get
//! their status at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blk_factory::{
    AsyncDiskFile, Completion, GuestIoVec, GuestOp, GuestQueue, GuestRequest, RequestFlags,
};
use vhost_user_backend::VringT;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::backend::{Device, GuestMemory, Vring};
use crate::chain::walk_chain;
use crate::request::{
    parse_range, parse_request, write_data, write_status, RequestKind, Segment, ID_LEN,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};

/// What a chain became.
pub(crate) enum Accepted {
    /// Answered already: return it as used with this length.
    Done(u32),
    /// Staged for the next submission.
    Queued,
}

/// A request submitted and not completed.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    head: u16,
    status_addr: GuestAddress,
    /// Used length on success (data bytes written into the chain + the status byte).
    used_len: u32,
    /// Whether it is a flush (see [`QueueWorker::flushing`]).
    flush: bool,
}

/// A request parsed in this batch, waiting for submission.
#[derive(Debug, Clone, Copy)]
struct Staged {
    slot: u32,
    kind: RequestKind,
    iovecs: (usize, usize),
}

/// A virtqueue's worker state, reused from batch to batch.
pub(crate) struct QueueWorker {
    disk: Box<dyn AsyncDiskFile>,
    queue: Option<GuestQueue<GuestMemory>>,
    depth: u32,
    chain: Vec<Segment>,
    data: Vec<Segment>,
    iovecs: Vec<GuestIoVec>,
    staged: Vec<Staged>,
    /// The allocation of the batch handed to the blk queue, reused (empty between batches).
    batch: Vec<GuestRequest<'static>>,
    slots: Vec<InFlight>,
    free: Vec<u32>,
    completions: Vec<Completion>,
    /// Flushes submitted and not completed.
    flushes: usize,
    /// This queue's vring, known from its first event.
    pub(crate) vring: Option<Vring>,
    /// How long the queue thread polls the ring before it sleeps (see `poll`).
    pub(crate) poll: crate::poll::PollWindow,
    /// Whether the last submission's requests had all completed by the time it returned.
    pub(crate) completes_inline: bool,
    /// The connection's `VHOST_F_LOG_ALL`: completed reads mark the dirty log only while it is set.
    log_all: Arc<AtomicBool>,
}

impl std::fmt::Debug for QueueWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWorker")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl QueueWorker {
    pub(crate) fn new(
        device: &Device,
        log_all: Arc<AtomicBool>,
    ) -> blk_factory::Result<QueueWorker> {
        let depth = u32::from(device.queue_size);
        Ok(QueueWorker {
            disk: device.disk.try_clone_async()?,
            queue: None,
            depth,
            chain: Vec::with_capacity(device.limits.max_segments + 1),
            data: Vec::with_capacity(device.limits.max_segments),
            iovecs: Vec::new(),
            staged: Vec::with_capacity(depth as usize),
            batch: Vec::with_capacity(depth as usize),
            slots: vec![
                InFlight {
                    head: 0,
                    status_addr: GuestAddress(0),
                    used_len: 0,
                    flush: false,
                };
                depth as usize
            ],
            free: (0..depth).rev().collect(),
            completions: Vec::with_capacity(depth as usize),
            flushes: 0,
            vring: None,
            poll: crate::poll::PollWindow::new(device.poll_max),
            completes_inline: false,
            log_all,
        })
    }

    /// Requests submitted and not completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Requests staged for the next [`submit`](QueueWorker::submit).
    pub(crate) fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Whether a flush is in flight (driver notifications then stay on: see `poll`).
    pub(crate) fn flushing(&self) -> bool {
        self.flushes > 0
    }

    /// The blk queue for `memory`, made on first use (returns whether it was just made, so the caller watches
    /// its eventfd); later memory tables replace the memory it translates with.
    pub(crate) fn ensure_queue(&mut self, memory: Arc<GuestMemory>) -> blk_factory::Result<bool> {
        match &mut self.queue {
            Some(queue) => {
                if !Arc::ptr_eq(queue.memory(), &memory) {
                    queue.set_memory(memory);
                }
                Ok(false)
            }
            None => {
                let mut queue = GuestQueue::new(self.disk.create_async_io(self.depth)?, memory)?;
                queue.set_dirty_log(Arc::clone(&self.log_all));
                self.queue = Some(queue);
                Ok(true)
            }
        }
    }

    /// The eventfd completions are signalled on (once the queue exists).
    pub(crate) fn notifier(&self) -> Option<&blk_factory::EventFd> {
        self.queue.as_ref().map(|q| q.notifier())
    }

    /// Parses one chain: answers it at once or stages it for [`submit`](QueueWorker::submit).
    /// `head` is the chain's first descriptor in the descriptor table `table` (its guest address and size).
    pub(crate) fn accept<M>(
        &mut self,
        device: &Device,
        mem: &M,
        head: u16,
        table: (GuestAddress, u16),
    ) -> Accepted
    where
        M: GuestMemoryBackend,
    {
        let limits = &device.limits;
        self.chain.clear();
        let mut last = None;
        let chain = &mut self.chain;
        walk_chain(mem, table.0, table.1, head, |segment| {
            // Past the limit only the last descriptor (the status byte) is kept: the parser refuses the chain
            // as too long and still has a status to answer with. The walk itself stops after the table's
            // size, so a looping chain ends too.
            if chain.len() <= limits.max_segments {
                chain.push(segment);
            } else {
                last = Some(segment);
            }
        });
        if let Some(last) = last {
            self.chain.push(last);
        }
        let request = match parse_request(mem, &self.chain, limits, &mut self.data) {
            Ok(request) => request,
            Err(rejection) => {
                log::debug!("request refused: {}", rejection.reason);
                return Accepted::Done(match rejection.status_addr {
                    Some(addr) if write_status(mem, addr, rejection.status) => 1,
                    _ => 0,
                });
            }
        };
        let used_len = match request.kind {
            RequestKind::Read { .. } | RequestKind::Write { .. } | RequestKind::Flush
                if self.queue.is_some() =>
            {
                let Some(slot) = self.free.pop() else {
                    // More chains than the virtqueue's size cannot be in flight; a frontend that made the ring
                    // lie about it gets an error.
                    return self.finish_now(mem, request.status_addr, VIRTIO_BLK_S_IOERR, 0);
                };
                let start = self.iovecs.len();
                if !matches!(request.kind, RequestKind::Flush) {
                    self.iovecs.extend(
                        self.data
                            .iter()
                            .map(|s| GuestIoVec::new(GuestAddress(s.addr), s.len as usize)),
                    );
                }
                let data = match request.kind {
                    RequestKind::Read { .. } => len_of(request.kind),
                    _ => 0,
                };
                self.slots[slot as usize] = InFlight {
                    head,
                    status_addr: request.status_addr,
                    // data <= max_data_bytes, far below u32::MAX.
                    used_len: u32::try_from(data).unwrap_or(u32::MAX - 1) + 1,
                    flush: matches!(request.kind, RequestKind::Flush),
                };
                if matches!(request.kind, RequestKind::Flush) {
                    self.flushes += 1;
                }
                self.staged.push(Staged {
                    slot,
                    kind: request.kind,
                    iovecs: (start, self.iovecs.len()),
                });
                return Accepted::Queued;
            }
            kind => self.serve_now(device, mem, kind),
        };
        let (status, written) = used_len;
        self.finish_now(mem, request.status_addr, status, written)
    }

    fn finish_now<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        status_addr: GuestAddress,
        status: u8,
        written: u64,
    ) -> Accepted {
        if !write_status(mem, status_addr, status) {
            return Accepted::Done(0);
        }
        Accepted::Done(u32::try_from(written).unwrap_or(u32::MAX - 1) + 1)
    }

    /// Serves `GET_ID`, discard and write-zeroes (and anything before the queue exists) synchronously; returns
    /// the status and the data bytes written into the chain.
    fn serve_now<M: GuestMemoryBackend>(
        &mut self,
        device: &Device,
        mem: &M,
        kind: RequestKind,
    ) -> (u8, u64) {
        let disk = &self.disk;
        let ioerr = |what: &str, e: &dyn std::fmt::Display| {
            log::warn!("{what}: {e}");
            (VIRTIO_BLK_S_IOERR, 0)
        };
        match kind {
            RequestKind::GetId { len } => {
                let mut id = [0u8; ID_LEN];
                let n = device.serial.len().min(ID_LEN);
                id[..n].copy_from_slice(&device.serial[..n]);
                let n = ID_LEN.min(usize::try_from(len).unwrap_or(ID_LEN));
                match write_data(mem, &self.data, 0, &id[..n]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n as u64),
                    Err(e) => ioerr("GET_ID", &e),
                }
            }
            RequestKind::Discard { count } | RequestKind::WriteZeroes { count } => {
                let zeroes = matches!(kind, RequestKind::WriteZeroes { .. });
                for i in 0..count {
                    let range = match parse_range(mem, &self.data, i, zeroes, &device.limits) {
                        Ok(range) => range,
                        Err(status) => return (status, 0),
                    };
                    if range.len == 0 {
                        continue;
                    }
                    let result = if zeroes {
                        disk.write_zeroes(range.offset, range.len, range.unmap)
                    } else {
                        disk.discard(range.offset, range.len)
                    };
                    if let Err(e) = result {
                        return ioerr("discard or write-zeroes", &e);
                    }
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            RequestKind::Flush => match disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => ioerr("flush", &e),
            },
            RequestKind::Read { offset, len } => {
                // Only before the blk queue exists (no memory table yet: the parser refused any data).
                let mut buf = vec![0u8; len as usize];
                if let Err(e) = disk.read_exact_at(offset, &mut buf) {
                    return ioerr("read", &e);
                }
                match write_data(mem, &self.data, 0, &buf) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len),
                    Err(e) => ioerr("read into guest memory", &e),
                }
            }
            RequestKind::Write { offset, len } => {
                let mut buf = vec![0u8; len as usize];
                if let Err(e) = crate::request::read_data(mem, &self.data, 0, &mut buf) {
                    return ioerr("write from guest memory", &e);
                }
                match disk.write_all_at(offset, &buf) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => ioerr("write", &e),
                }
            }
        }
    }

    /// Submits what [`accept`](QueueWorker::accept) staged, as one batch.
    pub(crate) fn submit(&mut self, device: &Device) {
        if self.staged.is_empty() {
            return;
        }
        let writethrough = !device.writeback.load(Ordering::Relaxed);
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        let iovecs = &self.iovecs;
        let mut batch = recycle(std::mem::take(&mut self.batch));
        batch.extend(self.staged.iter().map(|s| {
            let v = &iovecs[s.iovecs.0..s.iovecs.1];
            let user_data = u64::from(s.slot);
            match s.kind {
                RequestKind::Read { offset, .. } => {
                    GuestRequest::new(user_data, GuestOp::Read { offset, iovecs: v })
                }
                RequestKind::Write { offset, .. } => {
                    let r = GuestRequest::new(user_data, GuestOp::Write { offset, iovecs: v });
                    if writethrough {
                        r.with_flags(RequestFlags::FUA)
                    } else {
                        r
                    }
                }
                _ => GuestRequest::new(user_data, GuestOp::Flush),
            }
        }));
        let submitted = queue.submit(&batch);
        let count = batch.len();
        self.batch = recycle(batch);
        if let Err(e) = submitted {
            // The queue refused the whole batch: fail each request (completed by `fail_staged`).
            log::warn!("submitting {count} requests: {e}");
            self.fail_staged();
        }
        self.staged.clear();
        self.iovecs.clear();
    }

    fn fail_staged(&mut self) {
        let failed: Vec<u32> = self.staged.iter().map(|s| s.slot).collect();
        for slot in failed {
            self.completions.push(Completion {
                user_data: u64::from(slot),
                result: Err(blk_factory::Error::new(
                    blk_factory::ErrorKind::Io,
                    "the queue refused the batch",
                )),
            });
        }
    }

    /// Submits what is staged and completes what finished into `vring`; returns whether it completed any, and
    /// notes whether the submission completed whole before it returned.
    pub(crate) fn submit_and_complete<M: GuestMemoryBackend>(
        &mut self,
        device: &Device,
        mem: &M,
        vring: &Vring,
    ) -> bool {
        let submitted = self.staged.len();
        self.submit(device);
        let completed = self.complete(mem, vring);
        if submitted > 0 {
            self.completes_inline = self.in_flight() == 0;
        }
        completed > 0
    }

    /// Completes every finished request into `vring` (status byte, used entry); returns how many.
    pub(crate) fn complete<M: GuestMemoryBackend>(&mut self, mem: &M, vring: &Vring) -> usize {
        if let Some(queue) = self.queue.as_mut() {
            while let Some(c) = queue.next_completed_request() {
                self.completions.push(c);
            }
        }
        let n = self.completions.len();
        // Taken and put back, so its capacity is reused: no allocation per batch.
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            self.finish(mem, vring, c);
        }
        self.completions = completions;
        n
    }

    fn finish<M: GuestMemoryBackend>(&mut self, mem: &M, vring: &Vring, c: Completion) {
        let Ok(slot) = u32::try_from(c.user_data) else {
            return;
        };
        let Some(entry) = self.slots.get(slot as usize).copied() else {
            return;
        };
        let (status, used) = match &c.result {
            Ok(_) => (VIRTIO_BLK_S_OK, entry.used_len),
            Err(e) => {
                log::warn!("request failed: {e}");
                (VIRTIO_BLK_S_IOERR, 1)
            }
        };
        let used = if write_status(mem, entry.status_addr, status) {
            used
        } else {
            0
        };
        if let Err(e) = vring.add_used(entry.head, used) {
            log::warn!("returning a used chain: {e}");
        }
        if entry.flush {
            self.flushes = self.flushes.saturating_sub(1);
        }
        self.free.push(slot);
    }

    /// Waits until nothing is in flight, completing into `vring` (shutdown and `GET_VRING_BASE`).
    pub(crate) fn wait_idle<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        vring: &Vring,
        timeout: Duration,
    ) {
        let deadline = std::time::Instant::now() + timeout;
        while self.in_flight() > 0 && std::time::Instant::now() < deadline {
            if let Some(queue) = self.queue.as_mut() {
                let mut done = Vec::new();
                if queue
                    .wait(1, Some(Duration::from_millis(100)), &mut done)
                    .is_err()
                {
                    break;
                }
                self.completions.extend(done);
            } else {
                break;
            }
            self.complete(mem, vring);
        }
    }
}

/// An empty batch with `v`'s allocation, for requests of another lifetime (the standard library collects in
/// place for an element type of the same layout, so nothing is allocated after the first batch).
// `filter_map` to `None` on purpose: the element type changes (its lifetime), which `filter` cannot do.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<GuestRequest<'_>>) -> Vec<GuestRequest<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

fn len_of(kind: RequestKind) -> u64 {
    match kind {
        RequestKind::Read { len, .. } | RequestKind::Write { len, .. } => len,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_their_allocation() {
        let v: Vec<GuestRequest<'static>> = Vec::with_capacity(32);
        let ptr = v.as_ptr() as usize;
        let again: Vec<GuestRequest<'_>> = recycle(v);
        assert!(again.capacity() >= 32);
        assert_eq!(again.as_ptr() as usize, ptr);
    }
}
