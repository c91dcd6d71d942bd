//! [`AioQueue`]: the [`HostQueue`] contract on one kernel AIO context.
//!
//! Operations move through four places, in push order:
//! - `ready`: slots whose iocb is filled and waits for `io_submit`;
//! - `backlog`: operations pushed while every slot was taken (or while older ones still wait here);
//! - in flight: submitted, owned by the kernel until `io_getevents` returns them;
//! - `completions`: reaped (or completed here) and not yet returned by [`HostQueue::next_completion`].
//!
//! `released` counts the operations at the head of `ready` + `backlog` that [`HostQueue::submit`] allowed to go
//! to the kernel: pushes are never sent before the caller submits them, even when reaping frees slots.
//!
//! An event of a read or write is one step of its transfer (blk-core's
//! [`HostTransfer`](blk_core::host_queue::HostTransfer)): when the kernel moved fewer bytes than the iocb asked,
//! the slot's iocb is filled again for the rest and goes back to the head of `ready`, released at once (the
//! caller submitted it already), and goes out with the next `send`; the operation completes only when its
//! transfer says so.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;

use blk_core::{
    Error, ErrorKind, EventFd, HostCompletion, HostFile, HostOp, HostQueue, Operation, Result,
};

use crate::abi::{IoEvent, Iocb};
use crate::context::AioContext;
use crate::slots::{buffer_shape, copy_iovecs, OpKind, QueuedOp, SlotTable};
use crate::MAX_DEPTH;

/// A queue of host I/O on Linux native AIO (see the [crate docs](crate)).
pub struct AioQueue {
    /// Declared first among the kernel-facing fields; [`Drop`] reaps what is in flight before it is destroyed.
    context: AioContext,
    notifier: EventFd,
    /// Our own handles of the queue's files, so their descriptors outlive every operation on them.
    files: Vec<HostFile>,
    /// `files[i]`'s descriptor, as iocbs carry it.
    fds: Vec<u32>,
    /// Files whose filesystem refused `IOCB_CMD_FDSYNC` (`EINVAL`): their syncs run here with `fdatasync`.
    fdsync_refused: Vec<bool>,
    slots: SlotTable,
    ready: VecDeque<usize>,
    backlog: VecDeque<QueuedOp>,
    released: usize,
    /// Operations completed at push time (a bad file index, nothing to transfer), published by the next submit.
    settled_at_push: Vec<HostCompletion>,
    completions: VecDeque<HostCompletion>,
    /// Where `io_getevents` writes: one entry per slot.
    events: Box<[IoEvent]>,
    /// The iocb pointer array of one `io_submit`, reused.
    submit_ptrs: Vec<*mut Iocb>,
    in_flight: usize,
}

// SAFETY: the raw pointers an AioQueue holds (iovec bases, iocb pointers) point into memory the queue owns (its
// slot table, never reallocated) or into caller buffers that the HostQueue contract keeps valid until their
// completion is returned (and IoBuf/IoBufMut are Send). None is tied to a thread: an AIO context and the
// descriptors may be used from any thread of the process, and every use goes through `&mut self`.
unsafe impl Send for AioQueue {}

impl std::fmt::Debug for AioQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioQueue")
            .field("depth", &self.slots.len())
            .field("files", &self.files.len())
            .field("in_flight", &self.in_flight)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// The error for a kernel that refuses AIO contexts.
pub(crate) fn unavailable(e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("Linux AIO is not available: {e}"),
    )
    .with_source(e)
    .with_operation(Operation::Open)
}

impl AioQueue {
    /// A queue of at most `depth` operations in the kernel at once (clamped to `1..=`[`MAX_DEPTH`], and halved
    /// while `fs.aio-max-nr` leaves no room for it) over duplicates of `files`.
    ///
    /// Fails with [`ErrorKind::Unsupported`] when the kernel refuses an AIO context (AIO compiled out, a seccomp
    /// filter, `fs.aio-max-nr` exhausted), so the caller can fall back to another backend.
    pub fn new(files: &[&HostFile], depth: u32) -> Result<AioQueue> {
        let context = AioContext::with_at_most(depth.clamp(1, MAX_DEPTH)).map_err(unavailable)?;
        let depth = context.capacity() as usize;
        let notifier = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| {
            Error::io_while(e, "creating the AIO completion eventfd")
                .with_operation(Operation::Open)
        })?;
        let files = files
            .iter()
            .map(|file| file.try_clone())
            .collect::<Result<Vec<HostFile>>>()?;
        // Descriptors are never negative.
        let fds = files
            .iter()
            .map(|f| u32::try_from(f.as_raw_fd()).unwrap_or(u32::MAX))
            .collect();
        Ok(AioQueue {
            context,
            notifier,
            fdsync_refused: vec![false; files.len()],
            files,
            fds,
            slots: SlotTable::new(depth),
            ready: VecDeque::with_capacity(depth),
            backlog: VecDeque::new(),
            released: 0,
            settled_at_push: Vec::new(),
            completions: VecDeque::with_capacity(depth),
            events: vec![IoEvent::default(); depth].into_boxed_slice(),
            submit_ptrs: Vec::with_capacity(depth),
            in_flight: 0,
        })
    }

    /// The most operations this queue has in the kernel at once.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    fn resfd(&self) -> u32 {
        // Descriptors are never negative.
        u32::try_from(self.notifier.as_raw_fd()).unwrap_or(u32::MAX)
    }

    /// Moves backlogged operations into free slots (they stay queued in `ready`, in order).
    fn refill_from_backlog(&mut self) {
        let resfd = self.resfd();
        while !self.backlog.is_empty() {
            let Some(slot) = self.slots.take_free() else {
                return;
            };
            let Some(mut op) = self.backlog.pop_front() else {
                self.slots.release(slot);
                return;
            };
            let fd = self.fds.get(op.file).copied().unwrap_or(u32::MAX);
            self.slots.load(slot, &mut op, fd, resfd);
            self.ready.push_back(slot);
        }
    }

    /// Completes the operation in `slot` here, not in the kernel.
    fn settle(&mut self, slot: usize, result: std::result::Result<u64, i32>) {
        if let Some((user_data, ..)) = self.slots.op(slot) {
            self.completions
                .push_back(HostCompletion { user_data, result });
        }
        self.slots.release(slot);
    }

    /// `fdatasync` of file `file` on this thread.
    fn sync_here(&self, file: usize) -> std::result::Result<u64, i32> {
        match self.files.get(file) {
            Some(f) => f.sync_data().map(|()| 0).map_err(|e| e.errno()),
            None => Err(libc::EBADF),
        }
    }

    /// Sends the released operations to the kernel: one `io_submit` for all that have slots, more only when the
    /// kernel refuses one (that one then completes with its errno) or accepts part of the batch.
    fn send(&mut self) {
        let before = self.completions.len();
        loop {
            self.refill_from_backlog();
            let n = self.ready.len().min(self.released);
            if n == 0 {
                break;
            }
            let Some(&front) = self.ready.front() else {
                break;
            };
            if let Some((_, OpKind::SyncData, file)) = self.slots.op(front) {
                if self.fdsync_refused.get(file).copied().unwrap_or(false) {
                    self.ready.pop_front();
                    self.released -= 1;
                    let result = self.sync_here(file);
                    self.settle(front, result);
                    continue;
                }
            }
            self.submit_ptrs.clear();
            let base = self.slots.iocb_base();
            self.submit_ptrs.extend(
                self.ready
                    .iter()
                    .take(n)
                    .map(|&slot| base.wrapping_add(slot)),
            );
            // SAFETY: every pointer is `base + slot` for a taken slot (< the table's length) of the slot table's
            // boxed iocb slice, which is never reallocated while the queue lives, and is filled by `prepare`. The
            // buffers and iovec arrays the iocbs name stay valid until their completion is reaped: the iovec
            // arrays belong to the slots (untouched until the slot is released on completion), the buffers to
            // the caller (HostQueue contract); Drop reaps every operation in flight before the memory goes.
            let submitted = unsafe { self.context.submit(&mut self.submit_ptrs) };
            match submitted {
                Ok(0) => break,
                Ok(k) => {
                    self.ready.drain(..k);
                    self.released -= k;
                    self.in_flight += k;
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    if errno == libc::EAGAIN && self.in_flight > 0 {
                        // Out of kernel resources: retried as completions free them.
                        break;
                    }
                    self.ready.pop_front();
                    self.released -= 1;
                    let result = match self.slots.op(front) {
                        Some((_, OpKind::SyncData, file)) if errno == libc::EINVAL => {
                            if let Some(refused) = self.fdsync_refused.get_mut(file) {
                                *refused = true;
                            }
                            self.sync_here(file)
                        }
                        // A refused step of a read or write (the first, or the rest of a short one) ends
                        // it as an event with that errno would.
                        _ => {
                            let files = &self.files;
                            self.slots
                                .step(front, Err(errno), |file| {
                                    files.get(file).and_then(|f| f.len().ok())
                                })
                                .unwrap_or(Err(errno))
                        }
                    };
                    self.settle(front, result);
                }
            }
        }
        self.signal(self.completions.len().saturating_sub(before));
    }

    /// Writes the eventfd for completions produced here rather than by the kernel.
    fn signal(&self, count: usize) {
        if count > 0 {
            // Only fails when the counter would overflow, i.e. it is already signalled.
            let _ = self.notifier.write(count as u64);
        }
    }

    /// Reaps completed operations into `completions`: what is ready, or when `wait`, at least one.
    fn reap(&mut self, wait: bool) -> std::io::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        let n = self
            .context
            .get_events(usize::from(wait), &mut self.events, wait)?;
        for i in 0..n {
            let Some(event) = self.events.get(i).copied() else {
                break;
            };
            let Some(slot) = usize::try_from(event.data)
                .ok()
                .filter(|&s| self.slots.is_taken(s))
            else {
                continue;
            };
            let result = match usize::try_from(event.res) {
                Ok(n) => Ok(n),
                Err(_) => Err(event
                    .res
                    .checked_neg()
                    .and_then(|e| i32::try_from(e).ok())
                    .unwrap_or(libc::EIO)),
            };
            self.in_flight = self.in_flight.saturating_sub(1);
            let files = &self.files;
            match self.slots.step(slot, result, |file| {
                files.get(file).and_then(|f| f.len().ok())
            }) {
                Some(result) => self.settle(slot, result),
                None => {
                    // The rest of a short transfer: it goes out first, with the next `send`, as part of an
                    // operation the caller already submitted.
                    self.ready.push_front(slot);
                    self.released += 1;
                }
            }
        }
        Ok(())
    }
}

impl HostQueue for AioQueue {
    fn push(&mut self, user_data: u64, op: HostOp<'_>) {
        let (kind, file, offset) = QueuedOp::describe(&op);
        let (nbufs, bytes) = buffer_shape(&op);
        let settled = match self.fds.get(file) {
            None => Some(Err(libc::EBADF)),
            Some(_) if i64::try_from(offset).is_err() => Some(Err(libc::EINVAL)),
            Some(_) if kind != OpKind::SyncData && bytes == 0 => Some(Ok(0)),
            Some(_) => None,
        };
        if let Some(result) = settled {
            self.settled_at_push
                .push(HostCompletion { user_data, result });
            return;
        }
        if self.backlog.is_empty() {
            if let Some(slot) = self.slots.take_free() {
                let fd = self.fds.get(file).copied().unwrap_or(u32::MAX);
                let resfd = self.resfd();
                if let Some(iovecs) = self.slots.iovecs_mut(slot) {
                    copy_iovecs(&op, iovecs);
                }
                self.slots
                    .prepare(slot, user_data, kind, file, offset, fd, resfd);
                self.ready.push_back(slot);
                return;
            }
        }
        let mut iovecs = Vec::with_capacity(nbufs);
        copy_iovecs(&op, &mut iovecs);
        self.backlog.push_back(QueuedOp {
            user_data,
            kind,
            file,
            offset,
            iovecs,
        });
    }

    fn submit(&mut self) -> Result<()> {
        self.released = self.ready.len() + self.backlog.len();
        if !self.settled_at_push.is_empty() {
            let count = self.settled_at_push.len();
            self.completions.extend(self.settled_at_push.drain(..));
            self.signal(count);
        }
        self.send();
        Ok(())
    }

    fn next_completion(&mut self) -> Option<HostCompletion> {
        if let Some(done) = self.completions.pop_front() {
            return Some(done);
        }
        // A failed reap (EINTR) leaves the events in the kernel for the next call.
        let _ = self.reap(false);
        if self.released > 0 {
            self.send();
        }
        self.completions.pop_front()
    }

    fn notifier(&self) -> &EventFd {
        &self.notifier
    }

    fn pending(&self) -> usize {
        self.settled_at_push.len()
            + self.ready.len()
            + self.backlog.len()
            + self.in_flight
            + self.completions.len()
    }
}

impl Drop for AioQueue {
    fn drop(&mut self) {
        // The kernel may still write into caller buffers and read our iovec arrays: wait for every operation
        // before the memory and the context go.
        while self.in_flight > 0 {
            match self.reap(true) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // io_destroy (when `context` drops) still waits for what is left.
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk_core::HostOpenOptions;

    /// A filesystem refusing `IOCB_CMD_FDSYNC` is simulated by marking the file: the sync then runs here, and
    /// the queue signals its eventfd itself.
    #[test]
    fn refused_fdsync_runs_fdatasync_here() {
        let dir = tempfile::tempdir().unwrap();
        let file = HostFile::create(dir.path().join("f.img"), HostOpenOptions::default()).unwrap();
        let Ok(mut queue) = AioQueue::new(&[&file], 2) else {
            return; // no AIO on this host
        };
        queue.fdsync_refused[0] = true;
        queue.push(9, HostOp::SyncData { file: 0 });
        queue.submit().unwrap();
        assert_eq!(queue.in_flight, 0);
        assert_eq!(queue.notifier().read().unwrap(), 1);
        assert_eq!(
            queue.next_completion(),
            Some(HostCompletion {
                user_data: 9,
                result: Ok(0)
            })
        );
        assert_eq!(queue.pending(), 0);
        assert_eq!(queue.depth(), 2);
        assert!(format!("{queue:?}").contains("depth: 2"));
    }

    #[test]
    fn depth_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let file = HostFile::create(dir.path().join("f.img"), HostOpenOptions::default()).unwrap();
        let Ok(queue) = AioQueue::new(&[&file], 0) else {
            return;
        };
        assert_eq!(queue.depth(), 1);
        let Ok(queue) = AioQueue::new(&[], u32::MAX) else {
            return;
        };
        assert!(queue.depth() <= MAX_DEPTH as usize);
    }
}
