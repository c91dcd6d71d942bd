//! Driving an [`AsyncIo`] queue from a test: building requests, submitting batches and reaping their
//! completions, reading a whole disk and writing a batch through a queue.

use std::time::{Duration, Instant};

use blk_core::{AsyncDiskFile, AsyncIo, Completion, DiskFile, IoBuf, IoBufMut, Request, RequestOp};

/// The queue depth the tests use, and the size of their batches.
pub const DEPTH: u32 = 32;

/// Request sizes cycled through when reading a whole disk: sector multiples, odd byte counts, several blocks.
pub const SIZES: &[u64] = &[
    4096,
    512,
    1000,
    65536,
    1536,
    1 << 20,
    (2 << 20) + 512,
    123 * 512,
    3333,
    8192,
    300_000,
    (1 << 20) + 512,
];

/// Memory for asynchronous reads, which must outlive the queue's use of it: leaked, once per test.
pub fn arena(len: u64) -> IoBufMut<'static> {
    IoBufMut::from(&mut Box::leak(vec![0u8; len as usize].into_boxed_slice())[..])
}

/// A read of `offset` into `bufs`, tagged `user_data`.
pub fn read_request<'a>(user_data: u64, offset: u64, bufs: &'a [IoBufMut<'static>]) -> Request<'a> {
    Request::new(user_data, RequestOp::Read { offset, bufs })
}

/// A write of `bufs` at `offset`, tagged `user_data`.
pub fn write_request<'a>(user_data: u64, offset: u64, bufs: &'a [IoBuf<'static>]) -> Request<'a> {
    Request::new(user_data, RequestOp::Write { offset, bufs })
}

/// Reaps `n` completions, polling the queue's notifier between polls of the queue.
pub fn reap(queue: &mut dyn AsyncIo, n: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    loop {
        while let Some(c) = queue.next_completed_request() {
            done.push(c);
        }
        if done.len() >= n {
            return done;
        }
        // The eventfd is non-blocking (a VMM polls it in its event loop): yield until it fires.
        if queue.notifier().read().is_err() {
            std::thread::yield_now();
        }
    }
}

/// Submits one batch and polls (without touching the notifier, which the caller may check) until every request
/// of it completed; the completions sorted by `user_data`.
pub fn complete(queue: &mut dyn AsyncIo, batch: &[Request<'_>]) -> Vec<Completion> {
    queue.submit(batch).unwrap();
    let started = Instant::now();
    let mut done = Vec::new();
    while done.len() < batch.len() {
        match queue.next_completed_request() {
            Some(c) => done.push(c),
            None => {
                assert!(started.elapsed() < Duration::from_secs(30), "queue hangs");
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
    done.sort_by_key(|c| c.user_data);
    done
}

/// The `(offset, len)` pieces of a whole-disk read, sizes cycling through [`SIZES`].
pub fn pieces(size: u64) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    let mut offset = 0;
    for &len in SIZES.iter().cycle() {
        if offset >= size {
            break;
        }
        let len = len.min(size - offset);
        pieces.push((offset, len));
        offset += len;
    }
    pieces
}

/// Reads the whole disk through `queue` in batches of [`DEPTH`] requests of mixed sizes, into `arena` at the
/// same offsets, with two buffers for requests of 1 KiB or more (scatter-gather).
pub fn read_through(queue: &mut dyn AsyncIo, size: u64, arena: IoBufMut<'static>) -> Vec<u8> {
    let all = pieces(size);
    for batch in all.chunks(DEPTH as usize) {
        let bufs: Vec<Vec<IoBufMut<'static>>> = batch
            .iter()
            .map(|&(o, l)| {
                let (o, l) = (o as usize, l as usize);
                if l >= 1024 {
                    vec![
                        arena.subslice(o, l / 3).unwrap(),
                        arena.subslice(o + l / 3, l - l / 3).unwrap(),
                    ]
                } else {
                    vec![arena.subslice(o, l).unwrap()]
                }
            })
            .collect();
        let requests: Vec<Request<'_>> = batch
            .iter()
            .zip(&bufs)
            .map(|(&(offset, _), bufs)| read_request(offset, offset, bufs))
            .collect();
        queue.submit(&requests).unwrap();
        for c in reap(queue, requests.len()) {
            let len = batch.iter().find(|p| p.0 == c.user_data).unwrap().1;
            assert_eq!(c.result.unwrap(), len, "read at {}", c.user_data);
        }
    }
    let mut out = vec![0u8; size as usize];
    arena.as_io_buf().copy_to(&mut out);
    out
}

/// Writes `(offset, byte, len)` through `queue` as one batch (they must not overlap: a batch's requests
/// complete in any order), then flushes.
pub fn write_through(queue: &mut dyn AsyncIo, writes: &[(u64, u8, u64)]) {
    let data: Vec<[IoBuf<'static>; 1]> = writes
        .iter()
        .map(|&(_, byte, len)| {
            let bytes: &'static [u8] = Box::leak(vec![byte; len as usize].into_boxed_slice());
            [IoBuf::from(bytes)]
        })
        .collect();
    let requests: Vec<Request<'_>> = writes
        .iter()
        .zip(&data)
        .map(|(&(offset, _, _), bufs)| write_request(offset, offset, bufs))
        .collect();
    queue.submit(&requests).unwrap();
    for c in reap(queue, requests.len()) {
        let len = writes.iter().find(|w| w.0 == c.user_data).unwrap().2;
        assert_eq!(c.result.unwrap(), len, "write at {}", c.user_data);
    }
    queue
        .submit(&[Request::new(u64::MAX, RequestOp::Flush)])
        .unwrap();
    reap(queue, 1).pop().unwrap().result.unwrap();
}

/// Writes 512 bytes of 9 at offset 0 through a new queue of `queue_disk` (a clone of `disk`, say) and asserts
/// that the write completes and that `disk` reads them back.
pub fn assert_queue_write_reads_back(queue_disk: &dyn AsyncDiskFile, disk: &dyn DiskFile) {
    let mut queue = queue_disk.create_async_io(4).unwrap();
    let data: &'static [u8] = Box::leak(vec![9u8; 512].into_boxed_slice());
    let bufs = [IoBuf::from(data)];
    queue.submit(&[write_request(7, 0, &bufs)]).unwrap();
    assert_eq!(reap(queue.as_mut(), 1)[0].result.as_ref().unwrap(), &512);
    let mut back = [0u8; 512];
    disk.read_exact_at(0, &mut back).unwrap();
    assert_eq!(back, [9u8; 512]);
}
