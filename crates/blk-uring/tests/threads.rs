//! Queues moved between threads: a single-issuer ring belongs to the thread that enabled it, and the queue
//! moves itself to a new ring when another thread submits (at once when idle, after the old ring's operations
//! were reaped otherwise); reaping and dropping work from any thread. Also the set-up fallbacks forced through
//! [`RingOptions`].

mod common;

use std::sync::mpsc;

use blk_core::{HostFile, HostOp, HostOpenOptions, HostQueue, IoBufMut};
use blk_uring::{RingOptions, UringBackend, UringQueue};
use common::*;

const BLOCK: usize = 4096;
const BLOCKS: usize = 256;

/// A file of `BLOCKS` blocks of a known pattern, opened with O_DIRECT when the file system allows it (the
/// reads then reach the disk and stay in flight a while), and its contents.
fn image(dir: &tempfile::TempDir) -> (HostFile, Vec<u8>) {
    let data = pattern(9, BLOCK * BLOCKS);
    let plain = HostFile::create(dir.path().join("disk"), HostOpenOptions::default()).unwrap();
    plain.write_all_at(0, &data).unwrap();
    plain.sync_data().unwrap();
    drop(plain);
    let path = dir.path().join("disk");
    let direct = HostFile::open(
        &path,
        HostOpenOptions {
            direct: true,
            ..Default::default()
        },
    );
    let file =
        direct.unwrap_or_else(|_| HostFile::open(&path, HostOpenOptions::default()).unwrap());
    (file, data)
}

/// Aligned buffers for `n` blocks, alive for the rest of the test process.
fn blocks(n: usize) -> &'static mut [u8] {
    let memory: &'static mut [u8] = Box::leak(vec![0u8; (n + 1) * BLOCK].into_boxed_slice());
    let skip = memory.as_ptr().align_offset(BLOCK);
    &mut memory[skip..skip + n * BLOCK]
}

/// Pushes a read of every block (block `i` into buffer `i`, `user_data` = `i`) and submits them.
fn read_all(queue: &mut UringQueue, memory: &mut [u8]) {
    for (i, chunk) in memory.chunks_mut(BLOCK).enumerate() {
        let bufs = [buf_mut(chunk)];
        queue.push(
            i as u64,
            HostOp::Read {
                file: 0,
                offset: (i * BLOCK) as u64,
                bufs: &bufs,
            },
        );
    }
    queue.submit().unwrap();
}

/// Reaps `n` completions, checks each is a whole block, and the memory against `data`.
fn reap_and_check(queue: &mut UringQueue, n: usize, memory: &[u8], data: &[u8]) {
    let done = wait_for(queue, n);
    assert_eq!(done.len(), n);
    assert!(
        done.iter().all(|c| c.result == Ok(BLOCK as u64)),
        "{done:?}"
    );
    assert_eq!(queue.pending(), 0);
    assert!(memory == data, "the blocks read back differ");
}

fn backend_with(options: RingOptions) -> Option<UringBackend> {
    backend().map(|b| b.with_ring_options(options))
}

#[test]
fn a_queue_made_on_one_thread_is_used_on_a_second_and_then_a_third() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let queue = backend.create_uring_queue(&[&file], 64).unwrap();
    let setup = queue.ring_setup();
    // The kernel here (6.18) has every flag; elsewhere the fallback may have dropped some.
    eprintln!("ring set-up: {setup:?}");
    let memory: &'static mut [u8] = blocks(BLOCKS);
    let memory_addr = memory.as_mut_ptr() as usize;
    // Second thread: the first to submit, it enables the ring (no new ring).
    let (queue, memory) = std::thread::spawn(move || {
        let mut queue = queue;
        read_all(&mut queue, memory);
        reap_and_check(&mut queue, BLOCKS, memory, &data);
        assert_eq!(queue.ring_moves(), 0);
        memory.fill(0);
        (queue, memory)
    })
    .join()
    .unwrap();
    assert_eq!(memory.as_mut_ptr() as usize, memory_addr);
    let data = pattern(9, BLOCK * BLOCKS);
    // Third thread: the queue is idle, so it moves to a ring of this thread at its first submission.
    let queue = std::thread::spawn(move || {
        let mut queue = queue;
        read_all(&mut queue, memory);
        reap_and_check(&mut queue, BLOCKS, memory, &data);
        queue
    })
    .join()
    .unwrap();
    let expected_moves = u64::from(setup.single_issuer);
    assert_eq!(queue.ring_moves(), expected_moves);
    // Dropped here, on the creating thread, which never owned a ring.
    drop(queue);
    // The queue's references to the file went (its lock too, or the kernel releases it shortly): the file
    // reopens.
    drop(file);
    HostFile::open(dir.path().join("disk"), HostOpenOptions::default()).unwrap();
}

#[test]
fn operations_submitted_on_one_thread_are_reaped_on_another_which_then_submits() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let mut queue = backend.create_uring_queue(&[&file], BLOCKS as u32).unwrap();
    let memory: &'static mut [u8] = blocks(BLOCKS);
    let (half, rest) = memory.split_at_mut(BLOCK * BLOCKS / 2);
    let (to_main, from_worker) = mpsc::channel();
    let (release_worker, worker_released) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            // The worker submits half the blocks and hands the queue over with them in flight; it then sleeps
            // (woken by the kernel to post its completions) until the test ends.
            read_all(&mut queue, half);
            to_main.send(queue).unwrap();
            let _ = worker_released.recv();
        });
        let mut queue = from_worker.recv().unwrap();
        // This thread submits the other half at once: while the worker's ring still holds operations they
        // wait in the backlog, and go out on this thread's ring once those are reaped.
        for (i, chunk) in rest.chunks_mut(BLOCK).enumerate() {
            let block = BLOCKS / 2 + i;
            let bufs = [buf_mut(chunk)];
            queue.push(
                block as u64,
                HostOp::Read {
                    file: 0,
                    offset: (block * BLOCK) as u64,
                    bufs: &bufs,
                },
            );
        }
        queue.submit().unwrap();
        eprintln!(
            "backlog after the other thread's submit: {}",
            queue.backlog()
        );
        let done = wait_for(&mut queue, BLOCKS);
        assert!(
            done.iter().all(|c| c.result == Ok(BLOCK as u64)),
            "{done:?}"
        );
        let mut seen: Vec<u64> = done.iter().map(|c| c.user_data).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..BLOCKS as u64).collect::<Vec<_>>());
        assert_eq!(queue.pending(), 0);
        if queue.ring_setup().single_issuer {
            assert_eq!(queue.ring_moves(), 1);
        }
        release_worker.send(()).unwrap();
    });
    assert!(*memory == *data, "the blocks read back differ");
}

#[test]
fn a_queue_dropped_by_another_thread_waits_for_the_operations_in_flight() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let memory: &'static mut [u8] = blocks(BLOCKS);
    let (to_main, from_worker) = mpsc::channel();
    let (release_worker, worker_released) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let mut queue = backend.create_uring_queue(&[&file], BLOCKS as u32).unwrap();
        read_all(&mut queue, memory);
        to_main.send((queue, memory)).unwrap();
        let _ = worker_released.recv();
    });
    let (queue, memory) = from_worker.recv().unwrap();
    // The drop blocks until the kernel is done with the buffers, whichever thread submitted.
    drop(queue);
    assert!(
        *memory == *data,
        "the reads finished before the drop returned"
    );
    release_worker.send(()).unwrap();
    worker.join().unwrap();
}

#[test]
fn registered_buffers_follow_the_queue_to_a_new_ring() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let mut queue = backend.create_uring_queue(&[&file], 64).unwrap();
    let memory: &'static mut [u8] = blocks(BLOCKS);
    let region: [IoBufMut<'static>; 1] = [buf_mut(memory)];
    // SAFETY: the memory is leaked: it stays valid for the rest of the process.
    unsafe { queue.register_buffers(&region).unwrap() };
    let run = |mut queue: UringQueue, memory: &'static mut [u8]| {
        std::thread::spawn(move || {
            memory.fill(0);
            let before = queue.fixed_buffer_ops();
            read_all(&mut queue, memory);
            reap_and_check(&mut queue, BLOCKS, memory, &pattern(9, BLOCK * BLOCKS));
            assert_eq!(queue.fixed_buffer_ops() - before, BLOCKS as u64);
            (queue, memory)
        })
        .join()
        .unwrap()
    };
    let (queue, memory) = run(queue, memory);
    let (queue, memory) = run(queue, memory);
    assert_eq!(
        queue.ring_moves(),
        u64::from(queue.ring_setup().single_issuer)
    );
    assert!(*memory == *data);
}

#[test]
fn without_single_issuer_the_ring_is_shared_by_every_thread() {
    let Some(backend) = backend_with(RingOptions {
        single_issuer: false,
        ..RingOptions::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let mut queue = backend.create_uring_queue(&[&file], 64).unwrap();
    assert!(!queue.ring_setup().single_issuer);
    let memory: &'static mut [u8] = blocks(BLOCKS);
    read_all(&mut queue, memory);
    let (queue, memory) = std::thread::spawn(move || {
        reap_and_check(&mut queue, BLOCKS, memory, &data);
        memory.fill(0);
        read_all(&mut queue, memory);
        (queue, memory)
    })
    .join()
    .unwrap();
    let mut queue = queue;
    reap_and_check(&mut queue, BLOCKS, memory, &pattern(9, BLOCK * BLOCKS));
    assert_eq!(queue.ring_moves(), 0);
}

#[test]
fn the_oldest_set_up_still_serves_a_queue() {
    let Some(backend) = backend_with(RingOptions {
        single_issuer: false,
        no_sq_array: false,
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let mut queue = backend.create_uring_queue(&[&file], 64).unwrap();
    assert!(!queue.ring_setup().no_sq_array);
    let memory: &'static mut [u8] = blocks(BLOCKS);
    read_all(&mut queue, memory);
    reap_and_check(&mut queue, BLOCKS, memory, &data);
}

#[test]
fn completions_reach_the_next_thread_once_the_submitting_thread_ended() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = image(&dir);
    let memory: &'static mut [u8] = blocks(BLOCKS);
    // The submitting thread ends with its reads in flight: a kernel worker posts their completions (the task
    // work of a thread that is gone), which any thread reads from the completion queue.
    let (mut queue, memory) = std::thread::spawn(move || {
        let mut queue = backend.create_uring_queue(&[&file], BLOCKS as u32).unwrap();
        read_all(&mut queue, memory);
        (queue, memory)
    })
    .join()
    .unwrap();
    reap_and_check(&mut queue, BLOCKS, memory, &data);
    // And this thread submits on a ring of its own.
    memory.fill(0);
    read_all(&mut queue, memory);
    reap_and_check(&mut queue, BLOCKS, memory, &pattern(9, BLOCK * BLOCKS));
}
