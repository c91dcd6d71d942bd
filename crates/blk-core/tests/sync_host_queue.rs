//! `SyncHostBackend`'s queues and `HostFile`'s reads when the memory a read fills ends in a guard page: an error
//! after a partial transfer fails the read (it is not the end of the file).

use blk_core::{HostFile, HostOpenOptions, HostQueueBackend, SyncHostBackend};
use blk_test_support::{host_read, page_size, GuardedMapping};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn an_error_after_a_partial_read_fails_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = HostFile::create(dir.path().join("f"), HostOpenOptions::default()).unwrap();
    let page = page_size();
    file.write_all_at(0, &pattern(4 * page)).unwrap();
    let memory = GuardedMapping::new(1);
    // The first page is ours until the queue is dropped; the kernel, the only one writing here, stops at the
    // guard page after it with EFAULT instead of writing.
    let bufs = [memory.read_buf(2 * page)];
    let mut queue = SyncHostBackend.create_queue(&[&file], 4).unwrap();
    queue.push(1, host_read(0, 0, &bufs));
    queue.submit().unwrap();
    // The first step reads one page; the next one faults: the read fails, it is not the end of the file.
    let done = queue.next_completion().unwrap();
    assert_eq!(done.result, Err(libc::EFAULT));
    // HostFile's own reads follow the same rule.
    let err = file.read_vectored_at(0, &bufs).unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    // The first page is readable and no longer written by anyone.
    let first = memory.accessible();
    assert_eq!(first, &pattern(page)[..]);
}
