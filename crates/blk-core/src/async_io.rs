//! The queue model a VMM drives: batches of [`Request`]s in, [`Completion`]s out, signalled on an eventfd.
//!
//! One [`AsyncIo`] serves one virtio queue. The VMM submits every request it popped from the queue in one
//! [`AsyncIo::submit`] call, waits on [`AsyncIo::notifier`] (e.g. in its epoll loop), and reaps with
//! [`AsyncIo::next_completed_request`] until it returns `None`. Completions may come in any order.

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
/// until the request completes: build them from guest memory with [`IoBufMut::from_raw_parts`] (guest memory
/// outlives the queue) or from leaked or otherwise pinned host memory. The slice of buffer descriptors itself
/// only needs to live for the [`AsyncIo::submit`] call.
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
    fn notifier(&self) -> &EventFd;

    /// Submits a batch. Errors of individual requests come back as completions; `Err` here means the queue
    /// itself failed and no request of the batch was accepted.
    fn submit(&mut self, batch: &[Request<'_>]) -> Result<()>;

    /// The next finished request, or `None` when there is none yet.
    fn next_completed_request(&mut self) -> Option<Completion>;

    /// The queue's depth: how many requests may be in flight.
    fn ring_depth(&self) -> u32;
}
