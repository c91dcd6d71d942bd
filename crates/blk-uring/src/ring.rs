//! The ring's set-up: which `IORING_SETUP_*` flags a queue's ring is made with ([`RingOptions`], falling back
//! to fewer where the kernel refuses them, [`RingSetup`] says what it got), and which thread owns a
//! single-issuer ring ([`ThreadKey`]).
//!
//! A single-issuer ring is made disabled (`IORING_SETUP_R_DISABLED`): files, the eventfd and buffers are
//! registered from any thread, and the thread that first submits enables it (`IORING_REGISTER_ENABLE_RINGS`)
//! and owns it from then on. The kernel refuses another thread's submissions and registrations (`EEXIST`);
//! the queue moves itself to a new ring when that happens (see the crate docs, "Threads").

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use blk_core::Result;
use io_uring::IoUring;

use crate::backend::ring_setup_error;

/// The ring set-up flags a [`UringBackend`](crate::UringBackend) asks for. Each is used where the kernel has
/// it; a ring the kernel refuses (`EINVAL`) is made again with fewer, down to the flags of Linux 5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOptions {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0), with the ring made disabled and enabled by the thread that first
    /// submits: the kernel skips some synchronisation for a ring only one thread submits to. Default: on.
    pub single_issuer: bool,
    /// `IORING_SETUP_NO_SQARRAY` (6.6): the kernel takes submission entries in ring order, without the
    /// indirection array. Default: on.
    pub no_sq_array: bool,
}

impl Default for RingOptions {
    fn default() -> RingOptions {
        RingOptions {
            single_issuer: true,
            no_sq_array: true,
        }
    }
}

/// The set-up flags a queue's ring was made with ([`UringQueue::ring_setup`](crate::UringQueue::ring_setup)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingSetup {
    /// `SINGLE_ISSUER` (and made disabled, enabled by its first submitting thread).
    pub single_issuer: bool,
    /// `COOP_TASKRUN` and `TASKRUN_FLAG`.
    pub coop_taskrun: bool,
    /// `SUBMIT_ALL`.
    pub submit_all: bool,
    /// `NO_SQARRAY`.
    pub no_sq_array: bool,
}

impl RingSetup {
    /// The flags to try first for `options`.
    fn wanted(options: RingOptions) -> RingSetup {
        RingSetup {
            single_issuer: options.single_issuer,
            coop_taskrun: true,
            submit_all: true,
            no_sq_array: options.no_sq_array,
        }
    }

    /// The next set to try after the kernel refused `self`: without the newest flag it has.
    fn fallback(self) -> Option<RingSetup> {
        let mut next = self;
        if self.no_sq_array {
            next.no_sq_array = false;
        } else if self.single_issuer {
            next.single_issuer = false;
        } else if self.coop_taskrun {
            next.coop_taskrun = false;
        } else if self.submit_all {
            next.submit_all = false;
        } else {
            return None;
        }
        Some(next)
    }

    fn builder(self) -> io_uring::Builder {
        let mut builder = IoUring::builder();
        if self.submit_all {
            builder.setup_submit_all();
        }
        if self.coop_taskrun {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        if self.single_issuer {
            builder.setup_single_issuer().setup_r_disabled();
        }
        if self.no_sq_array {
            builder.setup_no_sqarray();
        }
        builder
    }
}

/// Makes a ring of `entries` with the flags of `options` the kernel takes (each refusal, `EINVAL`, drops the
/// newest flag left and tries again). A single-issuer ring comes back disabled.
pub(crate) fn build_ring(entries: u32, options: RingOptions) -> Result<(IoUring, RingSetup)> {
    let mut setup = RingSetup::wanted(options);
    loop {
        match setup.builder().build(entries) {
            Ok(ring) => return Ok((ring, setup)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match setup.fallback() {
                Some(next) => setup = next,
                None => return Err(ring_setup_error(e, "creating an io_uring ring")),
            },
            Err(e) => return Err(ring_setup_error(e, "creating an io_uring ring")),
        }
    }
}

/// Enables a disabled ring: the calling thread owns it from now on (single issuer).
pub(crate) fn enable(ring: &IoUring) -> io::Result<()> {
    ring.submitter().register_enable_rings()
}

/// A number naming the calling thread, distinct for every thread the process ever ran (a thread id or a
/// thread-local's address may be reused by a later thread, which the kernel would still refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThreadKey(u64);

impl ThreadKey {
    /// The calling thread's key (a thread-local read after the first call).
    pub(crate) fn current() -> ThreadKey {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        ThreadKey(KEY.with(|k| *k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_drops_the_newest_flag_first_and_ends() {
        let mut setup = RingSetup::wanted(RingOptions::default());
        let mut seen = vec![setup];
        while let Some(next) = setup.fallback() {
            seen.push(next);
            setup = next;
        }
        assert_eq!(seen.len(), 5);
        assert!(seen[0].no_sq_array && seen[0].single_issuer && seen[0].coop_taskrun);
        assert!(seen[1].single_issuer && !seen[1].no_sq_array);
        assert!(!seen[2].single_issuer && seen[2].coop_taskrun && seen[2].submit_all);
        assert!(!seen[3].coop_taskrun && seen[3].submit_all);
        assert_eq!(*seen.last().unwrap(), RingSetup::default());
    }

    #[test]
    fn thread_keys_differ_between_threads_and_stay_within_one() {
        let here = ThreadKey::current();
        assert_eq!(here, ThreadKey::current());
        let there = std::thread::spawn(ThreadKey::current).join().unwrap();
        assert_ne!(here, there);
    }
}
