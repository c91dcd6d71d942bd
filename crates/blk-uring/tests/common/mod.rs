//! Helpers shared by the blk-uring integration tests; and, for every test, the workspace's shared test support.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use blk_test_support::*;

use std::os::fd::AsRawFd;

use blk_core::{HostCompletion, HostQueue, IoBuf, IoBufMut};
use blk_uring::UringBackend;

/// The backend, or `None` (with a note on stderr) when io_uring cannot be used on this host.
pub fn backend() -> Option<UringBackend> {
    unless_unsupported(UringBackend::new())
}

/// A `'static` view of `buf` for a host operation.
///
/// The tests keep `buf` alive and untouched until the operation's completion has been returned (or the queue
/// has been dropped, which waits for it).
pub fn buf_mut(buf: &mut [u8]) -> IoBufMut<'static> {
    // SAFETY: see the function docs: every caller keeps the memory alive and unaliased until completion.
    unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), buf.len()) }
}

/// A `'static` view of `buf` for a host write; as [`buf_mut`].
pub fn buf(buf: &[u8]) -> IoBuf<'static> {
    // SAFETY: as in `buf_mut`.
    unsafe { IoBuf::from_raw_parts(buf.as_ptr(), buf.len()) }
}

/// Waits (on the queue's eventfd, at most 20 s per wait) until `n` completions have been returned.
pub fn wait_for(queue: &mut dyn HostQueue, n: usize) -> Vec<HostCompletion> {
    let mut done = Vec::with_capacity(n);
    loop {
        while let Some(c) = queue.next_completion() {
            done.push(c);
        }
        if done.len() >= n {
            return done;
        }
        let mut pfd = libc::pollfd {
            fd: queue.notifier().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 20_000) };
        assert!(
            r != 0,
            "no completion signalled within 20 s ({} of {n} done)",
            done.len()
        );
        let _ = queue.notifier().read();
    }
}

/// A byte pattern that differs per position and seed.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
