//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use blk_core::{HostOpenOptions, LockMode};
use blk_raw::{Preallocation, Raw, RawCreateOptions};

/// Serializes the tests of one test binary that spawn processes (qemu-img, losetup) while holding images open.
///
/// A child process briefly holds a copy of every descriptor of its parent, between the fork and the exec that
/// closes them (`O_CLOEXEC`). An image closed by one test thread while another thread spawns a process can so
/// stay open, with its OFD locks, for a moment longer, and a test reopening it sees `Locked`. Tests that spawn
/// processes and also lock images take this guard first.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A temporary directory on the target's file system (ext4 here), where O_DIRECT works, unlike tmpfs.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blk-raw-test")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory")
}

pub fn rw() -> HostOpenOptions {
    HostOpenOptions::default()
}

pub fn ro() -> HostOpenOptions {
    HostOpenOptions {
        read_only: true,
        ..HostOpenOptions::default()
    }
}

pub fn direct() -> HostOpenOptions {
    HostOpenOptions {
        direct: true,
        ..HostOpenOptions::default()
    }
}

pub fn unlocked() -> HostOpenOptions {
    HostOpenOptions {
        lock: LockMode::None,
        ..HostOpenOptions::default()
    }
}

/// Creates a sparse raw image of `size` bytes at `dir/name` with blk and closes it.
pub fn new_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    Raw::create(
        &path,
        &RawCreateOptions {
            size,
            preallocation: Preallocation::Off,
        },
    )
    .expect("creating the image");
    path
}

/// Deterministic non-trivial bytes: distinct for different seeds and positions.
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

/// A heap buffer whose first byte is aligned to `align` bytes.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let storage = vec![0u8; len + align];
        let start = storage.as_ptr().align_offset(align);
        assert!(start <= align);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A buffer of `len` bytes that is either 4096-aligned or deliberately misaligned by one byte.
pub fn buffer(len: usize, aligned: bool) -> AlignedBuf {
    if aligned {
        return AlignedBuf::new(len, 4096);
    }
    let mut buf = AlignedBuf::new(len + 1, 4096);
    buf.start += 1;
    buf.len = len;
    buf
}

/// `buf` as consecutive buffers split at the ascending positions `cuts` (each at most `buf.len()`).
pub fn split_mut<'a>(buf: &'a mut [u8], cuts: &[usize]) -> Vec<blk_core::IoBufMut<'a>> {
    let mut bufs = Vec::with_capacity(cuts.len() + 1);
    let mut rest = buf;
    let mut done = 0;
    for &cut in cuts {
        let (head, tail) = rest.split_at_mut(cut - done);
        bufs.push(blk_core::IoBufMut::from(head));
        rest = tail;
        done = cut;
    }
    bufs.push(blk_core::IoBufMut::from(rest));
    bufs
}

/// `buf` as consecutive buffers split at the ascending positions `cuts` (each at most `buf.len()`).
pub fn split<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<blk_core::IoBuf<'a>> {
    let mut bufs = Vec::with_capacity(cuts.len() + 1);
    let mut done = 0;
    for &cut in cuts {
        bufs.push(blk_core::IoBuf::from(&buf[done..cut]));
        done = cut;
    }
    bufs.push(blk_core::IoBuf::from(&buf[done..]));
    bufs
}

/// Reads the whole disk.
pub fn read_all(disk: &dyn blk_core::DiskFile) -> Vec<u8> {
    let mut data = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut data).expect("reading the disk");
    data
}

/// Every run of the disk's map, from `DiskFile::map` called until the end.
pub fn full_map(disk: &dyn blk_core::DiskFile) -> Vec<blk_core::Extent> {
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
