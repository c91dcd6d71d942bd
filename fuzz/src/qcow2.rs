//! The `qcow2` harness: any bytes as a qcow2 image file, opened read-only and writable by `blk_qcow::Qcow2`
//! served as a `MappedDisk` (files named inside refused by `DenyNamedImages`), described (`image_info`), its
//! first internal snapshot
//! opened, mapped and read in bounded samples, written, zeroed,
//! discarded, flushed, checked and repaired. It must never panic, every error must name the image's path, and
//! the file must never grow beyond what the writes can explain.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    DenyNamedImages, DiskFile, Error, HostOpenOptions, ImageAdmin, MappedDisk, RepairMode,
    SnapshotSelector,
};
use blk_qcow::{Qcow2, Qcow2OpenOptions};

/// An opened image as the harness drives it.
type Disk = MappedDisk<Qcow2>;

/// Extents walked by `map` at most (the virtual size may be huge).
const MAX_MAP_STEPS: usize = 64;
/// Bytes read or written by one request at most.
const MAX_REQUEST: u64 = 16 << 10;
/// Write-like requests issued on the writable open.
const WRITE_OPS: usize = 6;

/// Treats `data` as a qcow2 image.
pub fn qcow2(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("fuzz.qcow2");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let mut seed = Seed::new(data);

    if let Some(disk) = open(&path, true, false) {
        read_around(&disk, &mut seed);
        if let Err(e) = disk.image_info() {
            expect_path(&e, "image_info");
        }
        if let Err(e) = disk.check(RepairMode::None) {
            expect_path(&e, "check");
        }
        if disk.write_all_at(0, &[0]).is_ok() {
            panic!("a read-only open accepted a write");
        }
    }
    // The first internal snapshot, if any, opened read-only instead of the current disk.
    let mut snapshot = options(true, false);
    snapshot.snapshot = Some(SnapshotSelector::Id("1".to_string()));
    match Qcow2::open(&path, &snapshot) {
        Ok(image) => read_around(&MappedDisk::new(image), &mut seed),
        Err(e) => expect_path(&e, "snapshot open"),
    }
    if std::fs::read(&path).map_or(true, |now| now != data) {
        panic!("a read-only open changed the file");
    }

    if let Some(disk) = open(&path, false, false) {
        read_around(&disk, &mut seed);
        let mut written = 0u64;
        for _ in 0..WRITE_OPS {
            written += write_something(&disk, &mut seed);
        }
        if let Err(e) = disk.flush() {
            expect_path(&e, "flush");
        }
        read_around(&disk, &mut seed);
        if let Err(e) = disk.check(RepairMode::None) {
            expect_path(&e, "check");
        }
        drop(disk);
        check_growth(&path, data, written);
    }

    if let Some(disk) = open(&path, false, true) {
        match disk.check(RepairMode::All) {
            Ok(_) => {
                if let Err(e) = disk.check(RepairMode::None) {
                    expect_path(&e, "check after repair");
                }
            }
            Err(e) => expect_path(&e, "repair"),
        }
        drop(disk);
        check_growth(&path, data, 0);
    }
}

/// Open options for the harness: files named inside the image refused, a small L2 cache.
fn options(read_only: bool, check_mode: bool) -> Qcow2OpenOptions {
    let host = HostOpenOptions {
        read_only,
        ..HostOpenOptions::default()
    };
    let mut options = Qcow2OpenOptions::new(host, Arc::new(DenyNamedImages));
    options.check_mode = check_mode;
    options.l2_cache_size = 1 << 20;
    options
}

/// Opens the image; None (after checking the error) when it is refused.
fn open(path: &Path, read_only: bool, check_mode: bool) -> Option<Disk> {
    match Qcow2::open(path, &options(read_only, check_mode)) {
        Ok(image) => Some(MappedDisk::new(image)),
        Err(e) => {
            expect_path(&e, "open");
            None
        }
    }
}

/// Every error must say which file it is about.
fn expect_path(e: &Error, what: &str) {
    assert!(e.path().is_some(), "{what} error without a path: {e:?}");
}

/// A tiny deterministic generator seeded from the input, for offsets and request kinds.
struct Seed(u64);

impl Seed {
    fn new(data: &[u8]) -> Seed {
        Seed(data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A request inside a disk of `size` bytes: (offset, len), len >= 1 unless the disk is empty.
    fn range(&mut self, size: u64) -> (u64, u64) {
        if size == 0 {
            return (0, 0);
        }
        let sector_aligned = self.next() % 2 == 0;
        let mut offset = self.next() % size;
        if sector_aligned {
            offset &= !511;
        }
        let len = (1 + self.next() % MAX_REQUEST).min(size - offset);
        (offset, len)
    }
}

/// Maps the first extents and reads a few bounded samples (start, end, middle, random).
fn read_around(disk: &Disk, seed: &mut Seed) {
    let size = disk.logical_size();
    let mut offset = 0;
    for _ in 0..MAX_MAP_STEPS {
        if offset >= size {
            break;
        }
        match disk.map(offset, size - offset) {
            Ok(extent) if extent.length > 0 => offset += extent.length,
            Ok(_) => panic!("map returned an empty extent at {offset}"),
            Err(e) => {
                expect_path(&e, "map");
                break;
            }
        }
    }
    let mut samples = vec![
        (0, size.min(MAX_REQUEST)),
        (size.saturating_sub(MAX_REQUEST), size.min(MAX_REQUEST)),
    ];
    samples.push((
        (size / 2) & !511,
        (size - ((size / 2) & !511)).min(MAX_REQUEST),
    ));
    for _ in 0..3 {
        samples.push(seed.range(size));
    }
    for (offset, len) in samples {
        if len == 0 {
            continue;
        }
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = disk.read_exact_at(offset, &mut buf) {
            expect_path(&e, "read");
        }
    }
    if let Err(e) = disk.image_info() {
        expect_path(&e, "image_info");
    }
}

/// One write, zero-write or discard; returns the bytes it may have allocated.
fn write_something(disk: &Disk, seed: &mut Seed) -> u64 {
    let (offset, len) = seed.range(disk.logical_size());
    if len == 0 {
        return 0;
    }
    let result = match seed.next() % 4 {
        0 | 1 => disk.write_all_at(offset, &vec![0xa5; len as usize]),
        2 => disk.write_zeroes(offset, len, seed.next() % 2 == 0),
        _ => disk.discard(offset, len),
    };
    if let Err(e) = result {
        expect_path(&e, "write");
    }
    len
}

/// The file may grow by what the writes allocate (whole clusters, with L2 tables and refcount blocks), or by
/// a repair's new refcount structure, never by an absurd amount.
fn check_growth(path: &Path, data: &[u8], written: u64) {
    let cluster_bits = data
        .get(20..24)
        .map_or(16, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .clamp(9, 21);
    let cluster = 1u64 << cluster_bits;
    let allowed = data.len() as u64
        + (written / cluster + 4 * WRITE_OPS as u64 + 16) * 3 * cluster
        + (80 << 20);
    let now = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(
        now <= allowed,
        "the file grew from {} to {now} bytes",
        data.len()
    );
}
