//! Format-agnostic helpers for the async-path tests: driving an [`AsyncIo`] queue with batches of mixed
//! requests, and executing an [`AsyncMapper`]'s answers directly, as a queue engine does.
#![allow(dead_code)]

use blk_core::{
    AsyncIo, AsyncMapper, Completion, IoBuf, IoBufMut, Mapped, ReadMapping, Request, RequestOp,
    WriteMapping,
};

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

/// Reaps `n` completions, waiting on the notifier between polls.
pub fn reap(queue: &mut dyn AsyncIo, n: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    loop {
        while let Some(c) = queue.next_completed_request() {
            done.push(c);
        }
        if done.len() >= n {
            return done;
        }
        let _ = queue.notifier().read();
    }
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
            .map(|(&(offset, _), bufs)| Request::new(offset, RequestOp::Read { offset, bufs }))
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
        .map(|(&(offset, _, _), bufs)| Request::new(offset, RequestOp::Write { offset, bufs }))
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

/// `(offset, byte, len)` writes as qemu-io commands.
pub fn qemu_commands(writes: &[(u64, u8, u64)]) -> Vec<String> {
    writes
        .iter()
        .map(|(o, b, l)| format!("write -P {b:#x} {o} {l}"))
        .collect()
}

/// Reads `len` bytes at `offset` by executing the mapper's answer directly (slow: through its disk).
pub fn read_via_mapper(mapper: &dyn AsyncMapper, offset: u64, len: u64) -> (Vec<u8>, Mapped) {
    let mut out = vec![0u8; len as usize];
    let mut pieces = Vec::new();
    let mapped = mapper.map_read(offset, len, &mut pieces).unwrap();
    if mapped == Mapped::Slow {
        assert!(pieces.is_empty());
        mapper.disk().read_exact_at(offset, &mut out).unwrap();
        return (out, mapped);
    }
    let mut at = 0usize;
    for piece in pieces {
        match piece {
            ReadMapping::Host { file, offset, len } => {
                let dst = &mut out[at..at + len as usize];
                mapper.host_files()[file]
                    .read_exact_at(offset, dst)
                    .unwrap();
                at += len as usize;
            }
            ReadMapping::Zero { len } => at += len as usize,
            ReadMapping::Encoded { .. } => panic!("this format has no encoded data"),
        }
    }
    assert_eq!(at as u64, len);
    (out, mapped)
}

/// Writes `data` at `offset` by executing the mapper's answer directly (slow: through its disk).
pub fn write_via_mapper(mapper: &dyn AsyncMapper, offset: u64, data: &[u8]) -> Mapped {
    let mut pieces = Vec::new();
    let mapped = mapper
        .map_write(offset, data.len() as u64, &mut pieces)
        .unwrap();
    if mapped == Mapped::Slow {
        assert!(pieces.is_empty());
        mapper.disk().write_all_at(offset, data).unwrap();
        return mapped;
    }
    let mut at = 0usize;
    for piece in pieces {
        let WriteMapping::Host { file, offset, len } = piece else {
            panic!("these mappers allocate nothing: {piece:?}");
        };
        mapper.host_files()[file]
            .write_all_at(offset, &data[at..at + len as usize])
            .unwrap();
        at += len as usize;
    }
    assert_eq!(at, data.len());
    mapped
}
