//! AioQueue on buffered files: batches, vectored I/O, several files, the backlog, EOF, errors, notification.

mod common;

use blk_core::{HostFile, HostOp, HostOpenOptions, HostQueueBackend};
use common::*;

const MIB: usize = 1 << 20;

#[test]
fn backend_is_named_aio() {
    let Some(backend) = backend() else { return };
    assert_eq!(backend.name(), "aio");
    assert_eq!(blk_aio::BACKEND_NAME, "aio");
}

#[test]
fn the_registration_answers_to_aio_and_native() {
    let descriptor = blk_aio::BACKEND;
    assert_eq!(descriptor.name(), "aio");
    assert_eq!(descriptor.aliases(), ["native"]);
    match descriptor.probe() {
        Ok(backend) => assert_eq!(backend.name(), "aio"),
        Err(e) => {
            assert_eq!(e.kind(), blk_core::ErrorKind::Unsupported);
            assert!(
                e.to_string().starts_with("Linux AIO is not available: "),
                "{e}"
            );
        }
    }
}

#[test]
fn mixed_batch_of_reads_writes_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("a.img"), 1, MIB);
    let Some(mut queue) = queue(&[&file], 16) else {
        return;
    };

    let reads: Vec<_> = (0..4).map(|_| [read_buf(4096)]).collect();
    let new_data: Vec<Vec<u8>> = (0..4).map(|i| pattern(100 + i as u8, 8192)).collect();
    let writes: Vec<_> = new_data.iter().map(|d| [write_buf(d)]).collect();
    for i in 0..4u64 {
        queue.push(i, host_read(0, i * 65536, &reads[i as usize]));
        queue.push(
            10 + i,
            host_write(0, 512 * 1024 + i * 65536, &writes[i as usize]),
        );
    }
    queue.push(20, HostOp::SyncData { file: 0 });
    assert_eq!(queue.pending(), 9);
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 9);
    assert_eq!(queue.pending(), 0);
    assert!(queue.next_completion().is_none());

    let original = pattern(1, MIB);
    for i in 0..4usize {
        assert_eq!(result_of(&done, i as u64), Ok(4096));
        assert_bytes(
            &contents(&reads[i][0]),
            &original[i * 65536..i * 65536 + 4096],
        );
        assert_eq!(result_of(&done, 10 + i as u64), Ok(8192));
        let mut back = vec![0u8; 8192];
        file.read_exact_at((512 * 1024 + i * 65536) as u64, &mut back)
            .unwrap();
        assert_bytes(&back, &new_data[i]);
    }
    assert_eq!(result_of(&done, 20), Ok(0));
}

#[test]
fn vectored_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("v.img"), 7, 65536);
    let Some(mut queue) = queue(&[&file], 8) else {
        return;
    };

    let data = pattern(42, 3000);
    let pieces = [
        write_buf(&data[..1000]),
        write_buf(&data[1000..1001]),
        write_buf(&data[1001..]),
    ];
    queue.push(1, host_write(0, 10_000, &pieces));
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 1), Ok(3000));

    let targets = [read_buf(10), read_buf(2000), read_buf(990)];
    queue.push(2, host_read(0, 10_000, &targets));
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 2), Ok(3000));
    let joined: Vec<u8> = targets.iter().flat_map(contents).collect();
    assert_bytes(&joined, &data);
}

#[test]
fn several_files_and_a_bad_file_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = file_with_pattern(&dir.path().join("a.img"), 1, 65536);
    let b = file_with_pattern(&dir.path().join("b.img"), 2, 65536);
    let Some(mut queue) = queue(&[&a, &b], 4) else {
        return;
    };
    // The queue keeps its own descriptors.
    drop(a);

    let ra = [read_buf(100)];
    let rb = [read_buf(100)];
    let wb = [write_buf(b"written to b")];
    queue.push(1, host_read(0, 1000, &ra));
    queue.push(2, host_read(1, 1000, &rb));
    queue.push(3, host_write(1, 0, &wb));
    queue.push(4, HostOp::SyncData { file: 1 });
    queue.push(5, host_read(2, 0, &rb));
    queue.push(6, HostOp::SyncData { file: 7 });
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 6);
    assert_eq!(result_of(&done, 1), Ok(100));
    assert_bytes(&contents(&ra[0]), &pattern(1, 65536)[1000..1100]);
    assert_eq!(result_of(&done, 2), Ok(100));
    assert_bytes(&contents(&rb[0]), &pattern(2, 65536)[1000..1100]);
    assert_eq!(result_of(&done, 3), Ok(12));
    assert_eq!(result_of(&done, 4), Ok(0));
    assert_eq!(result_of(&done, 5), Err(libc::EBADF));
    assert_eq!(result_of(&done, 6), Err(libc::EBADF));
    let mut back = [0u8; 12];
    b.read_exact_at(0, &mut back).unwrap();
    assert_eq!(&back, b"written to b");
}

#[test]
fn backlog_of_ten_times_the_depth() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("b.img"), 3, 4096 * 40);
    let Some(mut queue) = queue(&[&file], 4) else {
        return;
    };

    let data: Vec<Vec<u8>> = (0..20).map(|i| pattern(i as u8 * 3, 4096)).collect();
    let writes: Vec<_> = data.iter().map(|d| [write_buf(d)]).collect();
    let reads: Vec<_> = (0..20).map(|_| [read_buf(4096)]).collect();
    for i in 0..20usize {
        queue.push(i as u64, host_write(0, (i * 4096) as u64, &writes[i]));
        queue.push(
            100 + i as u64,
            host_read(0, ((20 + i) * 4096) as u64, &reads[i]),
        );
    }
    assert_eq!(queue.pending(), 40);
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 40);
    assert_eq!(queue.pending(), 0);
    let original = pattern(3, 4096 * 40);
    for i in 0..20usize {
        assert_eq!(result_of(&done, i as u64), Ok(4096));
        assert_eq!(result_of(&done, 100 + i as u64), Ok(4096));
        assert_bytes(
            &contents(&reads[i][0]),
            &original[(20 + i) * 4096..(21 + i) * 4096],
        );
        let mut back = vec![0u8; 4096];
        file.read_exact_at((i * 4096) as u64, &mut back).unwrap();
        assert_bytes(&back, &data[i]);
    }
}

#[test]
fn nothing_reaches_the_kernel_before_submit() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("s.img"), 0, 65536);
    let Some(mut queue) = queue(&[&file], 1) else {
        return;
    };

    let first = [write_buf(b"first")];
    let second = [write_buf(b"second")];
    queue.push(1, host_write(0, 0, &first));
    assert!(queue.next_completion().is_none());
    queue.submit().unwrap();
    // Pushed after the submit, into the backlog (the one slot is busy): must wait for the next submit even
    // though reaping the first frees the slot.
    queue.push(2, host_write(0, 100, &second));
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 1), Ok(5));
    for _ in 0..20 {
        assert!(queue.next_completion().is_none());
    }
    assert_eq!(queue.pending(), 1);
    let mut back = [0u8; 6];
    file.read_exact_at(100, &mut back).unwrap();
    assert_eq!(&back, &pattern(0, 65536)[100..106]);
    queue.submit().unwrap();
    assert_eq!(result_of(&wait_for(&mut *queue, 1), 2), Ok(6));
    file.read_exact_at(100, &mut back).unwrap();
    assert_eq!(&back, b"second");
}

#[test]
fn short_read_at_end_of_file_and_zero_length_ops() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("e.img"), 9, 10_000);
    let Some(mut queue) = queue(&[&file], 4) else {
        return;
    };

    let tail = [read_buf(4096)];
    let past = [read_buf(512)];
    let nothing: [blk_core::IoBufMut<'static>; 0] = [];
    queue.push(1, host_read(0, 8192, &tail));
    queue.push(2, host_read(0, 20_000, &past));
    queue.push(3, host_read(0, 0, &nothing));
    queue.push(4, host_read(0, u64::MAX - 10, &past));
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 4);
    assert_eq!(result_of(&done, 1), Ok(10_000 - 8192));
    assert_bytes(
        &contents(&tail[0])[..10_000 - 8192],
        &pattern(9, 10_000)[8192..],
    );
    assert_eq!(result_of(&done, 2), Ok(0));
    assert_eq!(result_of(&done, 3), Ok(0));
    assert_eq!(result_of(&done, 4), Err(libc::EINVAL));
}

#[test]
fn write_to_a_read_only_file_fails_with_ebadf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    drop(file_with_pattern(&path, 5, 8192));
    let ro = HostFile::open(
        &path,
        HostOpenOptions {
            read_only: true,
            ..HostOpenOptions::default()
        },
    )
    .unwrap();
    let Some(mut queue) = queue(&[&ro], 2) else {
        return;
    };
    let w = [write_buf(b"nope")];
    let r = [read_buf(4)];
    queue.push(1, host_write(0, 0, &w));
    queue.push(2, host_read(0, 0, &r));
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 2);
    assert_eq!(result_of(&done, 1), Err(libc::EBADF));
    assert_eq!(result_of(&done, 2), Ok(4));
    assert_bytes(&contents(&r[0]), &pattern(5, 4));
}

#[test]
fn the_eventfd_is_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("n.img"), 4, 65536);
    let Some(mut queue) = queue(&[&file], 4) else {
        return;
    };
    assert!(queue.notifier().read().is_err(), "nothing signalled yet");

    let r = [read_buf(4096)];
    queue.push(1, host_read(0, 0, &r));
    queue.push(2, HostOp::SyncData { file: 0 });
    queue.submit().unwrap();
    // Wait on the eventfd alone, as a VMM's event loop does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut signalled = 0;
    while signalled < 2 {
        match queue.notifier().read() {
            Ok(n) => signalled += n,
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "eventfd never signalled"
                );
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
    let done = wait_for(&mut *queue, 2);
    assert_eq!(result_of(&done, 1), Ok(4096));
    assert_eq!(result_of(&done, 2), Ok(0));
}

#[test]
fn dropping_with_operations_in_flight_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("d.img"), 6, 4 * MIB);
    let Some(mut queue) = queue(&[&file], 8) else {
        return;
    };
    let reads: Vec<_> = (0..16).map(|_| [read_buf(256 * 1024)]).collect();
    for (i, bufs) in reads.iter().enumerate() {
        queue.push(i as u64, host_read(0, (i * 256 * 1024) as u64, bufs));
    }
    queue.submit().unwrap();
    drop(queue);
    // Everything submitted before the drop has landed (8 were in the kernel, 8 never left the backlog).
    let original = pattern(6, 4 * MIB);
    for (i, bufs) in reads.iter().take(8).enumerate() {
        assert_bytes(
            &contents(&bufs[0]),
            &original[i * 256 * 1024..(i + 1) * 256 * 1024],
        );
    }
}

#[test]
fn an_operation_the_kernel_refuses_mid_batch_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("p.img"), 8, 65536);
    let Some(mut queue) = queue(&[&file], 8) else {
        return;
    };
    // More iovecs than the kernel's UIO_MAXIOV (1024): io_submit refuses this iocb after taking the first
    // one of the batch, and the rest of the batch goes in another call.
    let memory = leak_aligned(2048);
    let too_many: Vec<blk_core::IoBufMut<'static>> =
        memory.chunks_mut(1).map(blk_core::IoBufMut::from).collect();
    let before = [read_buf(100)];
    let after = [read_buf(100)];
    queue.push(1, host_read(0, 0, &before));
    queue.push(2, host_read(0, 0, &too_many));
    queue.push(3, host_read(0, 200, &after));
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 3);
    assert_eq!(result_of(&done, 1), Ok(100));
    assert_eq!(result_of(&done, 2), Err(libc::EINVAL));
    assert_eq!(result_of(&done, 3), Ok(100));
    assert_bytes(&contents(&after[0]), &pattern(8, 65536)[200..300]);
}

/// A read whose buffers run into an inaccessible page: the kernel reads what fits (a short event), the rest
/// goes out again and fails with EFAULT, and so does the read: the file goes on, so this is no end of file (the
/// engine would zero-fill a short read). The queue keeps working.
#[test]
fn an_error_after_a_partial_read_fails_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let page = page_size();
    let file = file_with_pattern(&dir.path().join("g.img"), 5, 4 * page);
    let Some(mut queue) = queue(&[&file], 4) else {
        return;
    };
    let single = GuardedMapping::new(1);
    let single_bufs = [single.read_buf(2 * page)];
    let guarded = GuardedMapping::new(1);
    let head = [read_buf(page)];
    let vectored_bufs = [head[0], guarded.read_buf(2 * page)];
    let good = [read_buf(4 * page)];
    queue.push(1, host_read(0, 0, &single_bufs));
    queue.push(2, host_read(0, 0, &vectored_bufs));
    queue.push(3, host_read(0, page as u64, &good));
    queue.submit().unwrap();
    let done = wait_for(&mut *queue, 3);
    assert_eq!(result_of(&done, 1), Err(libc::EFAULT));
    assert_eq!(result_of(&done, 2), Err(libc::EFAULT));
    assert_eq!(result_of(&done, 3), Ok(3 * page as u64));
    assert_eq!(queue.pending(), 0);
    let original = pattern(5, 4 * page);
    assert_bytes(single.accessible(), &original[..page]);
    assert_bytes(&contents(&head[0]), &original[..page]);
    assert_bytes(guarded.accessible(), &original[page..2 * page]);
    assert_bytes(&contents(&good[0])[..3 * page], &original[page..]);
}

/// `pending()` is pushes minus completions returned, whatever the queue does in between; dropping the queue
/// waits for what the kernel holds and discards the backlog unexecuted.
#[test]
fn pending_is_exact_and_drop_discards_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_with_pattern(&dir.path().join("p.img"), 0, 8192);
    let Some(mut queue) = queue(&[&file], 2) else {
        return;
    };
    let data = [write_buf(&pattern(6, 512))];
    assert_pending_counts_the_backlog(queue.as_mut(), &data);

    // One write in the kernel, three in the backlog: the drop waits for the first and discards the others.
    let Some(mut queue) = common::queue(&[&file], 1) else {
        return;
    };
    let other = [write_buf(&pattern(7, 512))];
    for i in 0..4u64 {
        queue.push(10 + i, host_write(0, 4096 + i * 1024, &other));
    }
    queue.submit().unwrap();
    assert_eq!(queue.pending(), 4);
    drop(queue);
    let mut back = vec![0u8; 512];
    file.read_exact_at(4096, &mut back).unwrap();
    assert_bytes(&back, &pattern(7, 512));
    let original = pattern(0, 8192);
    for i in 1..4usize {
        file.read_exact_at((4096 + i * 1024) as u64, &mut back)
            .unwrap();
        assert_bytes(&back, &original[4096 + i * 1024..4096 + i * 1024 + 512]);
    }
}
