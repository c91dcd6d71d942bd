//! Property test: batches of random reads, writes (single and vectored) and syncs on a queue of random depth
//! (small, so the backlog is used) give what an in-memory model of the file says.
//!
//! The operations of one batch touch distinct 4 KiB blocks, since concurrent overlapping I/O has no defined
//! result; reads of the block past the end of the file must come back short.

mod common;

use blk_core::{HostOp, IoBuf, IoBufMut};
use common::*;
use proptest::prelude::*;

const BLOCK: usize = 4096;
const BLOCKS: usize = 16;

#[derive(Debug, Clone)]
enum ModelOp {
    /// Read `len` bytes at `start` inside the block, into `pieces` buffers.
    Read {
        start: usize,
        len: usize,
        pieces: usize,
    },
    /// Write `len` bytes of `pattern(seed)` at `start` inside the block, from `pieces` buffers.
    Write {
        start: usize,
        len: usize,
        pieces: usize,
        seed: u8,
    },
    Sync,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let range = (0..BLOCK).prop_flat_map(|start| (Just(start), 1..=BLOCK - start));
    prop_oneof![
        4 => (range.clone(), 1..4usize)
            .prop_map(|((start, len), pieces)| ModelOp::Read { start, len, pieces }),
        4 => (range, 1..4usize, any::<u8>())
            .prop_map(|((start, len), pieces, seed)| ModelOp::Write { start, len, pieces, seed }),
        1 => Just(ModelOp::Sync),
    ]
}

/// A batch: operations on distinct blocks (0..=BLOCKS, the last one past the end of the file).
fn batch() -> impl Strategy<Value = Vec<(usize, ModelOp)>> {
    proptest::collection::vec(model_op(), 1..12).prop_flat_map(|ops| {
        let n = ops.len();
        (
            Just(ops),
            Just((0..=BLOCKS).collect::<Vec<_>>()).prop_shuffle(),
        )
            .prop_map(move |(ops, blocks)| blocks.into_iter().take(n).zip(ops).collect())
    })
}

/// `len` split into `pieces` nonempty lengths (fewer when `len` is small).
fn split(len: usize, pieces: usize) -> Vec<usize> {
    let pieces = pieces.min(len).max(1);
    let mut out = vec![len / pieces; pieces];
    if let Some(last) = out.last_mut() {
        *last += len % pieces;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model(depth in 1u32..6, batches in proptest::collection::vec(batch(), 1..5)) {
        let dir = tempfile::tempdir().unwrap();
        let size = BLOCKS * BLOCK;
        let file = file_with_pattern(&dir.path().join("m.img"), 0, size);
        let Some(mut queue) = queue(&[&file], depth) else { return Ok(()) };
        let mut model = pattern(0, size);

        for batch in batches {
            let mut reads: Vec<(u64, usize, usize, Vec<IoBufMut<'static>>)> = Vec::new();
            let mut write_bufs: Vec<Vec<IoBuf<'static>>> = Vec::new();
            let mut expected = Vec::new();
            // The file's length before the batch: only writes to the last block extend it, and no read of the
            // batch touches that block.
            let file_len = model.len();
            for (tag, (block, op)) in batch.iter().enumerate() {
                let tag = tag as u64;
                match *op {
                    ModelOp::Read { start, len, pieces } => {
                        let bufs: Vec<_> = split(len, pieces).into_iter().map(read_buf).collect();
                        let at = block * BLOCK + start;
                        let got = file_len.saturating_sub(at).min(len);
                        expected.push((tag, Ok(got as u64)));
                        reads.push((tag, at, got, bufs));
                    }
                    ModelOp::Write { start, len, pieces, seed } => {
                        let at = block * BLOCK + start;
                        let data = pattern(seed, len);
                        let mut bufs = Vec::new();
                        let mut done = 0;
                        for piece in split(len, pieces) {
                            bufs.push(write_buf(&data[done..done + piece]));
                            done += piece;
                        }
                        write_bufs.push(bufs);
                        if model.len() < at + len {
                            model.resize(at + len, 0);
                        }
                        model[at..at + len].copy_from_slice(&data);
                        expected.push((tag, Ok(len as u64)));
                        let bufs = write_bufs.last().unwrap(); // just pushed
                        queue.push(tag, host_write(0, at as u64, bufs));
                    }
                    ModelOp::Sync => {
                        expected.push((tag, Ok(0)));
                        queue.push(tag, HostOp::SyncData { file: 0 });
                    }
                }
            }
            for (tag, at, _, bufs) in &reads {
                queue.push(*tag, host_read(0, *at as u64, bufs));
            }
            prop_assert_eq!(queue.pending(), batch.len());
            queue.submit().unwrap();
            let done = wait_for(&mut *queue, batch.len());
            prop_assert_eq!(queue.pending(), 0);
            for (tag, result) in expected {
                prop_assert_eq!(result_of(&done, tag), result, "operation {}", tag);
            }
            for (_, at, got, bufs) in &reads {
                let bytes: Vec<u8> = bufs.iter().flat_map(contents).collect();
                // Blocks are distinct within a batch, so the model after the batch is also the model before.
                prop_assert!(*got == 0 || bytes[..*got] == model[*at..*at + *got]);
            }
        }
        let mut on_disk = vec![0u8; model.len()];
        file.read_exact_at(0, &mut on_disk).unwrap();
        prop_assert!(on_disk == model);
    }
}

#[test]
fn split_covers_the_length() {
    assert_eq!(split(10, 3), vec![3, 3, 4]);
    assert_eq!(split(1, 3), vec![1]);
}
