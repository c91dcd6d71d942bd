//! Reading back what a disk holds, comparing it, and deterministic data to write into it.

use blk_core::{DiskFile, Extent};

/// Reads the whole disk.
pub fn read_all(disk: &dyn DiskFile) -> Vec<u8> {
    let mut data = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut data).expect("reading the disk");
    data
}

/// Every run of the disk's map, from `DiskFile::map` called until the end.
pub fn full_map(disk: &dyn DiskFile) -> Vec<Extent> {
    let size = disk.logical_size();
    let mut runs = Vec::new();
    let mut offset = 0;
    while offset < size {
        let run = disk.map(offset, size - offset).expect("mapping");
        assert_eq!(run.offset, offset);
        assert!(run.length > 0 && run.length <= size - offset, "{run:?}");
        offset += run.length;
        runs.push(run);
    }
    runs
}

/// Asserts that `ours` equals `expected`, naming `what` and the first difference instead of printing whole
/// disks (`==` first: a byte loop over large buffers is slow in debug builds).
#[track_caller]
pub fn assert_same_bytes(ours: &[u8], expected: &[u8], what: &str) {
    if ours == expected {
        return;
    }
    assert_eq!(ours.len(), expected.len(), "{what}: lengths differ");
    if let Some(i) = ours.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: ours {:#04x} expected {:#04x}",
            ours[i], expected[i]
        );
    }
}

/// Deterministic non-trivial bytes (xorshift): distinct for different seeds and positions.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
