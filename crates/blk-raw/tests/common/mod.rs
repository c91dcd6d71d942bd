//! Helpers shared by the integration tests: opening and creating raw images, aligned and split buffers; and,
//! for every test, the workspace's shared test support.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use blk_test_support::*;

use std::path::{Path, PathBuf};

use blk_core::{HostOpenOptions, MappedDisk};
use blk_raw::{Preallocation, Raw, RawCreateOptions};

/// A temporary directory on the target's file system (ext4 here), where O_DIRECT works, unlike tmpfs.
pub fn tempdir() -> tempfile::TempDir {
    blk_test_support::target_tempdir!("blk-raw-test")
}

/// Opens the raw image at `path` as a disk for guest I/O.
pub fn open_disk(path: &Path, options: HostOpenOptions) -> blk_core::Result<MappedDisk<Raw>> {
    Raw::open(path, options).map(MappedDisk::new)
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
