//! Drivers shared by the async-path tests (`async_io.rs`, `async_writes.rs`): requests (`Op`), a `'static`
//! buffer arena, a runner for `AsyncIo` queues, `ManualEngine` (executes the image's mapper answers itself
//! with the shared test support's mapper execution: host pieces with `pread`/`pwrite` on the mapper's host
//! files, zero pieces in memory, encoded pieces decoded, other disks' pieces through their `DiskFile`,
//! `finish_allocation` after each allocated piece, slow pieces with `write_slow`), and a backend that counts
//! host operations.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use blk_core::{
    AsyncIo, HostCompletion, HostFile, HostOp, HostQueue, HostQueueBackend, IoBuf, IoBufMut,
    MappedQueue, Mapper, Request, RequestFlags, RequestOp, Result, SyncHostBackend,
};
use blk_test_support::{try_read_via_mapper, try_write_via_mapper, Mapped};

use crate::support::Disk;

/// Another handle of `disk`'s image, as its mapper (its own descriptor, the same metadata).
pub fn mapper_of(disk: &Disk) -> Arc<dyn Mapper> {
    Mapper::duplicate(&**disk).unwrap()
}

/// A queue of `depth` requests over a new handle of `disk`'s image, doing host I/O on `backend`.
pub fn queue_of(disk: &Disk, backend: &dyn HostQueueBackend, depth: u32) -> MappedQueue {
    MappedQueue::new(mapper_of(disk), backend, depth).unwrap()
}

/// A deterministic pseudo-random sequence (xorshift), so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One request for a driver.
#[derive(Debug, Clone)]
pub enum Op {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Flush,
}

/// Memory the queue's requests point into: leaked once per driver (requests need `'static` buffers) and
/// reused by every batch.
pub struct Arena {
    whole: IoBufMut<'static>,
}

impl Arena {
    pub fn new(len: usize) -> Arena {
        let memory: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
        Arena {
            whole: IoBufMut::from(memory),
        }
    }

    fn piece(&self, offset: usize, len: usize) -> IoBufMut<'static> {
        self.whole.subslice(offset, len).expect("arena too small")
    }
}

/// Splits `len` bytes at `at` of the arena into up to three buffers (scatter-gather).
pub fn split(arena: &Arena, at: usize, len: usize) -> Vec<IoBufMut<'static>> {
    if len < 3 {
        return vec![arena.piece(at, len)];
    }
    let a = len / 3;
    let b = len / 2 - a / 2;
    vec![
        arena.piece(at, a),
        arena.piece(at + a, b),
        arena.piece(at + a + b, len - a - b),
    ]
}

pub fn to_vec(bufs: &[IoBufMut<'static>]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bufs {
        let mut part = vec![0u8; b.len()];
        b.as_io_buf().copy_to(&mut part);
        out.extend_from_slice(&part);
    }
    out
}

/// What a request gave: the bytes read (reads) and the result.
pub type Outcome = (Vec<u8>, Result<u64>);

/// Runs one batch on an `AsyncIo` queue and returns the outcomes in request order.
pub fn run_queue(queue: &mut dyn AsyncIo, arena: &Arena, ops: &[Op]) -> Vec<Outcome> {
    let mut read_bufs: Vec<Vec<IoBufMut<'static>>> = Vec::new();
    let mut write_bufs: Vec<Vec<IoBuf<'static>>> = Vec::new();
    let mut at = 0;
    for op in ops {
        match op {
            Op::Read { len, .. } => {
                read_bufs.push(split(arena, at, *len as usize));
                write_bufs.push(Vec::new());
                at += *len as usize;
            }
            Op::Write { data, .. } => {
                let bufs = split(arena, at, data.len());
                let mut done = 0;
                for b in &bufs {
                    done += b.copy_from(&data[done..]);
                }
                write_bufs.push(bufs.iter().map(IoBufMut::as_io_buf).collect());
                read_bufs.push(Vec::new());
                at += data.len();
            }
            _ => {
                read_bufs.push(Vec::new());
                write_bufs.push(Vec::new());
            }
        }
    }
    let requests: Vec<Request<'_>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let user_data = i as u64;
            match op {
                Op::Read { offset, .. } => Request::new(
                    user_data,
                    RequestOp::Read {
                        offset: *offset,
                        bufs: &read_bufs[i],
                    },
                ),
                Op::Write { offset, fua, .. } => {
                    let r = Request::new(
                        user_data,
                        RequestOp::Write {
                            offset: *offset,
                            bufs: &write_bufs[i],
                        },
                    );
                    if *fua {
                        r.with_flags(RequestFlags::FUA)
                    } else {
                        r
                    }
                }
                Op::WriteZeroes { offset, len, unmap } => {
                    let r = Request::new(
                        user_data,
                        RequestOp::WriteZeroes {
                            offset: *offset,
                            len: *len,
                        },
                    );
                    if *unmap {
                        r
                    } else {
                        r.with_flags(RequestFlags::NO_UNMAP)
                    }
                }
                Op::Discard { offset, len } => Request::new(
                    user_data,
                    RequestOp::Discard {
                        offset: *offset,
                        len: *len,
                    },
                ),
                Op::Flush => Request::new(user_data, RequestOp::Flush),
            }
        })
        .collect();
    queue.submit(&requests).expect("submitting a batch");
    let mut results: Vec<Option<Result<u64>>> = (0..ops.len()).map(|_| None).collect();
    let mut got = 0;
    // A guard against a hung queue, not a timing assertion.
    let mut idle_rounds = 0u32;
    while got < ops.len() {
        match queue.next_completed_request() {
            Some(c) => {
                let slot = &mut results[c.user_data as usize];
                assert!(slot.is_none(), "request {} completed twice", c.user_data);
                *slot = Some(c.result);
                got += 1;
                idle_rounds = 0;
            }
            None => {
                idle_rounds += 1;
                assert!(
                    idle_rounds < 60_000,
                    "the queue stopped completing requests"
                );
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| (to_vec(&read_bufs[i]), r.expect("every request completed")))
        .collect()
}

/// Executes a mapper's answers itself (see the module docs), through the shared
/// [`try_read_via_mapper`]/[`try_write_via_mapper`].
pub struct ManualEngine {
    pub mapper: Arc<dyn Mapper>,
}

impl ManualEngine {
    pub fn new(disk: &Disk) -> ManualEngine {
        ManualEngine {
            mapper: mapper_of(disk),
        }
    }

    /// Reads through the mapping; returns whether every piece was the image's own (no other disk read).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        try_read_via_mapper(&*self.mapper, offset, buf).map(|mapped| mapped == Mapped::Fast)
    }

    /// Writes through the mapping; returns whether no piece was slow.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<bool> {
        try_write_via_mapper(&*self.mapper, offset, data).map(|mapped| mapped == Mapped::Fast)
    }

    pub fn run(&self, op: &Op) -> Outcome {
        match op {
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; *len as usize];
                let r = self.read(*offset, &mut buf).map(|_| *len);
                (buf, r)
            }
            Op::Write { offset, data, fua } => {
                let mut r = self.write(*offset, data).map(|_| data.len() as u64);
                if *fua && r.is_ok() {
                    r = self.mapper.flush().map(|()| data.len() as u64);
                }
                (Vec::new(), r)
            }
            Op::WriteZeroes { offset, len, unmap } => (
                Vec::new(),
                self.mapper.write_zeroes(*offset, *len, *unmap).map(|()| 0),
            ),
            Op::Discard { offset, len } => {
                (Vec::new(), self.mapper.discard(*offset, *len).map(|()| 0))
            }
            Op::Flush => (Vec::new(), self.mapper.flush().map(|()| 0)),
        }
    }
}

/// A backend counting the queues it makes and the host operations pushed on them (delegating to
/// `SyncHostBackend`).
#[derive(Debug, Default)]
pub struct CountingBackend {
    pub queues: AtomicUsize,
    pub ops: Arc<AtomicUsize>,
}

pub struct CountingQueue {
    inner: Box<dyn HostQueue>,
    ops: Arc<AtomicUsize>,
}

impl HostQueue for CountingQueue {
    fn push(&mut self, user_data: u64, op: HostOp<'_>) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.inner.push(user_data, op);
    }
    fn submit(&mut self) -> Result<()> {
        self.inner.submit()
    }
    fn next_completion(&mut self) -> Option<HostCompletion> {
        self.inner.next_completion()
    }
    fn notifier(&self) -> &blk_core::EventFd {
        self.inner.notifier()
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
}

impl HostQueueBackend for CountingBackend {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        self.queues.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(CountingQueue {
            inner: SyncHostBackend.create_queue(files, depth)?,
            ops: Arc::clone(&self.ops),
        }))
    }
}
