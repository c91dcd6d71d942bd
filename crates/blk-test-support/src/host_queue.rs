//! Testing a backend's [`HostQueue`]s: probing the backend, building operations, taking completions.

use blk_core::{ErrorKind, HostCompletion, HostOp, HostQueue, IoBuf, IoBufMut, Result};

/// What a backend's availability probe made, or `None` (with a note on stderr: the test returns early) when
/// the host does not support the backend; any other failure panics.
pub fn unless_unsupported<T>(probe: Result<T>) -> Option<T> {
    match probe {
        Ok(backend) => Some(backend),
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("probing the backend failed unexpectedly: {e}"),
    }
}

/// A read of the queue's file `file` at `offset` into `bufs`.
pub fn host_read<'a>(file: usize, offset: u64, bufs: &'a [IoBufMut<'static>]) -> HostOp<'a> {
    HostOp::Read { file, offset, bufs }
}

/// A write of `bufs` at `offset` of the queue's file `file`.
pub fn host_write<'a>(file: usize, offset: u64, bufs: &'a [IoBuf<'static>]) -> HostOp<'a> {
    HostOp::Write { file, offset, bufs }
}

/// Takes `n` completions one poll at a time (yielding while there is none), asserting after every poll that
/// `pending()` is `n` minus the completions taken so far.
pub fn take_counting_pending(queue: &mut dyn HostQueue, n: usize) -> Vec<HostCompletion> {
    let mut returned = Vec::new();
    while returned.len() < n {
        match queue.next_completion() {
            Some(c) => returned.push(c),
            None => std::thread::yield_now(),
        }
        assert_eq!(queue.pending(), n - returned.len());
    }
    returned
}

/// On `queue` (a queue of depth 2 over one file): pushes six writes of `data` (512 bytes) at 0, 512, ... 2560
/// of file 0 and an fdatasync of file 3, which the queue does not have, and asserts that `pending()` counts all
/// seven before and after the submit and while their completions are taken one by one, that the writes
/// complete with 512 bytes and the sync with `EBADF`.
pub fn assert_pending_counts_the_backlog(queue: &mut dyn HostQueue, data: &[IoBuf<'static>]) {
    for i in 0..6u64 {
        queue.push(i, host_write(0, i * 512, data));
    }
    queue.push(6, HostOp::SyncData { file: 3 });
    assert_eq!(queue.pending(), 7);
    queue.submit().unwrap();
    assert_eq!(queue.pending(), 7);
    for c in take_counting_pending(queue, 7) {
        let expected = if c.user_data == 6 {
            Err(libc::EBADF)
        } else {
            Ok(512)
        };
        assert_eq!(c.result, expected, "operation {}", c.user_data);
    }
}
