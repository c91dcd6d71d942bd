//! The asynchronous host-file layer: [`HostQueue`], one submission/completion queue of host I/O, and
//! [`HostQueueBackend`], which makes them.
//!
//! Backend crates (`blk-uring` on io_uring, `blk-aio` on Linux AIO) implement these traits; blk-core's
//! [`SyncHostBackend`](crate::SyncHostBackend) runs the same operations with `preadv`/`pwritev` where neither is
//! available. Formats never see a backend type: their async queues ([`MappedQueue`](crate::MappedQueue)) take a
//! `Box<dyn HostQueue>` from the `Arc<dyn HostQueueBackend>` the factory gave them.
//!
//! The contract, for implementors:
//! - [`HostQueue::push`] never fails and never enters the kernel: it copies the operation (including the iovec
//!   array, so `bufs` only needs to live for the call) into the queue's own storage. When the ring is full, the
//!   operation waits in a backlog and is submitted as completions free slots.
//! - [`HostQueue::submit`] hands everything pushed so far to the kernel with one system call (io_uring:
//!   one `io_uring_enter`; AIO: one `io_submit`).
//! - [`HostQueue::next_completion`] returns finished operations, reaping without a system call per operation, and
//!   submits backlogged operations once slots are free. Completions come in any order.
//! - The kernel (or the backend) writes [`HostQueue::notifier`] when completions are ready; the owner of the
//!   queue may write it too (to signal completions it produced itself).
//! - The memory behind `bufs` must stay valid until the operation's completion has been returned: the caller
//!   guarantees it (guest memory, or buffers it owns).

use std::fmt::Debug;

use vmm_sys_util::eventfd::EventFd;

use crate::buffer::{IoBuf, IoBufMut};
use crate::error::Result;
use crate::host_file::HostFile;

/// One host I/O operation. `file` indexes the files the queue was created with.
#[derive(Debug, Clone, Copy)]
pub enum HostOp<'a> {
    /// Read `sum(bufs.len)` bytes at `offset` of file `file` into `bufs`, in order.
    Read {
        /// Index of the file in [`HostQueueBackend::create_queue`]'s `files`.
        file: usize,
        /// Byte offset in the host file.
        offset: u64,
        /// Destination buffers.
        bufs: &'a [IoBufMut<'static>],
    },
    /// Write `sum(bufs.len)` bytes from `bufs` at `offset` of file `file`.
    Write {
        /// Index of the file in [`HostQueueBackend::create_queue`]'s `files`.
        file: usize,
        /// Byte offset in the host file.
        offset: u64,
        /// Source buffers.
        bufs: &'a [IoBuf<'static>],
    },
    /// `fdatasync` file `file`: every write completed before this operation was pushed is durable when it
    /// completes.
    SyncData {
        /// Index of the file in [`HostQueueBackend::create_queue`]'s `files`.
        file: usize,
    },
}

/// The outcome of one [`HostOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCompletion {
    /// The `user_data` given to [`HostQueue::push`].
    pub user_data: u64,
    /// Bytes transferred (possibly fewer than asked: a read at the end of the file), or the positive `errno`.
    pub result: std::result::Result<u64, i32>,
}

/// One queue of asynchronous host I/O (see the [module docs](self) for the contract).
pub trait HostQueue: Send {
    /// Queues `op`; nothing reaches the kernel before [`submit`](HostQueue::submit).
    fn push(&mut self, user_data: u64, op: HostOp<'_>);

    /// Submits every queued operation the ring has room for, with one system call. `Err` only when the queue
    /// itself is broken; an operation's own failure comes back as its completion.
    fn submit(&mut self) -> Result<()>;

    /// The next finished operation, or `None` when none is ready.
    fn next_completion(&mut self) -> Option<HostCompletion>;

    /// Written when completions are ready.
    fn notifier(&self) -> &EventFd;

    /// Operations pushed and not yet returned by [`next_completion`](HostQueue::next_completion).
    fn pending(&self) -> usize;
}

/// Makes [`HostQueue`]s: one backend (io_uring, AIO, synchronous) chosen by the factory for a whole disk.
pub trait HostQueueBackend: Send + Sync + Debug {
    /// The backend's name as the CLI shows it (`io_uring`, `aio`, `sync`).
    fn name(&self) -> &'static str;

    /// A queue of at most `depth` operations in the kernel at once, over `files` (an operation's `file` indexes
    /// this slice). The queue keeps its own reference to the descriptors (registered files, or duplicates), so
    /// it stays valid after `files` are dropped.
    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>>;
}
