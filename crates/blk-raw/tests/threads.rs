//! Four threads, each with its own `try_clone` handle, writing and reading interleaved disjoint ranges, many of
//! them sharing host blocks with a neighbour's (O_DIRECT read-modify-write of shared edges).

mod common;

use blk_core::{DiskFile, HostOpenOptions};
use common::*;

const SIZE: u64 = 512 << 10;
const THREADS: usize = 4;
const ROUNDS: u64 = 6;

/// Consecutive ranges covering the disk, of irregular lengths (many shorter than a block, many not aligned),
/// owned round-robin by the threads so that neighbours in a block belong to different threads.
fn ranges() -> Vec<(usize, u64, usize)> {
    const LENGTHS: [usize; 9] = [300, 1, 211, 4096, 37, 8197, 512, 4095, 1500];
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    let mut i = 0;
    while offset < SIZE {
        let len = (LENGTHS[i % LENGTHS.len()] as u64).min(SIZE - offset) as usize;
        ranges.push((i % THREADS, offset, len));
        offset += len as u64;
        i += 1;
    }
    ranges
}

fn data(round: u64, offset: u64, len: usize) -> Vec<u8> {
    pattern(round << 32 | offset, len)
}

fn hammer(options: HostOpenOptions) {
    let dir = tempdir();
    let path = new_image(dir.path(), "threads.img", SIZE);
    let disk: Box<dyn DiskFile> = Box::new(open_disk(&path, options).unwrap());
    let ranges = ranges();
    let handles: Vec<Box<dyn DiskFile>> = (0..THREADS).map(|_| disk.try_clone().unwrap()).collect();
    std::thread::scope(|scope| {
        for (thread, handle) in handles.into_iter().enumerate() {
            let ranges = &ranges;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    for &(owner, offset, len) in ranges {
                        if owner != thread {
                            continue;
                        }
                        let bytes = data(round, offset, len);
                        let (head, tail) = bytes.split_at(len / 3);
                        handle
                            .write_at(offset, &[head.into(), tail.into()])
                            .unwrap();
                        let mut back = vec![0u8; len];
                        handle.read_exact_at(offset, &mut back).unwrap();
                        assert_eq!(back, bytes, "thread {thread} round {round} at {offset}");
                    }
                }
            });
        }
    });
    let mut model = vec![0u8; SIZE as usize];
    for &(_, offset, len) in &ranges {
        model[offset as usize..offset as usize + len].copy_from_slice(&data(
            ROUNDS - 1,
            offset,
            len,
        ));
    }
    let contents = read_all(&*disk);
    let lost = contents.iter().zip(&model).filter(|(a, b)| a != b).count();
    assert_eq!(lost, 0, "{lost} bytes differ from the model");
    drop(disk);
    assert!(std::fs::read(&path).unwrap() == model);
}

#[test]
fn buffered_threads_keep_every_byte() {
    hammer(rw());
}

#[test]
fn direct_threads_keep_every_byte() {
    hammer(direct());
}
