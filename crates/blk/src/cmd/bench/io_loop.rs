//! One queue's share of a bench run: buffers allocated once, requests submitted in batches on an [`AsyncIo`]
//! queue, completions reaped by [`AsyncIo::wait`] (which sleeps in the backend's own wait where it can, else
//! on the queue's eventfd), and qemu-img bench's flush rule.
//!
//! The loop mirrors qemu-img's `bench_cb`: each completion is handled in turn (counting what is left, maybe
//! issuing a flush, then refilling the queue up to its depth), but everything those completions ask for goes
//! to the queue as one batch, after every ready completion was reaped.

use std::sync::atomic::{AtomicBool, Ordering};

use blk_core::{
    AsyncDiskFile, AsyncIo, Completion, Error, ErrorKind, IoBuf, IoBufMut, Request, RequestFlags,
    RequestOp, Result,
};

use super::offsets::OffsetSequence;

/// The alignment of the request buffers: O_DIRECT queues refuse misaligned buffers.
pub const BUFFER_ALIGN: usize = 4096;

/// The most buffer memory one queue may use (depth x buffer size): 1 GiB. qemu-img has no cap (it fails to
/// allocate, or aborts); blk refuses such a run up front.
pub const MAX_BUFFER_MEMORY: u64 = 1 << 30;

/// `user_data` of a flush the queue was drained for (qemu-img's default).
const FLUSH_DRAINED: u64 = u64::MAX;
/// `user_data` of a flush issued while requests are in flight (`--no-drain`).
const FLUSH_UNDRAINED: u64 = u64::MAX - 1;

/// qemu-img bench's `--flush-interval` rule.
#[derive(Debug, Clone, Copy)]
pub struct FlushRule {
    /// A flush after every this many requests; 0: never.
    pub interval: u64,
    /// Wait until every request before the flush completed, and submit nothing while it runs (qemu's
    /// default; `--no-drain` clears it).
    pub drain: bool,
    /// Whether flushes reach the disk: false for `-t unsafe`, where QEMU ignores them (they complete at once).
    pub submit: bool,
}

/// What one queue does.
#[derive(Debug, Clone)]
pub struct QueueJob {
    /// Requests to complete.
    pub count: u64,
    /// Requests in flight at most.
    pub depth: u64,
    /// Bytes per request.
    pub buffer_size: usize,
    /// Writes (of `pattern`) instead of reads.
    pub write: bool,
    /// The byte every write buffer holds.
    pub pattern: u8,
    /// Where the requests go.
    pub offsets: OffsetSequence,
    /// When to flush.
    pub flush: FlushRule,
    /// Writes carry FUA (`-t writethrough` and `-t directsync`).
    pub fua: bool,
}

/// A queue ready to run: its buffers allocated and filled, its `AsyncIo` created.
pub struct PreparedQueue {
    queue: Box<dyn AsyncIo>,
    read_bufs: Vec<[IoBufMut<'static>; 1]>,
    write_bufs: Vec<[IoBuf<'static>; 1]>,
    job: QueueJob,
}

impl PreparedQueue {
    /// Allocates the job's buffers and creates its queue on `disk`.
    pub fn new(disk: &dyn AsyncDiskFile, job: QueueJob) -> Result<PreparedQueue> {
        let slots = job.depth.min(job.count).max(1);
        let memory_len = slots
            .checked_mul(job.buffer_size as u64)
            .filter(|&len| len <= MAX_BUFFER_MEMORY)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{slots} requests of {} bytes in flight need more than blk bench's \
                         {MAX_BUFFER_MEMORY}-byte buffer limit",
                        job.buffer_size
                    ),
                )
            })?;
        // At most MAX_BUFFER_MEMORY (1 GiB), so it fits in usize on the 64-bit hosts blk supports.
        let memory = aligned_leaked_buffer(memory_len as usize, job.pattern);
        let read_bufs: Vec<[IoBufMut<'static>; 1]> = memory
            .chunks_mut(job.buffer_size)
            .map(|chunk| [IoBufMut::from(chunk)])
            .collect();
        let write_bufs = read_bufs.iter().map(|[b]| [b.as_io_buf()]).collect();
        // Drained flushes add one request in flight; undrained ones may add one per completion at the end.
        let extra = match (job.flush.interval, job.flush.drain) {
            (0, _) => 0,
            (_, true) => 1,
            (_, false) => slots,
        };
        let ring_depth = u32::try_from(slots + extra).unwrap_or(u32::MAX);
        let mut queue = disk.create_async_io(ring_depth)?;
        // Registered with the backend (io_uring's fixed buffers), as a VMM registers guest memory: the kernel
        // then pins the pages once, not per request. A backend without registration just says no.
        let regions: Vec<IoBufMut<'static>> = read_bufs.iter().map(|[b]| *b).collect();
        // SAFETY: the buffers are leaked (`aligned_leaked_buffer`): they stay mapped for the rest of the
        // process, beyond the queue's life.
        unsafe { queue.register_memory(&regions) }?;
        Ok(PreparedQueue {
            queue,
            read_bufs,
            write_bufs,
            job,
        })
    }

    /// Runs the job to the end, or until `stop` is set (another queue failed). A failed request ends the run
    /// with "Failed request: ...", as in qemu-img.
    pub fn run(self, stop: &AtomicBool) -> Result<()> {
        let PreparedQueue {
            mut queue,
            read_bufs,
            write_bufs,
            job,
        } = self;
        let mut driver = Driver::new(&read_bufs, &write_bufs, job);
        let mut done = Vec::with_capacity(read_bufs.len() + 1);
        driver.fill();
        while driver.remaining > 0 || driver.flushes_in_flight > 0 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !driver.batch.is_empty() {
                queue.submit(&driver.batch)?;
                driver.batch.clear();
            }
            // Everything ready, or (nothing being) a sleep until something is: in the backend's own wait
            // where the queue can, else on its eventfd.
            let min = usize::from(queue.in_flight() > 0);
            queue.wait(min, None, &mut done)?;
            for completion in done.drain(..) {
                driver.complete(completion)?;
            }
        }
        Ok(())
    }
}

/// The loop's state; `'a` is the life of the buffers the batch's requests point to.
struct Driver<'a> {
    read_bufs: &'a [[IoBufMut<'static>; 1]],
    write_bufs: &'a [[IoBuf<'static>; 1]],
    job: QueueJob,
    /// Requests not completed yet (qemu's `n`).
    remaining: u64,
    /// Data requests submitted and not completed.
    in_flight: u64,
    flushes_in_flight: u64,
    /// Buffer slots not in use.
    free: Vec<usize>,
    /// The next batch to submit.
    batch: Vec<Request<'a>>,
}

impl<'a> Driver<'a> {
    fn new(
        read_bufs: &'a [[IoBufMut<'static>; 1]],
        write_bufs: &'a [[IoBuf<'static>; 1]],
        job: QueueJob,
    ) -> Driver<'a> {
        let slots = read_bufs.len();
        Driver {
            read_bufs,
            write_bufs,
            remaining: job.count,
            in_flight: 0,
            flushes_in_flight: 0,
            free: (0..slots).rev().collect(),
            batch: Vec::with_capacity(slots * 2 + 1),
            job,
        }
    }

    /// Adds requests to the batch until the queue is full or every request was submitted.
    fn fill(&mut self) {
        while self.remaining > self.in_flight {
            let Some(slot) = self.free.pop() else { break };
            let offset = self.job.offsets.next_offset();
            let op = if self.job.write {
                let Some(bufs) = self.write_bufs.get(slot) else {
                    break;
                };
                RequestOp::Write { offset, bufs }
            } else {
                let Some(bufs) = self.read_bufs.get(slot) else {
                    break;
                };
                RequestOp::Read { offset, bufs }
            };
            let flags = if self.job.write && self.job.fua {
                RequestFlags::FUA
            } else {
                RequestFlags::NONE
            };
            self.batch
                .push(Request::new(slot as u64, op).with_flags(flags));
            self.in_flight += 1;
        }
    }

    /// Handles one completion as qemu-img's `bench_cb` does.
    fn complete(&mut self, completion: Completion) -> Result<()> {
        let done = completion
            .result
            .map_err(|e| Error::new(e.kind(), format!("Failed request: {e}")))?;
        match completion.user_data {
            FLUSH_DRAINED => {
                self.flushes_in_flight -= 1;
                self.fill();
                return Ok(());
            }
            FLUSH_UNDRAINED => {
                self.flushes_in_flight -= 1;
                return Ok(());
            }
            slot => {
                if done != self.job.buffer_size as u64 {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "Failed request: {done} of {} bytes transferred",
                            self.job.buffer_size
                        ),
                    ));
                }
                // Slots come from `free`, so they are below the slot count and fit in usize.
                self.free.push(slot as usize);
            }
        }
        // Requests not submitted yet, counted before this completion (qemu's `remaining`).
        let unsubmitted = self.remaining - self.in_flight;
        self.remaining -= 1;
        self.in_flight -= 1;
        let rule = self.job.flush;
        if rule.interval > 0 && unsubmitted % rule.interval == 0 {
            if self.in_flight == 0 || !rule.drain {
                if rule.submit {
                    let tag = if rule.drain {
                        FLUSH_DRAINED
                    } else {
                        FLUSH_UNDRAINED
                    };
                    self.batch.push(Request::new(tag, RequestOp::Flush));
                    self.flushes_in_flight += 1;
                    if rule.drain {
                        return Ok(());
                    }
                }
                // An ignored flush (`-t unsafe`) completes at once: go on as after its completion.
            } else if rule.drain {
                return Ok(());
            }
        }
        self.fill();
        Ok(())
    }
}

/// `len` bytes filled with `pattern`, aligned to [`BUFFER_ALIGN`], that live for the rest of the process:
/// asynchronous requests take `'static` buffers, and `blk bench` allocates them once per queue and exits after
/// the run.
fn aligned_leaked_buffer(len: usize, pattern: u8) -> &'static mut [u8] {
    let memory: &'static mut [u8] = Box::leak(vec![pattern; len + BUFFER_ALIGN].into_boxed_slice());
    let skip = memory.as_ptr().align_offset(BUFFER_ALIGN).min(BUFFER_ALIGN);
    let (_, aligned) = memory.split_at_mut(skip);
    let (aligned, _) = aligned.split_at_mut(len);
    aligned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_filled() {
        for len in [1, 4096, 3 * 4096 + 17] {
            let buf = aligned_leaked_buffer(len, 0xa5);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % BUFFER_ALIGN, 0);
            assert!(buf.iter().all(|&b| b == 0xa5));
        }
    }
}
