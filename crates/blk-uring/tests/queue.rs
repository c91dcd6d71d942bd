//! Behaviour of io_uring queues on real temp files: batches, vectored I/O, many files, backlog, short reads,
//! errors, the eventfd, drop with operations in flight.

mod common;

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use blk_core::{ErrorKind, HostFile, HostOp, HostOpenOptions, HostQueue, HostQueueBackend};
use blk_test_support::{
    assert_pending_counts_the_backlog, host_read, host_write, page_size, GuardedMapping,
};
use common::{backend, buf, buf_mut, pattern, wait_for};

fn temp_file(dir: &tempfile::TempDir, name: &str, len: u64) -> HostFile {
    let file = HostFile::create(dir.path().join(name), HostOpenOptions::default()).unwrap();
    file.set_len(len).unwrap();
    file
}

fn by_user_data(done: Vec<blk_core::HostCompletion>) -> HashMap<u64, Result<u64, i32>> {
    let n = done.len();
    let map: HashMap<_, _> = done.into_iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(map.len(), n, "a completion was returned twice");
    map
}

#[test]
fn name_and_depth() {
    let Some(backend) = backend() else { return };
    assert_eq!(backend.name(), "io_uring");
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 4096);
    let err = backend.create_queue(&[&file], 0).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let q = backend.create_uring_queue(&[&file], 100_000).unwrap();
    assert_eq!(q.depth(), blk_uring::MAX_QUEUE_DEPTH);
    // Files are registered only with rings any thread may use (see the crate docs, "Threads").
    assert_eq!(q.files_registered(), !q.ring_setup().single_issuer);
    let q = backend.create_uring_queue(&[&file], 3).unwrap();
    assert_eq!(q.depth(), 3);
}

#[test]
fn mixed_batch_over_many_files_reads_back_what_was_written() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<HostFile> = (0..6)
        .map(|i| temp_file(&dir, &format!("f{i}"), 1 << 16))
        .collect();
    let refs: Vec<&HostFile> = files.iter().collect();
    let mut queue = backend.create_queue(&refs, 16).unwrap();
    drop(refs);

    // Vectored writes: three pieces per file, one of them empty; then a sync per file.
    let data: Vec<Vec<u8>> = (0..6).map(|i| pattern(i as u8, 3000)).collect();
    let mut bufs = Vec::new();
    for d in &data {
        bufs.push(vec![buf(&d[..1000]), buf(&d[1000..1000]), buf(&d[1000..])]);
    }
    for (i, b) in bufs.iter().enumerate() {
        queue.push(i as u64, host_write(i, 512 * i as u64 + 7, b));
    }
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 6));
    for i in 0..6u64 {
        assert_eq!(done[&i], Ok(3000));
    }
    for i in 0..6 {
        queue.push(100 + i as u64, HostOp::SyncData { file: i });
    }
    // Reads into two buffers each, in the same batch as the syncs.
    let mut back: Vec<(Vec<u8>, Vec<u8>)> =
        (0..6).map(|_| (vec![0; 1234], vec![0; 1766])).collect();
    let read_bufs: Vec<_> = back
        .iter_mut()
        .map(|(a, b)| [buf_mut(a), buf_mut(b)])
        .collect();
    for (i, b) in read_bufs.iter().enumerate() {
        queue.push(200 + i as u64, host_read(i, 512 * i as u64 + 7, b));
    }
    assert_eq!(queue.pending(), 12);
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 12));
    assert_eq!(queue.pending(), 0);
    for i in 0..6u64 {
        assert_eq!(done[&(100 + i)], Ok(0));
        assert_eq!(done[&(200 + i)], Ok(3000));
    }
    drop(read_bufs);
    for (i, (a, b)) in back.iter().enumerate() {
        assert_eq!([&a[..], &b[..]].concat(), data[i]);
        // The host file agrees.
        let mut direct = vec![0; 3000];
        files[i]
            .read_exact_at(512 * i as u64 + 7, &mut direct)
            .unwrap();
        assert_eq!(direct, data[i]);
    }
    assert!(queue.next_completion().is_none());
}

#[test]
fn backlog_of_ten_times_the_depth_completes_with_correct_data() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    let depth = 8;
    let mut queue = backend.create_uring_queue(&[&file], depth).unwrap();
    let n = 10 * depth as usize;
    let data: Vec<Vec<u8>> = (0..n).map(|i| pattern(i as u8, 4096)).collect();
    let bufs: Vec<_> = data.iter().map(|d| [buf(d)]).collect();
    for (i, b) in bufs.iter().enumerate() {
        queue.push(i as u64, host_write(0, 4096 * i as u64, b));
    }
    queue.submit().unwrap();
    assert!(
        queue.backlog() > 0,
        "the ring should not take more than its depth"
    );
    let done = by_user_data(wait_for(&mut queue, n));
    assert!((0..n as u64).all(|i| done[&i] == Ok(4096)));

    let mut back = vec![vec![0u8; 4096]; n];
    let read_bufs: Vec<_> = back.iter_mut().map(|b| [buf_mut(b)]).collect();
    for (i, b) in read_bufs.iter().enumerate() {
        queue.push(i as u64, host_read(0, 4096 * i as u64, b));
    }
    queue.submit().unwrap();
    let done = by_user_data(wait_for(&mut queue, n));
    assert!((0..n as u64).all(|i| done[&i] == Ok(4096)));
    drop(read_bufs);
    assert_eq!(back, data);
}

#[test]
fn more_buffers_than_iov_max_in_one_operation() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    let data = pattern(3, 3000 * 8);
    let bufs: Vec<_> = data.chunks(8).map(buf).collect();
    queue.push(1, host_write(0, 100, &bufs));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(24000));
    let mut back = vec![0u8; 24000];
    let read_bufs: Vec<_> = back.chunks_mut(8).map(buf_mut).collect();
    queue.push(2, host_read(0, 100, &read_bufs));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(24000));
    drop(read_bufs);
    assert_eq!(back, data);
}

#[test]
fn reads_past_the_end_give_short_counts() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    file.write_all_at(0, &pattern(9, 1000)).unwrap();
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    let mut a = vec![0xffu8; 4096];
    let mut b1 = vec![0xffu8; 600];
    let mut b2 = vec![0xffu8; 600];
    let mut c = vec![0xffu8; 512];
    let ba = [buf_mut(&mut a)];
    let bb = [buf_mut(&mut b1), buf_mut(&mut b2)];
    let bc = [buf_mut(&mut c)];
    queue.push(1, host_read(0, 0, &ba));
    queue.push(2, host_read(0, 0, &bb));
    queue.push(3, host_read(0, 5000, &bc));
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 3));
    assert_eq!(done[&1], Ok(1000));
    assert_eq!(done[&2], Ok(1000));
    assert_eq!(done[&3], Ok(0));
    assert_eq!(&a[..1000], &pattern(9, 1000)[..]);
    assert_eq!([&b1[..], &b2[..400]].concat(), pattern(9, 1000));
}

#[test]
fn bad_operations_fail_alone_and_the_queue_keeps_working() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let writable = temp_file(&dir, "rw", 8192);
    drop(writable);
    let read_only = HostFile::open(
        dir.path().join("rw"),
        HostOpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut queue = backend.create_queue(&[&read_only], 4).unwrap();
    let data = [1u8; 512];
    let wb = [buf(&data)];
    let mut back = [0u8; 512];
    let rb = [buf_mut(&mut back)];
    queue.push(1, host_write(0, 0, &wb));
    queue.push(2, host_read(7, 0, &rb));
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 2));
    assert_eq!(done[&1], Err(libc::EBADF));
    assert_eq!(done[&2], Err(libc::EBADF));
    queue.push(3, host_read(0, 0, &rb));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(512));
}

/// An aligned buffer inside `storage`.
fn aligned(storage: &mut [u8], align: usize, len: usize) -> &mut [u8] {
    let skip = storage.as_ptr().align_offset(align);
    &mut storage[skip..skip + len]
}

#[test]
fn misaligned_o_direct_read_fails_with_einval_and_the_queue_keeps_working() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("direct");
    let plain = temp_file(&dir, "direct", 0);
    let data = pattern(5, 65536 + 100);
    plain.write_all_at(0, &data).unwrap();
    plain.sync_data().unwrap();
    drop(plain);
    let file = match HostFile::open(
        &path,
        HostOpenOptions {
            direct: true,
            ..Default::default()
        },
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipping: O_DIRECT not supported here: {e}");
            return;
        }
    };
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(flags & libc::O_DIRECT, 0);
    let align = file
        .direct_io_alignment()
        .map_or(4096, |a| a.memory.max(a.offset) as usize)
        .max(512);
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    let mut storage = vec![0u8; 8 * align];
    let region = aligned(&mut storage, align, 4 * align);
    let (good, rest) = region.split_at_mut(2 * align);
    // Misaligned offset, then a misaligned length, then an aligned read: only the last one succeeds.
    let good_bufs = [buf_mut(good)];
    let bad_len = [buf_mut(&mut rest[..align + 1])];
    queue.push(1, host_read(0, 1, &good_bufs));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Err(libc::EINVAL));
    queue.push(2, host_read(0, 0, &bad_len));
    queue.push(3, host_read(0, align as u64, &good_bufs));
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 2));
    assert_eq!(done[&2], Err(libc::EINVAL));
    assert_eq!(done[&3], Ok(2 * align as u64));
    assert_eq!(&good[..], &data[align..3 * align]);
    // A read across the unaligned end of the file: the kernel transfers up to the end, the rest cannot go on
    // unaligned; the completion reports the bytes read.
    queue.push(4, host_read(0, 65536, &good_bufs));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(100));
    assert_eq!(&good[..100], &data[65536..]);
}

#[test]
fn the_eventfd_is_signalled_for_kernel_and_local_completions() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 4096);
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    assert!(queue.notifier().read().is_err(), "nothing signalled yet");
    queue.push(1, HostOp::SyncData { file: 0 });
    queue.submit().unwrap();
    let mut pfd = libc::pollfd {
        fd: queue.notifier().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 20_000) }, 1);
    assert!(queue.notifier().read().unwrap() >= 1);
    assert_eq!(queue.next_completion().map(|c| c.result), Some(Ok(0)));
    // A completion made without the kernel (unknown file) is signalled too.
    queue.push(2, HostOp::SyncData { file: 3 });
    queue.submit().unwrap();
    assert!(queue.notifier().read().unwrap() >= 1);
    assert_eq!(
        queue.next_completion().map(|c| c.result),
        Some(Err(libc::EBADF))
    );
}

#[test]
fn dropping_a_queue_waits_for_operations_in_flight() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    let data = pattern(77, 64 * 4096);
    file.write_all_at(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    {
        let mut queue = backend.create_queue(&[&file], 16).unwrap();
        let bufs: Vec<_> = back.chunks_mut(4096).map(|c| [buf_mut(c)]).collect();
        for (i, b) in bufs.iter().enumerate() {
            queue.push(i as u64, host_read(0, 4096 * i as u64, b));
        }
        queue.submit().unwrap();
        // Dropped here with up to 16 reads in the kernel and the rest in the backlog.
    }
    // What went to the kernel landed before the drop returned; the backlog was dropped unexecuted.
    let landed = back
        .chunks(4096)
        .zip(data.chunks(4096))
        .filter(|(b, d)| b == d)
        .count();
    assert!(landed >= 16, "{landed} reads landed");
    assert!(back
        .chunks(4096)
        .zip(data.chunks(4096))
        .all(|(b, d)| b == d || b.iter().all(|&x| x == 0)));
}

#[test]
fn the_queue_outlives_its_host_files() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    file.write_all_at(0, b"still here").unwrap();
    let mut queue = backend.create_queue(&[&file], 2).unwrap();
    drop(file);
    let mut back = [0u8; 10];
    let b = [buf_mut(&mut back)];
    queue.push(1, host_read(0, 0, &b));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(10));
    assert_eq!(&back, b"still here");
}

#[test]
fn queues_on_cloned_files_work_from_threads() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 4 * 65536);
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let clone = file.try_clone().unwrap();
            let mut queue = backend.create_queue(&[&clone], 4).unwrap();
            std::thread::spawn(move || {
                let data = pattern(t, 65536);
                let bufs: Vec<_> = data.chunks(4096).map(|c| [buf(c)]).collect();
                for (i, b) in bufs.iter().enumerate() {
                    let offset = u64::from(t) * 65536 + 4096 * i as u64;
                    queue.push(i as u64, host_write(0, offset, b));
                }
                queue.push(99, HostOp::SyncData { file: 0 });
                queue.submit().unwrap();
                let done = wait_for(queue.as_mut(), bufs.len() + 1);
                assert!(done.iter().all(|c| c.result.is_ok()));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut back = vec![0u8; 4 * 65536];
    file.read_exact_at(0, &mut back).unwrap();
    for t in 0..4u8 {
        assert_eq!(&back[t as usize * 65536..][..65536], &pattern(t, 65536)[..]);
    }
}

#[test]
fn registered_buffers_are_used_for_single_buffer_operations() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 1 << 20);
    let mut queue = backend.create_uring_queue(&[&file], 8).unwrap();
    // The "guest memory": two regions, kept alive past the queue.
    let mut region_a = vec![0u8; 256 * 1024];
    let mut region_b = vec![0u8; 64 * 1024];
    let regions = [buf_mut(&mut region_a), buf_mut(&mut region_b)];
    // SAFETY: both vectors outlive the queue (dropped at the end of the test, after it).
    unsafe { queue.register_buffers(&regions) }.unwrap();
    // SAFETY: as above.
    let again = unsafe { queue.register_buffers(&regions) }.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidInput);

    let data = pattern(42, 8192);
    region_a[4096..4096 + 8192].copy_from_slice(&data);
    let outside = pattern(43, 4096);
    let w1 = [buf(&region_a[4096..4096 + 8192])];
    let w2 = [buf(&outside)];
    queue.push(1, host_write(0, 0, &w1));
    queue.push(2, host_write(0, 8192, &w2));
    queue.submit().unwrap();
    let done = by_user_data(wait_for(&mut queue, 2));
    assert_eq!((done[&1], done[&2]), (Ok(8192), Ok(4096)));
    assert_eq!(queue.fixed_buffer_ops(), 1);

    let r1 = [buf_mut(&mut region_b[100..100 + 12288])];
    queue.push(3, host_read(0, 0, &r1));
    queue.submit().unwrap();
    assert_eq!(wait_for(&mut queue, 1)[0].result, Ok(12288));
    assert_eq!(queue.fixed_buffer_ops(), 2);
    drop(queue);
    assert_eq!(&region_b[100..100 + 8192], &data[..]);
    assert_eq!(&region_b[100 + 8192..100 + 12288], &outside[..]);
}

#[test]
fn dropping_the_queue_releases_the_image_lock_at_once() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked");
    for _ in 0..3 {
        let file = HostFile::create(&path, HostOpenOptions::default()).unwrap();
        let queue = backend.create_queue(&[&file], 2).unwrap();
        drop(file);
        // The registered file keeps the open file description, and so its lock, while the queue lives.
        let err = HostFile::open(&path, HostOpenOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        drop(queue);
        // No retry here (HostFile::open retries a conflict for a while; qemu does not).
        assert!(!lock_bytes_held(&path), "a lock outlived the queue");
        HostFile::open(&path, HostOpenOptions::default()).unwrap();
    }
}

/// Whether any process or open file description holds a lock on the bytes QEMU's scheme uses.
fn lock_bytes_held(path: &std::path::Path) -> bool {
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: an all-zero flock is a valid value; the fields are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 100;
    lock.l_len = 200;
    // SAFETY: F_OFD_GETLK reads and fills one flock we own, on a descriptor we own.
    let r = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    lock.l_type != libc::F_UNLCK as libc::c_short
}

/// A read whose buffers run into an inaccessible page: the kernel reads what fits (a short step), and the
/// continuation fails with EFAULT. The read fails with it: the file goes on, so this is no end of file (the
/// engine would zero-fill a short read). A read over the same range into good memory, and a read across the
/// end of the file, still complete with their bytes.
#[test]
fn an_error_after_a_partial_read_fails_the_read() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = page_size();
    let file = temp_file(&dir, "a", 0);
    file.write_all_at(0, &pattern(4, 4 * page)).unwrap();
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    let single = GuardedMapping::new(1);
    let single_bufs = [single.read_buf(2 * page)];
    let guarded = GuardedMapping::new(1);
    let mut head = vec![0u8; page];
    let vectored_bufs = [buf_mut(&mut head), guarded.read_buf(2 * page)];
    let mut good = vec![0u8; 4 * page];
    let good_bufs = [buf_mut(&mut good)];
    queue.push(1, host_read(0, 0, &single_bufs));
    queue.push(2, host_read(0, 0, &vectored_bufs));
    queue.push(3, host_read(0, page as u64, &good_bufs));
    queue.submit().unwrap();
    let done = by_user_data(wait_for(queue.as_mut(), 3));
    assert_eq!(done[&1], Err(libc::EFAULT));
    assert_eq!(done[&2], Err(libc::EFAULT));
    assert_eq!(done[&3], Ok(3 * page as u64));
    assert_eq!(queue.pending(), 0);
    assert_eq!(single.accessible(), &pattern(4, page)[..]);
    assert_eq!(head, &pattern(4, page)[..]);
    assert_eq!(guarded.accessible(), &pattern(4, 2 * page)[page..]);
}

/// `pending()` is pushes minus completions returned, whatever the queue does in between; dropping the queue
/// waits for what the kernel holds and discards the backlog unexecuted.
#[test]
fn pending_is_exact_and_drop_discards_the_backlog() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "a", 0);
    file.write_all_at(0, &[0u8; 8192]).unwrap();
    let data = pattern(6, 512);
    let wb = [buf(&data)];
    let mut queue = backend.create_queue(&[&file], 2).unwrap();
    assert_pending_counts_the_backlog(queue.as_mut(), &wb);

    // One write in the ring, three in the backlog: the drop waits for the first and discards the others.
    let mut queue = backend.create_queue(&[&file], 1).unwrap();
    let other = pattern(7, 512);
    let ob = [buf(&other)];
    for i in 0..4u64 {
        queue.push(10 + i, host_write(0, 4096 + i * 1024, &ob));
    }
    queue.submit().unwrap();
    assert_eq!(queue.pending(), 4);
    drop(queue);
    let mut back = vec![0u8; 512];
    file.read_exact_at(4096, &mut back).unwrap();
    assert_eq!(back, other);
    for i in 1..4u64 {
        file.read_exact_at(4096 + i * 1024, &mut back).unwrap();
        assert_eq!(back, [0u8; 512], "a backlogged write ran");
    }
}

#[test]
fn waiting_in_the_ring_returns_once_completions_are_ready() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "w", 1 << 20);
    let mut queue = backend.create_uring_queue(&[&file], 8).unwrap();
    let single_issuer = queue.ring_setup().single_issuer;
    assert!(
        !queue.wait_for_completion(None).unwrap(),
        "nothing in the kernel: nothing to wait for"
    );
    let mut storage = vec![0u8; 4 * 4096];
    let bufs: Vec<[blk_core::IoBufMut<'static>; 1]> =
        storage.chunks_mut(4096).map(|c| [buf_mut(c)]).collect();
    for (i, b) in bufs.iter().enumerate() {
        queue.push(i as u64, host_read(0, i as u64 * 8192, b));
    }
    queue.submit().unwrap();
    let mut done = Vec::new();
    while done.len() < bufs.len() {
        // Returns with something ready, or says it cannot wait (the completions were posted already).
        queue
            .wait_for_completion(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        while let Some(c) = queue.next_completion() {
            done.push(c);
        }
    }
    assert!(by_user_data(done).values().all(|r| *r == Ok(4096)));
    assert!(!queue.wait_for_completion(None).unwrap(), "idle again");
    // A thread that does not own a single-issuer ring never sleeps in it: its completions are the owner's
    // task work.
    queue.push(9, host_read(0, 0, &bufs[0]));
    queue.submit().unwrap();
    let (waited, done) = std::thread::scope(|s| {
        s.spawn(|| {
            let waited = queue.wait_for_completion(None).unwrap();
            (waited, wait_for(&mut queue, 1))
        })
        .join()
        .unwrap()
    });
    assert_eq!(done[0].result, Ok(4096));
    if single_issuer {
        assert!(!waited);
    }
    drop(queue);
    drop(storage);
}
