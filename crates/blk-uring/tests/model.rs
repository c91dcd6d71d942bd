//! Random batches of reads, writes and syncs through an io_uring queue, checked against an in-memory model.

mod common;

use blk_core::{HostFile, HostOp, HostOpenOptions, HostQueueBackend};
use blk_test_support::{host_read, host_write};
use common::{backend, buf, buf_mut, wait_for};
use proptest::prelude::*;

const FILE_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone)]
enum ModelOp {
    /// Read `len` bytes at `offset` (may run past the end of the file), into `pieces` buffers.
    Read {
        offset: u64,
        len: usize,
        pieces: usize,
    },
    /// Write `len` bytes of `seed`'s pattern at `offset` (inside the file), from `pieces` buffers.
    Write {
        offset: u64,
        len: usize,
        pieces: usize,
        seed: u8,
    },
    Sync,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (0..FILE_LEN + 4096, 0usize..9000, 1usize..5)
            .prop_map(|(offset, len, pieces)| ModelOp::Read { offset, len, pieces }),
        4 => (0..FILE_LEN, 1usize..9000, 1usize..5, any::<u8>()).prop_map(|(offset, len, pieces, seed)| {
            let len = len.min((FILE_LEN - offset) as usize).max(1);
            let offset = offset.min(FILE_LEN - len as u64);
            ModelOp::Write { offset, len, pieces, seed }
        }),
        1 => Just(ModelOp::Sync),
    ]
}

fn range(op: &ModelOp) -> Option<(u64, u64, bool)> {
    match *op {
        ModelOp::Read { offset, len, .. } => Some((offset, offset + len as u64, false)),
        ModelOp::Write { offset, len, .. } => Some((offset, offset + len as u64, true)),
        ModelOp::Sync => None,
    }
}

/// Drops operations that would race within a batch (a write overlapping anything else), since operations
/// of one batch run in any order.
fn without_races(batch: Vec<ModelOp>) -> Vec<ModelOp> {
    let mut kept: Vec<ModelOp> = Vec::new();
    for op in batch {
        let races = range(&op).is_some_and(|(s, e, w)| {
            kept.iter()
                .filter_map(range)
                .any(|(ks, ke, kw)| (w || kw) && s < ke && ks < e)
        });
        if !races {
            kept.push(op);
        }
    }
    kept
}

/// Splits `len` into `pieces` lengths (some possibly zero).
fn split(len: usize, pieces: usize) -> Vec<usize> {
    let step = len / pieces;
    let mut out = vec![step; pieces];
    if let Some(last) = out.last_mut() {
        *last += len - step * pieces;
    }
    out
}

fn pattern_bytes(seed: u8, len: usize) -> Vec<u8> {
    common::pattern(seed, len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_match_a_model(
        depth in 1u32..9,
        batches in prop::collection::vec(prop::collection::vec(model_op(), 1..24), 1..5),
    ) {
        let Some(backend) = backend() else { return Ok(()) };
        let dir = tempfile::tempdir().unwrap();
        let file = HostFile::create(dir.path().join("m"), HostOpenOptions::default()).unwrap();
        file.set_len(FILE_LEN).unwrap();
        let mut model = vec![0u8; FILE_LEN as usize];
        let mut queue = backend.create_queue(&[&file], depth).unwrap();

        for batch in batches {
            let batch = without_races(batch);
            // Storage for every operation of the batch, kept until its completions are back.
            let mut write_data: Vec<Vec<u8>> = Vec::new();
            let mut read_data: Vec<Vec<Vec<u8>>> = Vec::new();
            for op in &batch {
                match *op {
                    ModelOp::Write { len, seed, .. } => write_data.push(pattern_bytes(seed, len)),
                    ModelOp::Read { len, pieces, .. } => {
                        read_data.push(split(len, pieces).into_iter().map(|n| vec![0xeeu8; n]).collect())
                    }
                    ModelOp::Sync => {}
                }
            }
            let mut write_bufs = Vec::new();
            let mut wi = 0;
            for op in &batch {
                if let ModelOp::Write { len, pieces, .. } = *op {
                    let data = &write_data[wi];
                    let mut at = 0;
                    let mut v = Vec::new();
                    for n in split(len, pieces) {
                        v.push(buf(&data[at..at + n]));
                        at += n;
                    }
                    write_bufs.push(v);
                    wi += 1;
                }
            }
            let read_bufs: Vec<Vec<_>> = read_data
                .iter_mut()
                .map(|pieces| pieces.iter_mut().map(|p| buf_mut(p)).collect())
                .collect();
            let (mut wi, mut ri) = (0, 0);
            for (i, op) in batch.iter().enumerate() {
                let host_op = match *op {
                    ModelOp::Read { offset, .. } => {
                        ri += 1;
                        host_read(0, offset, &read_bufs[ri - 1])
                    }
                    ModelOp::Write { offset, .. } => {
                        wi += 1;
                        host_write(0, offset, &write_bufs[wi - 1])
                    }
                    ModelOp::Sync => HostOp::SyncData { file: 0 },
                };
                queue.push(i as u64, host_op);
            }
            queue.submit().unwrap();
            let mut done = wait_for(queue.as_mut(), batch.len());
            prop_assert_eq!(queue.pending(), 0);
            done.sort_by_key(|c| c.user_data);
            prop_assert_eq!(done.len(), batch.len());
            drop(read_bufs);

            // Reads see the model as it was before the batch; then the batch's writes apply.
            let (mut wi, mut ri) = (0, 0);
            for (op, c) in batch.iter().zip(&done) {
                match *op {
                    ModelOp::Read { offset, len, .. } => {
                        let end = (offset + len as u64).min(FILE_LEN);
                        let expect = end.saturating_sub(offset);
                        prop_assert_eq!(c.result, Ok(expect));
                        let got: Vec<u8> = read_data[ri].concat();
                        if expect > 0 {
                            prop_assert_eq!(&got[..expect as usize], &model[offset as usize..end as usize]);
                        }
                        prop_assert!(got[expect as usize..].iter().all(|&b| b == 0xee));
                        ri += 1;
                    }
                    ModelOp::Write { len, .. } => {
                        prop_assert_eq!(c.result, Ok(len as u64));
                        wi += 1;
                    }
                    ModelOp::Sync => prop_assert_eq!(c.result, Ok(0)),
                }
            }
            let mut wi2 = 0;
            for op in &batch {
                if let ModelOp::Write { offset, len, .. } = *op {
                    model[offset as usize..offset as usize + len].copy_from_slice(&write_data[wi2]);
                    wi2 += 1;
                }
            }
            prop_assert_eq!(wi, wi2);
            drop(write_bufs);
        }
        let mut on_disk = vec![0u8; FILE_LEN as usize];
        file.read_exact_at(0, &mut on_disk).unwrap();
        prop_assert!(on_disk == model, "the file differs from the model");
    }
}
