//! When a queue thread watches its ring instead of sleeping: the adaptive polling window and the rule for
//! driver notifications (kicks).
//!
//! - **Kicks are suppressed while requests are in flight.** A completion wakes the queue thread anyway, and
//!   that wake looks at the avail ring too, so a kick in the meantime would only cost the driver a system call
//!   and the server a second wake. Flushes are the exception: one may take long, and a read queued behind it
//!   must not wait for it, so notifications stay on while a flush is in flight.
//! - **An idle queue polls before it sleeps.** With nothing in flight (buffered I/O completes during its
//!   submission) the thread spins on the avail index for up to the window, with kicks still off, so a driver
//!   that answers a completion with new requests at once is served without a kick or a wake. The window
//!   adapts as QEMU's `poll-max-ns` does: it doubles (up to the maximum) when polling found requests or the
//!   thread was woken soon after it went to sleep, and halves when polling found nothing, so a quiet queue
//!   stops spinning.

use std::time::{Duration, Instant};

/// The smallest window worth spinning for; below it polling is off until a short sleep brings it back.
const MIN_WINDOW: Duration = Duration::from_micros(1);

/// A queue's adaptive polling window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollWindow {
    max: Duration,
    window: Duration,
    /// When the thread last went to sleep after polling found nothing.
    slept_at: Option<Instant>,
}

impl PollWindow {
    /// A window of at most `max` (zero: never poll).
    pub(crate) fn new(max: Duration) -> PollWindow {
        PollWindow {
            max,
            window: max,
            slept_at: None,
        }
    }

    /// Called when the thread is woken (a kick or a completion): a wake that came within the maximum window
    /// would have been caught by polling, so the window grows.
    pub(crate) fn woke(&mut self) {
        if let Some(at) = self.slept_at.take() {
            if at.elapsed() < self.max {
                self.grow();
            }
        }
    }

    /// How long to poll now (zero: do not).
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Polling found requests.
    pub(crate) fn hit(&mut self) {
        self.grow();
    }

    /// Polling found nothing: the window halves, and the thread goes to sleep.
    pub(crate) fn miss(&mut self) {
        self.window /= 2;
        if self.window < MIN_WINDOW {
            self.window = Duration::ZERO;
        }
        self.sleeping();
    }

    /// The thread sleeps until requests in flight complete: its next wake says nothing about polling.
    pub(crate) fn awaiting_completions(&mut self) {
        self.slept_at = None;
    }

    /// The thread goes to sleep (polled or not).
    pub(crate) fn sleeping(&mut self) {
        if !self.max.is_zero() {
            self.slept_at = Some(Instant::now());
        }
    }

    fn grow(&mut self) {
        self.window = (self.window * 2).max(MIN_WINDOW).min(self.max);
    }
}

/// Spins until `ready` says so or `window` passes; returns whether it became ready.
pub(crate) fn spin_until(window: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_shrinks_to_nothing_on_misses_and_comes_back_on_a_quick_wake() {
        let max = Duration::from_micros(32);
        let mut w = PollWindow::new(max);
        assert_eq!(w.window(), max);
        for _ in 0..6 {
            w.miss();
        }
        assert_eq!(w.window(), Duration::ZERO);
        // Woken at once after going to sleep: polling would have caught it.
        w.woke();
        assert_eq!(w.window(), MIN_WINDOW);
        w.hit();
        w.hit();
        assert_eq!(w.window(), MIN_WINDOW * 4);
        for _ in 0..10 {
            w.hit();
        }
        assert_eq!(w.window(), max);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        w.woke();
        w.hit();
        w.sleeping();
        w.woke();
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn spinning_stops_at_the_deadline_or_when_ready() {
        let mut n = 0;
        assert!(spin_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert!(!spin_until(Duration::from_micros(50), || false));
    }
}
