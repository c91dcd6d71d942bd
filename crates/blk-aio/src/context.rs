//! [`AioContext`]: one kernel AIO context (`io_setup` .. `io_destroy`) and the raw system calls on it.
//!
//! Every `unsafe` block of the crate that enters the kernel is here; the queue above only hands it iocb
//! pointers it keeps valid.

use std::io;
use std::ptr;

use crate::abi::{IoEvent, Iocb};

/// An AIO context of the kernel, destroyed on drop. Destroying waits for the context's operations in the kernel,
/// but the owner ([`AioQueue`](crate::AioQueue)) reaps them itself first so their buffers outlive them.
#[derive(Debug)]
pub(crate) struct AioContext {
    /// The kernel's `aio_context_t`.
    id: libc::c_ulong,
    /// Events the context was created for.
    capacity: u32,
}

impl AioContext {
    /// A context for `nr_events` operations in flight (`io_setup`).
    pub(crate) fn new(nr_events: u32) -> io::Result<AioContext> {
        let mut id: libc::c_ulong = 0;
        // SAFETY: io_setup writes one aio_context_t (an unsigned long) through the pointer, which points at a
        // live local; the context it creates is owned by the returned value and destroyed exactly once in Drop.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_setup,
                libc::c_long::from(nr_events),
                ptr::addr_of_mut!(id),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AioContext {
            id,
            capacity: nr_events,
        })
    }

    /// A context for `wanted` operations, or fewer when `fs.aio-max-nr` leaves less room (`EAGAIN`): halves
    /// the request down to one event before giving up.
    pub(crate) fn with_at_most(wanted: u32) -> io::Result<AioContext> {
        let mut nr = wanted.max(1);
        loop {
            match AioContext::new(nr) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && nr > 1 => nr /= 2,
                result => return result,
            }
        }
    }

    /// The number of events the context was created for.
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Submits the iocbs behind `iocbs` (`io_submit`); returns how many the kernel took (a prefix of them).
    /// An error means the first one was refused.
    ///
    /// # Safety
    /// Every pointer must point at an initialized [`Iocb`] that stays in place, and every buffer or iovec array
    /// it names must stay valid (for writes, for reads) until its completion has been reaped.
    pub(crate) unsafe fn submit(&self, iocbs: &mut [*mut Iocb]) -> io::Result<usize> {
        if iocbs.is_empty() {
            return Ok(0);
        }
        // SAFETY: `iocbs` is a live array of `len` iocb pointers; the caller guarantees what they point at (see
        // this function's contract). The kernel reads the array and the iocbs, and writes each iocb's aio_key.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.id,
                iocbs.len() as libc::c_long,
                iocbs.as_mut_ptr(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(ret).unwrap_or(0).min(iocbs.len()))
    }

    /// Reaps completed operations into `events` (`io_getevents`): at least `min_nr` (waiting for them when
    /// `wait`, else returning at once with what is ready); returns how many were written.
    pub(crate) fn get_events(
        &self,
        min_nr: usize,
        events: &mut [IoEvent],
        wait: bool,
    ) -> io::Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout: *mut libc::timespec = if wait {
            ptr::null_mut()
        } else {
            ptr::addr_of_mut!(zero)
        };
        let min_nr = min_nr.min(events.len());
        // SAFETY: `events` is a live, writable array of `len` io_event structs (the layout of the kernel's), the
        // timeout is null or points at a live local timespec; the kernel writes at most `len` events.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.id,
                min_nr as libc::c_long,
                events.len() as libc::c_long,
                events.as_mut_ptr(),
                timeout,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(ret).unwrap_or(0).min(events.len()))
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        // SAFETY: the context was created by io_setup and is destroyed only here. The kernel waits for any
        // operation still in it before returning.
        unsafe {
            libc::syscall(libc::SYS_io_destroy, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_reap_nothing_destroy() {
        let Ok(ctx) = AioContext::with_at_most(8) else {
            return; // AIO disabled on this host
        };
        assert!(ctx.capacity() >= 1);
        let mut events = [IoEvent::default(); 4];
        assert_eq!(ctx.get_events(0, &mut events, false).ok(), Some(0));
        // SAFETY: an empty array names no iocb.
        assert_eq!(unsafe { ctx.submit(&mut []) }.ok(), Some(0));
    }
}
