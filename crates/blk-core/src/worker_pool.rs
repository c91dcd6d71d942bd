//! The worker pool behind [`MappedQueue`](crate::MappedQueue): the pieces its mapper sends to other disks
//! (backing files, parents, data files) or answers [`WriteMapping::Slow`](crate::WriteMapping::Slow) for
//! (copy-on-write, allocations with metadata updates), the decoding of compressed pieces, and whole FUA writes,
//! flushes, discards, write-zeroes and requests O_DIRECT cannot take as mapped, run here through the
//! synchronous path ([`mapped_io`](crate::mapped_io) and the mapper's own methods), several at once,
//! completing out of order.
//!
//! Each thread owns its own handle of the image ([`Mapper::duplicate`]). Jobs wait in one `Mutex<VecDeque>` with a `Condvar`;
//! finished jobs go to a second `Mutex<VecDeque>`, counted by an `AtomicUsize` so the queue's reaping path can
//! look without locking, and each one writes the queue's eventfd (a duplicate of the host queue's).
//!
//! Locks: `jobs` and `done` are never held together, and never across a job's I/O.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::encoded_read::{copy_decoded, DecodeInput};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::mapped_io::{context, mapping_mismatch, read_mapped, write_mapped};
use crate::mapper::Mapper;

/// The most threads one queue's pool starts.
pub const MAX_WORKERS: usize = 4;

/// What a job does, with its own copy of the request's buffer list.
#[derive(Debug)]
pub(crate) enum JobOp {
    /// `read_at(offset, bufs)`.
    Read {
        offset: u64,
        bufs: Vec<IoBufMut<'static>>,
    },
    /// `write_at(offset, bufs)`, then `flush()` when `fua`.
    Write {
        offset: u64,
        bufs: Vec<IoBuf<'static>>,
        fua: bool,
    },
    /// `write_zeroes(offset, len, may_unmap)`.
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
    /// `discard(offset, len)`.
    Discard { offset: u64, len: u64 },
    /// `flush()`.
    Flush,
    /// Decode an encoded piece whose bytes are in memory and copy its guest bytes to `out` (one piece of the
    /// slot's request).
    Decode {
        input: DecodeInput,
        out: Vec<IoBufMut<'static>>,
    },
    /// Read a piece from another disk of the image (`Mapper::disk(disk).read_at(offset, bufs)`).
    DiskRead {
        disk: usize,
        offset: u64,
        bufs: Vec<IoBufMut<'static>>,
    },
    /// Write a piece to another disk of the image.
    DiskWrite {
        disk: usize,
        offset: u64,
        bufs: Vec<IoBuf<'static>>,
    },
    /// Write a slow piece (`Mapper::write_slow(offset, bufs)`).
    SlowWrite {
        offset: u64,
        bufs: Vec<IoBuf<'static>>,
    },
}

impl JobOp {
    /// Whether the job serves one piece of its request (the others serve the whole request).
    fn is_piece(&self) -> bool {
        matches!(
            self,
            JobOp::Decode { .. }
                | JobOp::DiskRead { .. }
                | JobOp::DiskWrite { .. }
                | JobOp::SlowWrite { .. }
        )
    }
}

/// A job: the slot of the guest request it serves and what to do.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) slot: u32,
    pub(crate) op: JobOp,
}

/// A finished job: bytes transferred (0 for everything but reads and writes) or the error.
#[derive(Debug)]
pub(crate) struct JobDone {
    pub(crate) slot: u32,
    pub(crate) result: Result<u64>,
    /// Whether it served one piece of its request, not the whole request.
    pub(crate) piece: bool,
}

#[derive(Debug, Default)]
struct JobQueue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    jobs: Mutex<JobQueue>,
    wake: Condvar,
    done: Mutex<VecDeque<JobDone>>,
    done_count: AtomicUsize,
}

/// Threads running jobs on their own disk handles.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Jobs handed out and not yet taken back with [`WorkerPool::take_done`].
    outstanding: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker never panics while holding a lock (jobs run outside it, panics in jobs are caught), so a
    // poisoned mutex still holds consistent data.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerPool {
    /// Starts `min(available_parallelism, 4).max(2)` threads, each with its own handle of the mapper's image,
    /// signalling completions on a duplicate of `notifier`.
    pub(crate) fn start(mapper: &Arc<dyn Mapper>, notifier: &EventFd) -> Result<WorkerPool> {
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, MAX_WORKERS);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(JobQueue::default()),
            wake: Condvar::new(),
            done: Mutex::new(VecDeque::new()),
            done_count: AtomicUsize::new(0),
        });
        let mut pool = WorkerPool {
            shared,
            threads: Vec::with_capacity(count),
            outstanding: 0,
        };
        for i in 0..count {
            let handle = mapper
                .duplicate()
                .map_err(|e| context(&**mapper, e, Operation::Open, None))?;
            let signal = notifier.try_clone().map_err(|e| {
                Error::io_while(e, "duplicating the completion eventfd")
                    .with_operation(Operation::Open)
            })?;
            let shared = pool.shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("blk-worker-{i}"))
                .spawn(move || work(&shared, &*handle, &signal))
                .map_err(|e| {
                    Error::io_while(e, "starting a worker thread").with_operation(Operation::Open)
                })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queues a job for the next free thread.
    pub(crate) fn submit(&mut self, job: Job) {
        lock(&self.shared.jobs).jobs.push_back(job);
        self.outstanding += 1;
        self.shared.wake.notify_one();
    }

    /// Whether a finished job is waiting (no lock taken).
    pub(crate) fn has_done(&self) -> bool {
        self.shared.done_count.load(Ordering::Acquire) > 0
    }

    /// The next finished job, if any.
    pub(crate) fn take_done(&mut self) -> Option<JobDone> {
        if !self.has_done() {
            return None;
        }
        let done = lock(&self.shared.done).pop_front()?;
        self.shared.done_count.fetch_sub(1, Ordering::AcqRel);
        self.outstanding = self.outstanding.saturating_sub(1);
        Some(done)
    }

    /// Jobs submitted and not yet taken back.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }
}

impl Drop for WorkerPool {
    /// Lets the threads finish every queued job, then joins them.
    fn drop(&mut self) {
        lock(&self.shared.jobs).stopping = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            // A worker catches panics from jobs, so join fails only if the loop itself panicked: nothing to do.
            let _ = thread.join();
        }
    }
}

/// A worker thread's loop: run jobs until the pool stops and no job is left.
fn work(shared: &Shared, mapper: &dyn Mapper, signal: &EventFd) {
    // The decoded unit of the current encoded piece (capacity reused).
    let mut scratch = Vec::new();
    loop {
        let job = {
            let mut queue = lock(&shared.jobs);
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break Some(job);
                }
                if queue.stopping {
                    break None;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(job) = job else { return };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match &job.op {
            JobOp::Decode { input, out } => decode(mapper, input, out, &mut scratch),
            op => run(mapper, op),
        }))
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Io,
                "the request panicked in a worker thread",
            ))
        });
        let piece = job.op.is_piece();
        // Drop the job (and a decode's reference to its window) before reporting it.
        drop(job.op);
        lock(&shared.done).push_back(JobDone {
            slot: job.slot,
            result,
            piece,
        });
        shared.done_count.fetch_add(1, Ordering::AcqRel);
        // Nothing to do if the eventfd cannot be written (its counter is full): it is readable already.
        let _ = signal.write(1);
    }
}

/// Runs one job on this thread's handle of the image, with the image's context on errors.
fn run(mapper: &dyn Mapper, op: &JobOp) -> Result<u64> {
    let ctx = |operation, offset| move |e| context(mapper, e, operation, offset);
    match op {
        JobOp::Read { offset, bufs } => read_mapped(mapper, *offset, bufs)
            .map(|()| total_len_mut(bufs))
            .map_err(ctx(Operation::Read, Some(*offset))),
        JobOp::Write { offset, bufs, fua } => {
            write_mapped(mapper, *offset, bufs).map_err(ctx(Operation::Write, Some(*offset)))?;
            if *fua {
                mapper.flush().map_err(|e| {
                    let e = context(mapper, e, Operation::Flush, None);
                    Error::new(e.kind(), format!("FUA flush failed: {e}"))
                        .with_operation(Operation::Flush)
                })?;
            }
            Ok(total_len(bufs))
        }
        JobOp::WriteZeroes {
            offset,
            len,
            may_unmap,
        } => mapper
            .write_zeroes(*offset, *len, *may_unmap)
            .map(|()| 0)
            .map_err(ctx(Operation::WriteZeroes, Some(*offset))),
        JobOp::Discard { offset, len } => mapper
            .discard(*offset, *len)
            .map(|()| 0)
            .map_err(ctx(Operation::Discard, Some(*offset))),
        JobOp::Flush => mapper
            .flush()
            .map(|()| 0)
            .map_err(ctx(Operation::Flush, None)),
        JobOp::DiskRead { disk, offset, bufs } => {
            let len = total_len_mut(bufs);
            mapper
                .disk(*disk)
                .ok_or_else(|| mapping_mismatch(*offset, len, Operation::Read))
                .and_then(|d| d.read_at(*offset, bufs))
                .map(|()| len)
                .map_err(ctx(Operation::Read, Some(*offset)))
        }
        JobOp::DiskWrite { disk, offset, bufs } => {
            let len = total_len(bufs);
            mapper
                .disk(*disk)
                .ok_or_else(|| mapping_mismatch(*offset, len, Operation::Write))
                .and_then(|d| d.write_at(*offset, bufs))
                .map(|()| len)
                .map_err(ctx(Operation::Write, Some(*offset)))
        }
        JobOp::SlowWrite { offset, bufs } => mapper
            .write_slow(*offset, bufs)
            .map(|()| total_len(bufs))
            .map_err(ctx(Operation::Write, Some(*offset))),
        // Served by `decode` (it needs the scratch buffer).
        JobOp::Decode { .. } => Err(Error::new(ErrorKind::Io, "a decode job without a decoder")),
    }
}

/// Decodes an encoded piece with the mapper and copies the piece's bytes to `out` (on a worker, or on the
/// queue's thread for a small unit: see `MappedQueue`'s decode).
pub(crate) fn decode(
    mapper: &dyn Mapper,
    input: &DecodeInput,
    out: &[IoBufMut<'static>],
    scratch: &mut Vec<u8>,
) -> Result<u64> {
    let piece = &input.piece;
    let encoded = input
        .buffer
        .bytes()
        .get(input.data_start..input.data_start.saturating_add(piece.host_len))
        .ok_or_else(|| Error::new(ErrorKind::Io, "an encoded read outside its buffer"))?;
    // Grown once to the unit size; the decoder overwrites all of it, so it is not cleared per piece.
    if scratch.len() < piece.decoded_len {
        scratch.resize(piece.decoded_len, 0);
    }
    let scratch = &mut scratch[..piece.decoded_len];
    mapper
        .decode(piece.codec, encoded, scratch)
        .map_err(|e| context(mapper, e, Operation::Read, None))?;
    copy_decoded(scratch, piece.skip, out)
}
