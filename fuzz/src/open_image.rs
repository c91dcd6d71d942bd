//! The `open_image` harness: any bytes as an image file, through detection and the factory.
//!
//! Replayed over `corpus/open_image` by `crates/blk-factory/tests/fuzz_corpus.rs`, which includes this file.

use std::io::Write;
use std::os::fd::AsRawFd;

use blk_core::{DiskFile, ErrorKind, LockMode};
use blk_factory::DiskFileParams;

/// The step of the full read.
const CHUNK: u64 = 64 << 10;

/// Treats `data` as an image file: detects its format, opens it read-only, walks its whole map and reads it
/// all. Failing to open is fine (with an error that names the file); panicking, a map that does not tile the
/// disk, or a read that disagrees with the map is not.
pub fn open_image(data: &[u8]) {
    let Ok(mut file) = tempfile::tempfile() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let params = DiskFileParams::new(&path)
        .read_only(true)
        .lock(LockMode::None);
    let image = match blk_factory::open_image(&params) {
        Ok(image) => image,
        Err(e) => {
            assert!(e.path().is_some(), "open error without a path: {e}");
            return;
        }
    };
    let disk = &*image.disk;
    let size = disk.logical_size();
    walk_map(disk, size);
    read_all(disk, size);
    if image
        .admin
        .image_info()
        .is_ok_and(|info| info.format == "raw")
    {
        // Raw is the identity: the guest sees exactly the bytes of the file.
        let mut all = vec![0u8; data.len()];
        disk.read_exact_at(0, &mut all)
            .expect("reading a raw image whole");
        assert!(all == data, "raw image reads back different bytes");
    }
    let mut byte = [0u8; 1];
    let err = disk
        .read_exact_at(size, &mut byte)
        .expect_err("a read past the end must fail");
    assert_eq!(err.kind(), ErrorKind::OutOfBounds, "{err}");
}

/// The map's runs tile `[0, size)` in order, each non-empty.
fn walk_map(disk: &dyn DiskFile, size: u64) {
    let mut offset = 0;
    while offset < size {
        let Ok(run) = disk.map(offset, size - offset) else {
            return;
        };
        assert_eq!(run.offset, offset, "map run starts elsewhere");
        assert!(
            run.length > 0 && run.length <= size - offset,
            "bad map run length {}",
            run.length
        );
        offset += run.length;
    }
}

/// Every byte of the disk reads, or fails with an error; runs the map calls zero read as zeros.
fn read_all(disk: &dyn DiskFile, size: u64) {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < size {
        let n = CHUNK.min(size - offset);
        // `n <= CHUNK`, which fits in usize.
        let chunk = &mut buf[..n as usize];
        if disk.read_exact_at(offset, chunk).is_ok() {
            if let Ok(run) = disk.map(offset, n) {
                if run.reads_as_zero() {
                    let len = run.length.min(n) as usize;
                    assert!(
                        chunk[..len].iter().all(|&b| b == 0),
                        "a zero run at {offset} reads non-zero"
                    );
                }
            }
        }
        offset += n;
    }
}
