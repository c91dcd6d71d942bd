//! Helpers shared by the integration tests: the backend (or a skip), buffers the kernel may fill after the
//! borrow checker has forgotten them, and waiting for completions; and, for every test, the workspace's
//! shared test support.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use blk_test_support::*;

use std::path::Path;
use std::time::{Duration, Instant};

use blk_aio::AioBackend;
use blk_core::{
    HostCompletion, HostFile, HostOpenOptions, HostQueue, HostQueueBackend, IoBuf, IoBufMut,
};

/// The backend, or `None` (the test returns early) where the kernel has no AIO.
pub fn backend() -> Option<AioBackend> {
    unless_unsupported(AioBackend::new())
}

/// A queue of `depth` over `files`.
pub fn queue(files: &[&HostFile], depth: u32) -> Option<Box<dyn HostQueue>> {
    let backend = backend()?;
    Some(
        backend
            .create_queue(files, depth)
            .expect("creating the queue"),
    )
}

/// `len` zero bytes at a 4096-aligned address, leaked so they outlive any operation (tests only: small).
pub fn leak_aligned(len: usize) -> &'static mut [u8] {
    let storage: &'static mut [u8] = Vec::leak(vec![0u8; len + 4096]);
    let start = storage.as_ptr().align_offset(4096).min(4096);
    &mut storage[start..start + len]
}

/// A read buffer over leaked, 4096-aligned memory holding `len` bytes.
pub fn read_buf(len: usize) -> IoBufMut<'static> {
    IoBufMut::from(leak_aligned(len))
}

/// A write buffer over leaked, 4096-aligned memory holding `data`.
pub fn write_buf(data: &[u8]) -> IoBuf<'static> {
    let mem = leak_aligned(data.len());
    mem.copy_from_slice(data);
    IoBuf::from(&*mem)
}

/// The bytes behind `buf` now.
pub fn contents(buf: &IoBufMut<'static>) -> Vec<u8> {
    let mut out = vec![0u8; buf.len()];
    buf.as_io_buf().copy_to(&mut out);
    out
}

/// A recognisable byte pattern: `len` bytes starting with `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// Waits (polling; a guard against hangs, not a timing assertion) until `count` completions came back.
pub fn wait_for(queue: &mut dyn HostQueue, count: usize) -> Vec<HostCompletion> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = Vec::with_capacity(count);
    while done.len() < count {
        match queue.next_completion() {
            Some(c) => done.push(c),
            None => {
                assert!(
                    Instant::now() < deadline,
                    "completions never came: {done:?}"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    done
}

/// The completion tagged `user_data`.
pub fn result_of(done: &[HostCompletion], user_data: u64) -> Result<u64, i32> {
    done.iter()
        .find(|c| c.user_data == user_data)
        .unwrap_or_else(|| panic!("no completion for {user_data}: {done:?}"))
        .result
}

/// A new file of `len` bytes holding `pattern(seed, len)`.
pub fn file_with_pattern(path: &Path, seed: u8, len: usize) -> HostFile {
    let file = HostFile::create(path, HostOpenOptions::default()).expect("creating the file");
    file.write_all_at(0, &pattern(seed, len))
        .expect("writing the pattern");
    file
}

/// Opens `path` with O_DIRECT, or `None` when the filesystem refuses it.
pub fn open_direct(path: &Path) -> Option<HostFile> {
    match HostFile::open(
        path,
        HostOpenOptions {
            direct: true,
            ..HostOpenOptions::default()
        },
    ) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("skipping O_DIRECT: {e}");
            None
        }
    }
}

/// Asserts that two byte strings are equal, reporting the first difference instead of both strings (the shared
/// [`assert_same_bytes`]).
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8]) {
    assert_same_bytes(got, want, "bytes");
}
