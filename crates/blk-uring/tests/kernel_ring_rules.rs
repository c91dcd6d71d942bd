//! The kernel's rules for the ring set-up flags blk-uring uses, checked on this kernel rather than taken from
//! memory (the queue's thread-ownership design rests on them). Each test skips (passes) where the kernel lacks
//! the flags.
//!
//! Completions are made asynchronous with a read on an empty pipe: it completes when the test writes the
//! pipe, through task work (the way a disk's completion reaches the ring).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

const EEXIST: Option<i32> = Some(libc::EEXIST);
/// `IORING_ENTER_GETEVENTS` (`linux/io_uring.h`).
const IORING_ENTER_GETEVENTS: u32 = 1;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints that pipe2 fills.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Builds a ring with `flags` applied, or `None` when the kernel refuses them (too old).
fn ring(flags: impl Fn(&mut io_uring::Builder)) -> Option<IoUring> {
    let mut builder = IoUring::builder();
    flags(&mut builder);
    match builder.build(8) {
        Ok(ring) => Some(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::ENOSYS) =>
        {
            None
        }
        Err(e) => panic!("io_uring_setup: {e}"),
    }
}

/// Pushes a 1-byte read of `fd` into `buf` (user_data 7).
fn push_read(ring: &mut IoUring, fd: i32, buf: &mut [u8; 1]) {
    let sqe = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 1)
        .build()
        .user_data(7);
    // SAFETY: the buffer outlives the ring in every test (each test waits for the completion or drops the
    // ring, which waits, before the buffer goes).
    unsafe { ring.submission().push(&sqe).unwrap() };
}

fn write_byte(fd: &OwnedFd) {
    // SAFETY: one byte from a valid buffer to an open pipe.
    let n = unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    assert_eq!(n, 1);
}

/// Polls `fd` for input for up to `ms`; whether it became readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

/// `io_uring_enter(0, 0, GETEVENTS)`: runs deferred task work, waits for nothing.
fn get_events(ring: &IoUring) -> std::io::Result<usize> {
    // SAFETY: no SQEs are submitted and no argument is passed.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
    }
}

#[test]
fn a_single_issuer_ring_refuses_other_threads_submissions_and_registrations() {
    let Some(mut ring) = ring(|b| {
        b.setup_single_issuer();
    }) else {
        return;
    };
    let (r, _w) = pipe();
    let mut buf = [0u8; 1];
    push_read(&mut ring, r.as_raw_fd(), &mut buf);
    std::thread::scope(|s| {
        s.spawn(|| {
            // The creating thread owns the ring: another thread's submission fails, and so does a registration.
            assert_eq!(ring.submit().unwrap_err().raw_os_error(), EEXIST);
            let efd = blk_core::EventFd::new(0).unwrap();
            let err = ring
                .submitter()
                .register_eventfd(efd.as_raw_fd())
                .unwrap_err();
            assert_eq!(err.raw_os_error(), EEXIST);
        });
    });
    // The owner submits the entry that is still queued.
    assert_eq!(ring.submit().unwrap(), 1);
    write_byte(&_w);
    ring.submit_and_wait(1).unwrap();
    assert_eq!(ring.completion().next().map(|c| c.result()), Some(1));
}

#[test]
fn a_disabled_ring_takes_registrations_from_any_thread_and_belongs_to_the_thread_that_enables_it() {
    let Some(mut ring) = ring(|b| {
        b.setup_single_issuer().setup_r_disabled();
    }) else {
        return;
    };
    let efd = blk_core::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    // Registration on the disabled ring from the creating thread.
    ring.submitter().register_eventfd(efd.as_raw_fd()).unwrap();
    let (r, w) = pipe();
    let mut buf = [0u8; 1];
    push_read(&mut ring, r.as_raw_fd(), &mut buf);
    // A disabled ring takes no submissions.
    assert_eq!(
        ring.submit().unwrap_err().raw_os_error(),
        Some(libc::EBADFD)
    );
    let ring = std::thread::scope(|s| {
        s.spawn(move || {
            ring.submitter().register_enable_rings().unwrap();
            assert_eq!(ring.submit().unwrap(), 1);
            ring
        })
        .join()
        .unwrap()
    });
    // The enabling thread owns it now; the creating thread is refused.
    let mut ring = ring;
    push_read(&mut ring, r.as_raw_fd(), &mut buf);
    assert_eq!(ring.submit().unwrap_err().raw_os_error(), EEXIST);
    assert_eq!(
        ring.submitter()
            .unregister_files()
            .unwrap_err()
            .raw_os_error(),
        EEXIST
    );
    // The owner is gone: when its pending read's event comes, the kernel completes it with ECANCELED from a
    // kernel worker (a request whose task exited and that still needs the task's work; disk I/O already in the
    // block layer completes with its result). The completion reaches the CQ, which any thread reads without a
    // system call.
    write_byte(&w);
    let mut first = None;
    for _ in 0..5000 {
        first = ring.completion().next().map(|c| c.result());
        if first.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(first, Some(-libc::ECANCELED));
    assert!(readable(efd.as_raw_fd(), 0), "the eventfd was written");
    // Dropping (closing) the ring from a thread that does not own it works (the queued SQE never ran).
}

#[test]
fn a_non_owner_waits_for_completions_of_a_single_issuer_ring_without_deferred_task_work() {
    let Some(mut ring) = ring(|b| {
        b.setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag();
    }) else {
        return;
    };
    let (r, w) = pipe();
    let mut buf = [0u8; 1];
    push_read(&mut ring, r.as_raw_fd(), &mut buf);
    assert_eq!(ring.submit().unwrap(), 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            write_byte(&w);
            // The owner (the main thread) sleeps in join: woken to run its task work, it posts the completion;
            // this thread's wait (nothing to submit) is allowed.
            loop {
                match ring.submitter().submit_and_wait(1) {
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => panic!("a non-owner's wait failed: {e}"),
                }
            }
            // SAFETY: this thread is the only one touching the completion queue now (the owner is in join).
            let cqe = unsafe { ring.completion_shared().next() };
            assert_eq!(cqe.map(|c| c.result()), Some(1));
        });
    });
}

#[test]
fn deferred_task_work_is_posted_only_by_the_owners_get_events_and_signals_the_eventfd() {
    let Some(mut ring) = ring(|b| {
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled();
    }) else {
        return;
    };
    let efd = blk_core::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    ring.submitter().register_eventfd(efd.as_raw_fd()).unwrap();
    ring.submitter().register_enable_rings().unwrap();
    let (r, w) = pipe();
    let mut buf = [0u8; 1];
    push_read(&mut ring, r.as_raw_fd(), &mut buf);
    assert_eq!(ring.submit().unwrap(), 1);
    write_byte(&w);
    // The completion is queued as deferred work: the eventfd says so (and the TASKRUN flag), the CQ is empty.
    assert!(
        readable(efd.as_raw_fd(), 5000),
        "no eventfd signal for deferred work"
    );
    assert!(ring.submission().taskrun());
    assert_eq!(ring.completion().len(), 0);
    // Another thread cannot run it.
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(get_events(&ring).unwrap_err().raw_os_error(), EEXIST);
        });
    });
    assert_eq!(ring.completion().len(), 0);
    // The owner's GETEVENTS with min_complete 0 posts it and returns at once.
    get_events(&ring).unwrap();
    assert_eq!(ring.completion().next().map(|c| c.result()), Some(1));
    assert!(!ring.submission().taskrun());
}

#[test]
fn a_ring_without_an_sq_array_works_through_the_crate() {
    let Some(mut ring) = ring(|b| {
        b.setup_no_sqarray().setup_single_issuer();
    }) else {
        return;
    };
    for i in 0..20u64 {
        // SAFETY: a NOP touches no memory.
        unsafe {
            ring.submission()
                .push(&opcode::Nop::new().build().user_data(i))
                .unwrap()
        };
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.completion().next().map(|c| c.user_data()), Some(i));
    }
}

#[test]
fn deferred_completions_of_a_thread_that_ended_are_stranded_until_the_ring_closes() {
    // Why blk-uring never sets DEFER_TASKRUN: a queue is `Send`, and its submitting thread may end while
    // another thread still reaps. With deferred task work, nobody can then post the completions.
    let Some(ring) = ring(|b| {
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled();
    }) else {
        return;
    };
    let (r, w) = pipe();
    // Leaked: the kernel may write it until the ring is gone, which happens after this test returns.
    let buf: &'static mut [u8; 1] = Box::leak(Box::new([0u8; 1]));
    let ring = std::thread::spawn(move || {
        let mut ring = ring;
        ring.submitter().register_enable_rings().unwrap();
        push_read(&mut ring, r.as_raw_fd(), buf);
        assert_eq!(ring.submit().unwrap(), 1);
        (ring, r)
    })
    .join()
    .unwrap();
    let (ring, _r) = ring;
    write_byte(&w);
    std::thread::sleep(Duration::from_millis(100));
    // Nothing posted, and this thread cannot post it.
    assert_eq!(ring.completion_shared_len(), 0);
    assert_eq!(get_events(&ring).unwrap_err().raw_os_error(), EEXIST);
    // Closing the ring lets a kernel worker finish the request.
}

/// How many completions the CQ holds, read without taking `&mut`.
trait CompletionLen {
    fn completion_shared_len(&self) -> usize;
}

impl CompletionLen for IoUring {
    fn completion_shared_len(&self) -> usize {
        // SAFETY: no other thread touches this ring's completion queue.
        unsafe { self.completion_shared().len() }
    }
}
