//! Random reads, vectored writes, write-zeroes and discards against an in-memory model, buffered and O_DIRECT.

mod common;

use blk_core::{DiskFile, HostOpenOptions};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;

const SIZE: u64 = 1 << 20;
const BLOCK: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Read {
        offset: u64,
        len: usize,
        cuts: Vec<Index>,
        aligned_memory: bool,
    },
    Write {
        offset: u64,
        len: usize,
        seed: u64,
        cuts: Vec<Index>,
        aligned_memory: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Flush,
}

/// Offsets: anywhere (mostly unaligned) or on a 4 KiB block.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..SIZE, (0..SIZE / BLOCK).prop_map(|b| b * BLOCK)]
}

/// Lengths: anything up to 70 000 bytes, or whole 4 KiB blocks.
fn len() -> impl Strategy<Value = u64> {
    prop_oneof![0..70_000u64, (1..=16u64).prop_map(|b| b * BLOCK)]
}

fn op() -> impl Strategy<Value = Op> {
    let cuts = || prop::collection::vec(any::<Index>(), 0..4);
    prop_oneof![
        3 => (offset(), len(), cuts(), any::<bool>()).prop_map(|(offset, len, cuts, aligned_memory)| {
            Op::Read { offset, len: clip(offset, len) as usize, cuts, aligned_memory }
        }),
        4 => (offset(), len(), any::<u64>(), cuts(), any::<bool>()).prop_map(
            |(offset, len, seed, cuts, aligned_memory)| Op::Write {
                offset,
                len: clip(offset, len) as usize,
                seed,
                cuts,
                aligned_memory,
            }
        ),
        1 => (offset(), len(), any::<bool>()).prop_map(|(offset, len, may_unmap)| {
            Op::WriteZeroes { offset, len: clip(offset, len), may_unmap }
        }),
        1 => (offset(), len()).prop_map(|(offset, len)| Op::Discard { offset, len: clip(offset, len) }),
        1 => Just(Op::Flush),
    ]
}

fn clip(offset: u64, len: u64) -> u64 {
    len.min(SIZE - offset)
}

/// Sorted cut positions within `len`; on aligned memory, on 4 KiB boundaries so segments stay aligned.
fn positions(cuts: &[Index], len: usize, aligned_memory: bool) -> Vec<usize> {
    let mut positions: Vec<usize> = cuts
        .iter()
        .map(|i| {
            let p = i.index(len + 1);
            if aligned_memory {
                p / BLOCK as usize * BLOCK as usize
            } else {
                p
            }
        })
        .collect();
    positions.sort_unstable();
    positions
}

fn run(disk: &dyn DiskFile, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; SIZE as usize];
    for op in ops {
        match op {
            Op::Read {
                offset,
                len,
                cuts,
                aligned_memory,
            } => {
                let mut buf = buffer(*len, *aligned_memory);
                let cuts = positions(cuts, *len, *aligned_memory);
                buf.as_mut_slice().fill(0xee);
                disk.read_at(*offset, &split_mut(buf.as_mut_slice(), &cuts))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let start = *offset as usize;
                prop_assert!(
                    buf.as_slice() == &model[start..start + len],
                    "read of {} bytes at {} differs from the model",
                    len,
                    offset
                );
            }
            Op::Write {
                offset,
                len,
                seed,
                cuts,
                aligned_memory,
            } => {
                let data = pattern(*seed, *len);
                let mut buf = buffer(*len, *aligned_memory);
                buf.as_mut_slice().copy_from_slice(&data);
                let cuts = positions(cuts, *len, *aligned_memory);
                disk.write_at(*offset, &split(buf.as_slice(), &cuts))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let start = *offset as usize;
                model[start..start + len].copy_from_slice(&data);
            }
            Op::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => {
                disk.write_zeroes(*offset, *len, *may_unmap)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model[*offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Discard { offset, len } => {
                disk.discard(*offset, *len)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model[*offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Flush => disk
                .flush()
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
        }
    }
    prop_assert_eq!(disk.logical_size(), SIZE);
    let mut all = buffer(SIZE as usize, true);
    disk.read_exact_at(0, all.as_mut_slice())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(all.as_slice() == &model[..], "final contents differ");
    // Holes reported by map really read as zeros.
    let mut offset = 0;
    while offset < SIZE {
        let run = disk
            .map(offset, SIZE - offset)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if run.reads_as_zero() {
            let range = run.offset as usize..(run.offset + run.length) as usize;
            prop_assert!(
                model[range].iter().all(|&b| b == 0),
                "{:?} is not zero",
                run
            );
        }
        offset += run.length;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn check(options: HostOpenOptions) {
    let dir = tempdir();
    let path = new_image(dir.path(), "model.img", SIZE);
    proptest!(config(), |(ops in prop::collection::vec(op(), 1..24))| {
        // A fresh image per case.
        std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
        let disk = open_disk(&path, options).map_err(|e| TestCaseError::fail(e.to_string()))?;
        run(&disk, &ops)?;
    });
}

#[test]
fn buffered_matches_the_model() {
    check(rw());
}

#[test]
fn direct_matches_the_model() {
    check(direct());
}
