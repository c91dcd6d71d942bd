//! Blocking and polling waits for an [`AsyncIo`] queue's completions: [`AsyncIo::wait`] and the adaptive
//! busy polling of [`GuestQueue::wait`](crate::GuestQueue::wait).
//!
//! A wait reaps what is ready, then (when fewer than `min` came) optionally spins reaping for a short window,
//! then sleeps: in the backend's own wait where the queue can (io_uring's `io_uring_enter`), else in `poll(2)`
//! on the queue's eventfd. The eventfd is reset (read, `EAGAIN` ignored) before the
//! last reap that precedes each sleep, so a completion signalled after that reap wakes the sleep: none is
//! missed.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::async_io::{AsyncIo, Completion};
use crate::error::{Error, ErrorKind, Result};

/// What happened during one wait, for a caller adapting its busy-polling window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WaitOutcome {
    /// Completions appended.
    pub reaped: usize,
    /// Whether spinning found a completion (the window paid off).
    pub spin_hit: bool,
    /// How long the wait slept in `poll(2)`, if it did.
    pub slept: Option<Duration>,
}

/// What a wait needs of a queue: [`AsyncIo`]s and [`GuestQueue`](crate::GuestQueue)s.
pub(crate) trait Reaper {
    /// The next completion ready.
    fn reap_one(&mut self) -> Option<Completion>;
    /// The eventfd written when completions are ready.
    fn reaper_notifier(&self) -> &EventFd;
    /// Requests submitted and not yet returned.
    fn reaper_in_flight(&self) -> usize;
    /// Sleeps in the backend's own wait, if the queue can now (see [`AsyncIo::wait_in_backend`]).
    fn sleep_in_backend(&mut self, timeout: Option<Duration>) -> Result<bool>;
}

impl<T: AsyncIo + ?Sized> Reaper for T {
    fn reap_one(&mut self) -> Option<Completion> {
        self.next_completed_request()
    }

    fn reaper_notifier(&self) -> &EventFd {
        self.notifier()
    }

    fn reaper_in_flight(&self) -> usize {
        self.in_flight()
    }

    fn sleep_in_backend(&mut self, timeout: Option<Duration>) -> Result<bool> {
        self.wait_in_backend(timeout)
    }
}

/// Reaps into `out` until `min` completions came or `timeout` passed, spinning up to `spin` before sleeping.
pub(crate) fn wait_for<Q: Reaper + ?Sized>(
    queue: &mut Q,
    min: usize,
    timeout: Option<Duration>,
    spin: Duration,
    out: &mut Vec<Completion>,
) -> Result<(usize, WaitOutcome)> {
    let in_flight = queue.reaper_in_flight();
    if min > in_flight {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("waiting for {min} completions with only {in_flight} requests in flight"),
        ));
    }
    let start = Instant::now();
    let deadline = timeout.and_then(|t| start.checked_add(t));
    let spin_end = (!spin.is_zero()).then(|| start + spin);
    let mut outcome = WaitOutcome::default();
    loop {
        outcome.reaped += reap(queue, out);
        if outcome.reaped >= min {
            return Ok((outcome.reaped, outcome));
        }
        let now = Instant::now();
        let expired = deadline.is_some_and(|d| now >= d);
        if spin_end.is_some_and(|end| now < end && !expired) {
            let before = outcome.reaped;
            std::hint::spin_loop();
            outcome.reaped += reap(queue, out);
            outcome.spin_hit |= outcome.reaped > before;
            if outcome.reaped >= min {
                return Ok((outcome.reaped, outcome));
            }
            continue;
        }
        if expired {
            return Ok((outcome.reaped, outcome));
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let slept = Instant::now();
        if !queue.sleep_in_backend(remaining)? {
            // About to sleep on the notifier: reset the eventfd, then reap once more, so what is signalled
            // after this reap wakes the poll below. EAGAIN (nothing written since the last read) is expected.
            let _ = queue.reaper_notifier().read();
            outcome.reaped += reap(queue, out);
            if outcome.reaped >= min {
                return Ok((outcome.reaped, outcome));
            }
            poll_readable(queue.reaper_notifier().as_raw_fd(), remaining)?;
        }
        *outcome.slept.get_or_insert(Duration::ZERO) += slept.elapsed();
    }
}

/// Appends every completion ready; returns how many.
fn reap<Q: Reaper + ?Sized>(queue: &mut Q, out: &mut Vec<Completion>) -> usize {
    let mut n = 0;
    while let Some(c) = queue.reap_one() {
        out.push(c);
        n += 1;
    }
    n
}

/// Sleeps until `fd` is readable or `timeout` passes (`None`: no limit). `EINTR` returns early (the caller
/// loops).
fn poll_readable(fd: i32, timeout: Option<Duration>) -> Result<()> {
    let ms = match timeout {
        None => -1,
        // Rounded up, so a short remaining time sleeps rather than spinning on a zero timeout.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that lives across the call; poll(2) only writes its `revents`.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io_while(e, "waiting on the completion eventfd"));
        }
    }
    Ok(())
}

/// The busy-polling window of a queue that adapts to how soon completions come: it doubles (up to the
/// maximum) when spinning found a completion or a sleep was shorter than the maximum, and halves when
/// spinning found nothing and the wait slept long, so an idle queue stops burning CPU.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BusyPoll {
    max: Duration,
    window: Duration,
}

impl BusyPoll {
    /// At most `max` of spinning per wait (zero: off).
    pub(crate) fn new(max: Duration) -> BusyPoll {
        BusyPoll { max, window: max }
    }

    /// The window of the next wait.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Adapts the window to a wait's outcome.
    pub(crate) fn update(&mut self, outcome: &WaitOutcome) {
        if self.max.is_zero() {
            return;
        }
        let short_sleep = outcome.slept.is_some_and(|s| s < self.max);
        self.window = if outcome.spin_hit || short_sleep {
            (self.window * 2)
                .max(Duration::from_micros(1))
                .min(self.max)
        } else if outcome.slept.is_some() {
            // Below a microsecond, spinning is not worth its cost: off until a short sleep brings it back.
            Some(self.window / 2)
                .filter(|w| *w >= Duration::from_micros(1))
                .unwrap_or_default()
        } else {
            self.window
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue with `in_flight` requests that complete only when `ready` says so.
    struct Stuck {
        notifier: EventFd,
        in_flight: usize,
        ready: usize,
    }

    impl Reaper for Stuck {
        fn reap_one(&mut self) -> Option<Completion> {
            (self.ready > 0).then(|| {
                self.ready -= 1;
                self.in_flight -= 1;
                Completion {
                    user_data: 0,
                    result: Ok(0),
                }
            })
        }
        fn reaper_notifier(&self) -> &EventFd {
            &self.notifier
        }
        fn reaper_in_flight(&self) -> usize {
            self.in_flight
        }
        fn sleep_in_backend(&mut self, _: Option<Duration>) -> Result<bool> {
            Ok(false)
        }
    }

    #[test]
    fn a_wait_times_out_with_what_came() {
        let mut q = Stuck {
            notifier: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            in_flight: 2,
            ready: 1,
        };
        let mut out = Vec::new();
        let start = Instant::now();
        let timeout = Some(Duration::from_millis(30));
        let (n, outcome) =
            wait_for(&mut q, 2, timeout, Duration::from_micros(100), &mut out).unwrap();
        assert_eq!((n, out.len()), (1, 1));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(outcome.slept.is_some() && !outcome.spin_hit);
        // A spurious wake-up (the eventfd written, nothing ready) does not end the wait early.
        q.notifier.write(1).unwrap();
        let start = Instant::now();
        assert_eq!(
            wait_for(&mut q, 1, timeout, Duration::ZERO, &mut out)
                .unwrap()
                .0,
            0
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        // Asking for more than is in flight is refused at once.
        let err = wait_for(&mut q, 2, None, Duration::ZERO, &mut out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn the_window_adapts() {
        let mut poll = BusyPoll::new(Duration::from_micros(64));
        let idle = WaitOutcome {
            slept: Some(Duration::from_millis(10)),
            ..WaitOutcome::default()
        };
        for _ in 0..10 {
            poll.update(&idle);
        }
        assert_eq!(poll.window(), Duration::ZERO);
        let quick = WaitOutcome {
            slept: Some(Duration::from_micros(5)),
            ..WaitOutcome::default()
        };
        poll.update(&quick);
        assert!(poll.window() > Duration::ZERO);
        for _ in 0..20 {
            poll.update(&WaitOutcome {
                spin_hit: true,
                ..WaitOutcome::default()
            });
        }
        assert_eq!(poll.window(), Duration::from_micros(64));
        let mut off = BusyPoll::new(Duration::ZERO);
        off.update(&quick);
        assert_eq!(off.window(), Duration::ZERO);
    }
}
