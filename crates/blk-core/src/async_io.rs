//! The queue model a VMM drives: batches of [`Request`]s in, [`Completion`]s out, signalled on an eventfd.
//!
//! One [`AsyncIo`] serves one virtio queue. The VMM submits every request it popped from the queue in one
//! [`AsyncIo::submit`] call, waits on [`AsyncIo::notifier`] (e.g. in its epoll loop), and reaps with
//! [`AsyncIo::next_completed_request`] until it returns `None`. Completions may come in any order.
//!
//! The notifier is a non-blocking eventfd (`EFD_NONBLOCK`): reading it after a spurious wake-up (or after
//! another reader reset it) fails with `EAGAIN`, which an event loop ignores before reaping. Callers that would
//! rather block use [`AsyncIo::wait`], in the spirit of libblkio's `blkioq_do_io`.
//!
//! The buffers of a [`Request`] are raw [`IoBufMut`]/[`IoBuf`]s that must stay valid until the request
//! completes (hence `'static`). A VMM serving guest memory does not build them itself: a
//! [`GuestQueue`](crate::GuestQueue) takes guest addresses, keeps the memory alive and marks dirty pages.
//! Building `'static` buffers over raw pointers with [`IoBufMut::from_raw_parts`] is the escape hatch, for
//! memory a caller manages itself (then it marks dirty pages itself).

use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::buffer::{IoBuf, IoBufMut};
use crate::error::Result;

/// Per-request flags, in the spirit of libblkio's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RequestFlags(u32);

impl RequestFlags {
    /// No flags.
    pub const NONE: RequestFlags = RequestFlags(0);
    /// Force unit access: the write is durable when it completes.
    pub const FUA: RequestFlags = RequestFlags(1);
    /// For write-zeroes: keep the range allocated (do not deallocate it).
    pub const NO_UNMAP: RequestFlags = RequestFlags(1 << 1);
    /// For write-zeroes: fail with `Unsupported` rather than falling back to writing zero buffers.
    pub const NO_FALLBACK: RequestFlags = RequestFlags(1 << 2);

    /// Whether every flag in `other` is set.
    pub fn contains(self, other: RequestFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for RequestFlags {
    type Output = RequestFlags;
    fn bitor(self, rhs: RequestFlags) -> RequestFlags {
        RequestFlags(self.0 | rhs.0)
    }
}

/// What a request does.
///
/// Buffers are `'static` because an asynchronous backend hands them to the kernel and they must stay valid
/// until the request completes: `'static` slices, or raw pointers through the escape hatch
/// [`IoBufMut::from_raw_parts`] (unsafe: the caller keeps the memory valid and marks dirty pages). Guest memory
/// goes through a [`GuestQueue`](crate::GuestQueue) instead, which builds these safely. The slice of buffer
/// descriptors itself only needs to live for the [`AsyncIo::submit`] call.
#[derive(Debug, Clone, Copy)]
pub enum RequestOp<'a> {
    /// Read guest bytes at `offset` into `bufs`.
    Read {
        /// Guest offset.
        offset: u64,
        /// Destination buffers, filled in order.
        bufs: &'a [IoBufMut<'static>],
    },
    /// Write guest bytes at `offset` from `bufs`.
    Write {
        /// Guest offset.
        offset: u64,
        /// Source buffers, written in order.
        bufs: &'a [IoBuf<'static>],
    },
    /// Make `len` bytes at `offset` read as zeros (deallocating unless [`RequestFlags::NO_UNMAP`]).
    WriteZeroes {
        /// Guest offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Discard `len` bytes at `offset`.
    Discard {
        /// Guest offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make every write completed before this request durable.
    Flush,
}

/// One request of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Returned unchanged in the request's [`Completion`].
    pub user_data: u64,
    /// What to do.
    pub op: RequestOp<'a>,
    /// Modifiers.
    pub flags: RequestFlags,
}

impl<'a> Request<'a> {
    /// A request with no flags.
    pub fn new(user_data: u64, op: RequestOp<'a>) -> Request<'a> {
        Request {
            user_data,
            op,
            flags: RequestFlags::NONE,
        }
    }

    /// The same request with `flags`.
    pub fn with_flags(self, flags: RequestFlags) -> Request<'a> {
        Request { flags, ..self }
    }
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Completion {
    /// The request's `user_data`.
    pub user_data: u64,
    /// Bytes transferred (0 for flush, discard and write-zeroes), or the request's error.
    pub result: Result<u64>,
}

/// One queue of asynchronous requests on a disk.
pub trait AsyncIo: Send {
    /// The eventfd written when completions are ready to reap (once per batch or kernel completion burst).
    ///
    /// It is non-blocking (`EFD_NONBLOCK`): `read()` fails with `EAGAIN` when nothing was written since the
    /// last read (a spurious wake-up); ignore that and reap with
    /// [`next_completed_request`](AsyncIo::next_completed_request) until `None`.
    fn notifier(&self) -> &EventFd;

    /// Submits a batch. Errors of individual requests come back as completions; `Err` here means the queue
    /// itself failed and no request of the batch was accepted.
    fn submit(&mut self, batch: &[Request<'_>]) -> Result<()>;

    /// The next finished request, or `None` when there is none yet.
    fn next_completed_request(&mut self) -> Option<Completion>;

    /// The queue's depth: how many requests may be in flight.
    fn ring_depth(&self) -> u32;

    /// The backend the queue's host I/O really runs on: `io_uring`, `aio` or `sync`.
    fn backend(&self) -> &'static str;

    /// Requests submitted whose completions have not been returned yet.
    fn in_flight(&self) -> usize;

    /// Reaps every completion ready into `out` and, while fewer than `min` were reaped, sleeps (in the
    /// backend's own wait where it can, see [`wait_in_backend`](AsyncIo::wait_in_backend), else on the
    /// notifier) until more come or `timeout` passes (`None`: no limit; `Some(Duration::ZERO)`: never sleeps).
    /// Returns how many completions it appended (fewer than `min` only on timeout). Asking for more than are
    /// in flight fails with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) rather than sleeping
    /// forever. libblkio's `blkioq_do_io(q, out, min, max, timeout)`, with `max` unbounded.
    fn wait(
        &mut self,
        min: usize,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<usize> {
        crate::completion_wait::wait_for(self, min, timeout, Duration::ZERO, out).map(|(n, _)| n)
    }

    /// Sleeps in the backend's own wait until a completion may be ready or `timeout` passes, instead of on the
    /// [`notifier`](AsyncIo::notifier) (see [`HostQueue::wait_for_completion`](crate::HostQueue::wait_for_completion)):
    /// [`wait`](AsyncIo::wait) uses it when it can. `Ok(false)`, having slept nothing, when the queue cannot
    /// (work in flight that only the notifier reports, or a backend without such a wait: the default).
    fn wait_in_backend(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// Registers memory regions with the backend (io_uring: `IORING_REGISTER_BUFFERS`), so single-buffer
    /// operations inside them skip the kernel's per-operation page pinning. Regions registered before are
    /// replaced, but only while no operation is in the kernel. Returns whether the backend took them
    /// (`false`: a backend without registration, or operations in flight; other buffers keep working as
    /// plain I/O). A [`GuestQueue`](crate::GuestQueue) registers guest memory itself.
    ///
    /// # Safety
    /// The regions must stay mapped, as memory I/O may read and write, until the queue is dropped or a later
    /// call that returns `true` replaces them.
    unsafe fn register_memory(&mut self, regions: &[IoBufMut<'static>]) -> Result<bool> {
        let _ = regions;
        Ok(false)
    }

    /// How many host operations used registered memory so far (0 without registration).
    fn fixed_buffer_ops(&self) -> u64 {
        0
    }
}
