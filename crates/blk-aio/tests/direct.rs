//! AioQueue on O_DIRECT files, where AIO is really asynchronous: aligned I/O, EOF, misaligned operations,
//! dropping a queue with reads in the kernel.

mod common;

use blk_core::{HostOp, IoBuf, IoBufMut};
use common::*;

const MIB: usize = 1 << 20;

#[test]
fn aligned_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("direct.img");
    drop(file_with_pattern(&path, 11, MIB));
    let Some(file) = open_direct(&path) else {
        return;
    };
    let Some(mut queue) = queue(&[&file], 32) else {
        return;
    };

    let new_data = pattern(77, 3 * 4096);
    let writes = [write_buf(&new_data[..4096]), write_buf(&new_data[4096..])];
    let reads: Vec<_> = (0..32).map(|_| [read_buf(4096)]).collect();
    queue.push(1000, host_write(0, 768 * 1024, &writes));
    for (i, bufs) in reads.iter().enumerate() {
        queue.push(i as u64, host_read(0, (i * 4096 * 3) as u64, bufs));
    }
    queue.push(1001, HostOp::SyncData { file: 0 });
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 34);
    let original = pattern(11, MIB);
    for (i, bufs) in reads.iter().enumerate() {
        assert_eq!(result_of(&done, i as u64), Ok(4096));
        assert_bytes(&contents(&bufs[0]), &original[i * 12288..i * 12288 + 4096]);
    }
    assert_eq!(result_of(&done, 1000), Ok(3 * 4096));
    assert_eq!(result_of(&done, 1001), Ok(0));

    let back = [read_buf(3 * 4096)];
    queue.push(1, host_read(0, 768 * 1024, &back));
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 1), Ok(3 * 4096));
    assert_bytes(&contents(&back[0]), &new_data);
}

#[test]
fn short_read_at_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eof.img");
    drop(file_with_pattern(&path, 12, 3 * 4096));
    let Some(file) = open_direct(&path) else {
        return;
    };
    let Some(mut queue) = queue(&[&file], 2) else {
        return;
    };
    let bufs = [read_buf(8192)];
    queue.push(1, host_read(0, 2 * 4096, &bufs));
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 1), Ok(4096));
    assert_bytes(&contents(&bufs[0])[..4096], &pattern(12, 3 * 4096)[8192..]);
}

#[test]
fn misaligned_operations_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mis.img");
    drop(file_with_pattern(&path, 13, 65536));
    let Some(file) = open_direct(&path) else {
        return;
    };
    let Some(mut queue) = queue(&[&file], 4) else {
        return;
    };

    let memory = leak_aligned(8192);
    let misaligned = [IoBufMut::from(&mut memory[1..4097])];
    let odd_length = [read_buf(1000)];
    let aligned = [read_buf(4096)];
    let odd_write = [IoBuf::from(&*leak_aligned(4096))];
    queue.push(1, host_read(0, 0, &misaligned));
    queue.push(2, host_read(0, 4096, &odd_length));
    queue.push(3, host_write(0, 100, &odd_write));
    queue.push(4, host_read(0, 8192, &aligned));
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 4);
    assert_eq!(result_of(&done, 1), Err(libc::EINVAL));
    assert_eq!(result_of(&done, 2), Err(libc::EINVAL));
    assert_eq!(result_of(&done, 3), Err(libc::EINVAL));
    assert_eq!(result_of(&done, 4), Ok(4096));
    assert_bytes(&contents(&aligned[0]), &pattern(13, 65536)[8192..12288]);

    // The queue keeps working.
    let again = [read_buf(4096)];
    queue.push(5, host_read(0, 0, &again));
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 5), Ok(4096));
    assert_bytes(&contents(&again[0]), &pattern(13, 65536)[..4096]);
}

#[test]
fn dropping_with_reads_in_the_kernel_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.img");
    drop(file_with_pattern(&path, 14, 4 * MIB));
    let Some(file) = open_direct(&path) else {
        return;
    };
    let Some(mut queue) = queue(&[&file], 16) else {
        return;
    };
    let reads: Vec<_> = (0..16).map(|_| [read_buf(256 * 1024)]).collect();
    for (i, bufs) in reads.iter().enumerate() {
        queue.push(i as u64, host_read(0, (i * 256 * 1024) as u64, bufs));
    }
    queue.submit().unwrap();
    assert_eq!(queue.pending(), 16);
    drop(queue);
    let original = pattern(14, 4 * MIB);
    for (i, bufs) in reads.iter().enumerate() {
        assert_bytes(
            &contents(&bufs[0]),
            &original[i * 256 * 1024..(i + 1) * 256 * 1024],
        );
    }
}
