//! The asynchronous host-file layer: [`HostQueue`], one submission/completion queue of host I/O,
//! [`HostQueueBackend`], which makes them, and [`BackendDescriptor`], what a backend crate registers.
//!
//! Backend crates (`blk-uring` on io_uring, `blk-aio` on Linux AIO) implement these traits; blk-core's
//! [`SyncHostBackend`](crate::SyncHostBackend) runs the same operations with `preadv`/`pwritev` where neither is
//! available. Formats never see a backend type: their async queues ([`MappedQueue`](crate::MappedQueue), the
//! engine) take a `Box<dyn HostQueue>` from the `Arc<dyn HostQueueBackend>` the factory gave them.
//!
//! # The contract
//!
//! Every backend keeps what follows, and the engine relies on nothing else. The rules on short transfers are
//! code as well as text: [`HostTransfer`] decides, step by step, whether a read or write goes on or what it
//! completes with, and every backend drives its reads and writes through one (so does
//! [`HostFile`]'s own positioned I/O loop, which the synchronous backend uses).
//!
//! ## Submission
//! - [`HostQueue::push`] never fails and never enters the kernel: it copies the operation, including its
//!   iovec array (so `bufs` only needs to live for the call), into the queue's own storage. An operation the
//!   backend can settle by itself (a `file` index the queue does not have: `EBADF`) becomes a completion.
//! - Nothing pushed reaches the kernel before [`HostQueue::submit`], which hands everything pushed so far to
//!   the kernel with one system call (io_uring: one `io_uring_enter`; AIO: one `io_submit`; the synchronous
//!   backend runs the operations there). What does not fit (more than `depth` operations in the kernel) waits
//!   in a backlog and goes out from [`HostQueue::next_completion`] as completions free room, without another
//!   `submit`. `submit` returns `Err` only when the queue as a whole is broken; an operation's own failure is
//!   its completion.
//!
//! ## Completions
//! - [`HostQueue::next_completion`] returns each pushed operation's completion exactly once, in any order, or
//!   `None` when none is ready; it never blocks, and it reaps without a system call per operation.
//! - The kernel (or the backend, for completions it makes itself) writes [`HostQueue::notifier`] when
//!   completions are ready, at the latest by the `submit` or `next_completion` call that made them; the owner
//!   of the queue may write it too (to signal completions it produced itself). An owner that calls
//!   `next_completion` until `None` after every wake-up misses nothing.
//! - [`HostCompletion::result`] is, for a read, `Ok(n)` with `n` the bytes asked for, or fewer only when the
//!   file ends at `offset + n` (`Ok(0)` at or past the end); for a write, `Ok` with all the bytes asked for,
//!   never fewer; for a sync, `Ok(0)`; otherwise `Err` with a positive `errno`.
//!
//! ## Short transfers
//! The kernel may move fewer bytes than asked without reporting an error: at the end of a file, on a signal,
//! on a page fault in the middle of the buffers, past its per-call limit, or when a write fills the disk
//! part-way. A backend never passes such a count on as the result; it continues the operation from where
//! it stopped (the next offset, the rest of the buffers) until one of these ends it:
//! - all bytes are transferred: `Ok(len)`;
//! - a read step transfers nothing: the file ends there, `Ok(bytes so far)`;
//! - a step fails with `errno`: `Err(errno)`, even after earlier steps transferred bytes (a read's buffers,
//!   a write's file range are then partly done: the caller treats them as undefined); except that a read step
//!   failing after earlier steps read some bytes, at an offset at or past the end of the file, is the end of
//!   the file, `Ok(bytes so far)` (an O_DIRECT file whose size is not a multiple of the alignment: the
//!   continuation starts unaligned at the end, and some file systems answer `EINVAL` there instead of 0). The
//!   backend asks the file's length (one `fstat`) on that path only;
//! - a write step transfers nothing: `Err(EIO)` (the kernel gave no error to report, and retrying would not
//!   end);
//! - `EINTR` from a step is no end: the step is retried.
//!
//! So a caller may take a short read for the end of the file (the engine zero-fills the rest of the piece,
//! as the image's size says those bytes are zero) and never sees a short write.
//!
//! ## Buffers
//! - The memory behind `bufs` must stay valid until the operation's completion has been returned, or the
//!   queue dropped: the caller guarantees it (guest memory, or buffers it owns).
//! - An operation of up to [`IOV_MAX`] (1024) buffers is always taken. More are split over several steps
//!   (io_uring, the synchronous backend), or refused: the operation completes with `EINVAL` and transfers
//!   nothing (AIO, whose kernel interface takes at most `UIO_MAXIOV`).
//! - Buffers reach the kernel as they are: O_DIRECT alignment is the caller's business. A misaligned operation
//!   on an O_DIRECT file completes with `EINVAL` alone; the queue keeps working.
//!
//! ## Syncs
//! [`HostOp::SyncData`] makes durable every write whose completion was returned before the sync was pushed;
//! not writes in flight beside it.
//!
//! ## `pending()`
//! [`HostQueue::pending`] is exact: operations pushed minus completions returned. A push adds one (also for an
//! operation settled at once), a completion returned by `next_completion` takes one away, and nothing else
//! changes it: not `submit`, not the backlog, not a short transfer's continuation, not reaping from the kernel
//! into the queue's own list. So `pending() == 0` means nothing of the queue is left anywhere, and while it is
//! not, a completion will come (the engine waits for that before it drops the queue).
//!
//! ## Drop
//! Dropping a queue blocks until the kernel holds none of its operations, so no buffer and no iovec array is
//! touched after the drop returns. Operations the kernel does not hold are discarded without running: pushed
//! and never submitted, waiting in the backlog, or the rest of a short transfer waiting to go on; completions
//! not yet returned are discarded too. A write dropped with its queue may thus be done in full, in part or not
//! at all: a caller that needs the outcomes reaps until `pending()` is 0 first (the engine does, in its own
//! `Drop`). The queue's own references to the files (registrations, duplicated descriptors, and with them the
//! advisory locks of their open file descriptions) are released by the time the drop returns.
//!
//! ## Threads
//! A queue is `Send` and used from one thread at a time (`&mut self`). It may be made on one thread and used
//! on another, and move between threads at any time, with operations in flight or not: whichever thread
//! calls `next_completion` gets every completion (reaping from a thread other than the submitting one may only
//! see a completion after the submitting thread's next system call, or a moment after it ended), whichever
//! thread drops it waits for the kernel as above, and nothing is lost or deadlocks. A backend may tie kernel
//! state to the thread that submits (io_uring: a single-issuer ring, enabled by its first submitting thread) and
//! pay for a change of submitting thread (blk-uring moves to a new ring, once the old one has none of the
//! queue's operations in the kernel): a queue is best submitted to from one thread.
//!
//! ## Registration
//! A backend crate exports `pub const BACKEND: &dyn BackendDescriptor`: the name `-i` takes, its aliases, and a
//! probe that makes the backend or says in one line why it cannot work here. The factory probes each
//! compiled-in backend once per process, in the order of its list, and falls back to the next on `Err`.

use std::fmt::Debug;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::buffer::{IoBuf, IoBufMut};
use crate::error::Result;
use crate::host_file::HostFile;

/// The most buffers one positioned vectored system call (`preadv`, `IORING_OP_READV`, `IOCB_CMD_PREADV`, ...)
/// takes: Linux's `IOV_MAX`/`UIO_MAXIOV`.
pub const IOV_MAX: usize = crate::sys::IOV_MAX;

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
    /// Bytes transferred, or the positive `errno`. A read transfers fewer bytes than asked only when the file
    /// ends there; a write never does (see the [module docs](self)).
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

    /// Operations pushed and not yet returned by [`next_completion`](HostQueue::next_completion), exactly.
    fn pending(&self) -> usize;

    /// Sleeps in the backend's own wait until a completion is ready or `timeout` passes (`None`: no limit),
    /// instead of on the [`notifier`](HostQueue::notifier): io_uring waits inside `io_uring_enter`, which posts
    /// the completions on the way, with none of a sleep on the eventfd's system calls (read, poll, the
    /// restarted poll, read). Returns `Ok(false)`, having slept nothing, when it cannot now (nothing of this
    /// queue in the kernel, operations not submitted yet, a ring of another thread) or the backend has no such
    /// wait (the default): the caller sleeps on the notifier then. A wake-up may come with nothing ready (a
    /// signal, the timeout): callers reap and loop.
    fn wait_for_completion(&mut self, timeout: Option<std::time::Duration>) -> Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// Registers memory regions with the kernel (io_uring: `IORING_REGISTER_BUFFERS`), so single-buffer reads
    /// and writes inside one of them use the registered form (`READ_FIXED`/`WRITE_FIXED`); others stay plain.
    /// Regions registered before are replaced, but only while no operation is in the kernel (otherwise this
    /// returns `false` and changes nothing: call again when the queue is idle). Returns whether the backend
    /// took them; the default (backends without registration) says `false`.
    ///
    /// # Safety
    /// The regions must stay mapped, as memory I/O may read and write, until the queue is dropped or a later
    /// call that returns `true` replaces them.
    unsafe fn register_memory(&mut self, regions: &[IoBufMut<'static>]) -> Result<bool> {
        let _ = regions;
        Ok(false)
    }

    /// How many operations went out with registered memory so far.
    fn fixed_buffer_ops(&self) -> u64 {
        0
    }
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

/// What a backend crate registers with the factory: the name `-i` takes, other names it answers to, and how to
/// make the backend on this host. Each backend crate exports one as `pub const BACKEND: &dyn BackendDescriptor`;
/// the factory keeps the compiled-in ones in one list, in the order it falls back through them.
pub trait BackendDescriptor: Send + Sync + Debug {
    /// The name the CLI shows and `-i` takes (`io_uring`, `aio`, `sync`).
    fn name(&self) -> &'static str;

    /// Other names `-i` takes for it (qemu-img's `native` for AIO, `threads` for the synchronous backend).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// The backend, when it works on this host; otherwise an error saying why in one line (the factory keeps
    /// it as the note of a fallback). The factory probes each backend once per process.
    fn probe(&self) -> Result<Arc<dyn HostQueueBackend>>;
}

/// A buffer of a transfer as [`HostTransfer`] walks it: [`IoBufMut`], [`IoBuf`], or a kernel `iovec`.
pub trait TransferBuffer: Copy {
    /// The buffer's length in bytes.
    fn len(&self) -> usize;

    /// Whether the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part after its first `n` bytes (all of it gone when `n >= len`).
    fn after(&self, n: usize) -> Self;
}

impl TransferBuffer for IoBufMut<'_> {
    fn len(&self) -> usize {
        IoBufMut::len(self)
    }

    fn after(&self, n: usize) -> Self {
        let n = n.min(self.len());
        // `n <= len`, so the range `n..len` is inside the buffer and `subslice` cannot refuse it.
        self.subslice(n, self.len() - n).unwrap_or(*self)
    }
}

impl TransferBuffer for IoBuf<'_> {
    fn len(&self) -> usize {
        IoBuf::len(self)
    }

    fn after(&self, n: usize) -> Self {
        let n = n.min(self.len());
        // As for IoBufMut: `n..len` is inside the buffer.
        self.subslice(n, self.len() - n).unwrap_or(*self)
    }
}

impl TransferBuffer for libc::iovec {
    fn len(&self) -> usize {
        self.iov_len
    }

    fn after(&self, n: usize) -> Self {
        let n = n.min(self.iov_len);
        libc::iovec {
            // Address arithmetic only (the pointer is not dereferenced here): stays inside the buffer.
            iov_base: self.iov_base.cast::<u8>().wrapping_add(n).cast(),
            iov_len: self.iov_len - n,
        }
    }
}

/// Which way a [`HostTransfer`] moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// From the file into the buffers.
    Read,
    /// From the buffers into the file.
    Write,
}

/// One read or write in progress, between the system calls (or ring entries) that carry it out: where the next
/// step starts, which buffers are left, and, after each step, whether the operation goes on or what it
/// completes with. The [module docs](self)' rules on short transfers, in the one place every backend and
/// [`HostFile`]'s positioned I/O loop take them from.
///
/// A step is one `preadv`/`pwritev`, one submission entry or one iocb over [`rest`](HostTransfer::rest) of
/// the buffers (at most [`IOV_MAX`] of them) at [`offset`](HostTransfer::offset); its result goes to
/// [`step`](HostTransfer::step):
///
/// ```
/// use blk_core::host_queue::HostTransfer;
/// use blk_core::IoBufMut;
///
/// let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
/// let bufs = [IoBufMut::from(&mut a[..]), IoBufMut::from(&mut b[..])];
/// let mut read = HostTransfer::read(100, 8);
/// // The kernel read 6 bytes: go on at 106 with the last 2 bytes of `b`.
/// assert_eq!(read.step(Ok(6), &bufs, || None), None);
/// assert_eq!(read.offset(), 106);
/// let (first, more) = read.rest(&bufs);
/// assert_eq!((first.map(|b| b.len()), more.len()), (Some(2), 0));
/// // The next step read nothing: the file ends at 106.
/// assert_eq!(read.step(Ok(0), &bufs, || None), Some(Ok(6)));
///
/// // A read that fails after a partial step fails, unless the file ends where it stopped.
/// let mut read = HostTransfer::read(0, 8);
/// assert_eq!(read.step(Ok(4), &bufs, || Some(4)), None);
/// let mut inside = read; // the file goes on after byte 4: the error
/// assert_eq!(inside.step(Err(libc::EIO), &bufs, || Some(4096)), Some(Err(libc::EIO)));
/// assert_eq!(read.step(Err(libc::EINVAL), &bufs, || Some(4)), Some(Ok(4)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTransfer {
    kind: TransferKind,
    /// Host offset of the next byte to transfer.
    offset: u64,
    /// Bytes transferred so far.
    done: u64,
    /// Bytes still to transfer.
    remaining: u64,
    /// First buffer not completely transferred.
    index: usize,
    /// Bytes of `bufs[index]` already transferred.
    skip: usize,
}

impl HostTransfer {
    /// A transfer of `len` bytes at `offset`, in direction `kind`.
    #[inline]
    pub fn new(kind: TransferKind, offset: u64, len: u64) -> HostTransfer {
        HostTransfer {
            kind,
            offset,
            done: 0,
            remaining: len,
            index: 0,
            skip: 0,
        }
    }

    /// A read of `len` bytes at `offset`.
    #[inline]
    pub fn read(offset: u64, len: u64) -> HostTransfer {
        HostTransfer::new(TransferKind::Read, offset, len)
    }

    /// A write of `len` bytes at `offset`.
    #[inline]
    pub fn write(offset: u64, len: u64) -> HostTransfer {
        HostTransfer::new(TransferKind::Write, offset, len)
    }

    /// Which way the transfer moves bytes.
    #[inline]
    pub fn kind(&self) -> TransferKind {
        self.kind
    }

    /// The host offset the next step starts at.
    #[inline]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes transferred so far.
    #[inline]
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Bytes still to transfer.
    #[inline]
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Index of the first buffer the next step transfers (into, or from).
    #[inline]
    pub fn first_buffer(&self) -> usize {
        self.index
    }

    /// The buffers the next step transfers, from the list `bufs` the transfer was made for: the rest of the
    /// first one when part of it is done (`Some`, a step of its own), else `None` and the buffers from
    /// [`first_buffer`](HostTransfer::first_buffer) on (all of them: a caller passes at most [`IOV_MAX`] to
    /// one system call).
    pub fn rest<'b, B: TransferBuffer>(&self, bufs: &'b [B]) -> (Option<B>, &'b [B]) {
        let tail = bufs.get(self.index..).unwrap_or(&[]);
        if self.skip == 0 {
            return (None, tail);
        }
        match tail.split_first() {
            Some((first, after)) => (Some(first.after(self.skip)), after),
            None => (None, tail),
        }
    }

    /// For a buffer list the caller owns and reuses between steps (a ring's copy): cuts the part already
    /// transferred off the first buffer, in place, so that the next step takes `bufs[first_buffer()..]` as it
    /// is. Call it after every [`step`](HostTransfer::step) that returns `None`, before building the next step.
    pub fn cut_in_place<B: TransferBuffer>(&mut self, bufs: &mut [B]) {
        if self.skip == 0 {
            return;
        }
        if let Some(first) = bufs.get_mut(self.index) {
            *first = first.after(self.skip);
        }
        self.skip = 0;
    }

    /// Accounts for one step over `bufs` (the same list [`rest`](HostTransfer::rest) was given): it moved
    /// `Ok(n)` bytes or failed with `Err(errno)`. Returns `None` when the operation goes on (the next step
    /// starts at [`offset`](HostTransfer::offset) with [`rest`](HostTransfer::rest) of the buffers), or the
    /// operation's result, by the [module docs](self)' rules. `file_len` gives the file's current length; it is
    /// asked only when a read fails after a partial transfer (`None` when even that fails: no end of file).
    pub fn step<B: TransferBuffer>(
        &mut self,
        result: std::result::Result<usize, i32>,
        bufs: &[B],
        file_len: impl FnOnce() -> Option<u64>,
    ) -> Option<std::result::Result<u64, i32>> {
        match result {
            Ok(n) if n > 0 => {
                self.advance(n, bufs);
                (self.remaining == 0).then_some(Ok(self.done))
            }
            // Nothing moved: nothing was asked, the end of the file, or a write that cannot go on.
            Ok(_) if self.remaining == 0 => Some(Ok(self.done)),
            Ok(_) => match self.kind {
                TransferKind::Read => Some(Ok(self.done)),
                TransferKind::Write => Some(Err(libc::EIO)),
            },
            Err(libc::EINTR) => None,
            Err(errno) => {
                let at_end_of_file = self.kind == TransferKind::Read
                    && self.done > 0
                    && file_len().is_some_and(|len| self.offset >= len);
                Some(if at_end_of_file {
                    Ok(self.done)
                } else {
                    Err(errno)
                })
            }
        }
    }

    /// Records `n` more bytes transferred over `bufs`.
    fn advance<B: TransferBuffer>(&mut self, n: usize, bufs: &[B]) {
        // usize is at most 64 bits on every target; a count beyond what was asked is clipped.
        let n = u64::try_from(n).unwrap_or(u64::MAX).min(self.remaining);
        self.offset = self.offset.saturating_add(n);
        self.done += n;
        self.remaining -= n;
        // Converting back cannot lose anything: `n` came from a usize.
        let mut left = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_add(self.skip);
        // Zero-length buffers at the front carry nothing: step over them, so the next step starts with data.
        while let Some(buf) = bufs.get(self.index) {
            if left < buf.len() {
                break;
            }
            left -= buf.len();
            self.index += 1;
        }
        self.skip = left;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens<B: TransferBuffer>(bufs: &[B]) -> Vec<usize> {
        bufs.iter().map(TransferBuffer::len).collect()
    }

    #[test]
    fn steps_walk_the_buffers_across_boundaries() {
        let (mut a, mut b, mut c) = ([0u8; 3], [0u8; 0], [0u8; 5]);
        let c1 = c.as_mut_ptr().wrapping_add(1);
        let bufs = [
            IoBufMut::from(&mut a[..]),
            IoBufMut::from(&mut b[..]),
            IoBufMut::from(&mut c[..]),
        ];
        let mut t = HostTransfer::read(100, 8);
        assert_eq!(t.rest(&bufs).0.map(|b| b.len()), None);
        assert_eq!(t.step(Ok(4), &bufs, || None), None);
        assert_eq!((t.done(), t.remaining(), t.offset()), (4, 4, 104));
        assert_eq!(t.first_buffer(), 2);
        let (first, more) = t.rest(&bufs);
        assert_eq!(first.map(|b| b.len()), Some(4));
        assert_eq!(first.map(|b| b.as_mut_ptr()), Some(c1));
        assert!(more.is_empty());
        // A count beyond what was asked is clipped.
        assert_eq!(t.step(Ok(10), &bufs, || None), Some(Ok(8)));
        assert_eq!((t.done(), t.remaining()), (8, 0));
    }

    #[test]
    fn owned_lists_are_cut_in_place() {
        let data = [0u8; 10];
        let mut bufs = [IoBuf::from(&data[..3]), IoBuf::from(&data[3..])];
        let mut t = HostTransfer::write(0, 10);
        assert_eq!(t.step(Ok(5), &bufs, || None), None);
        t.cut_in_place(&mut bufs);
        assert_eq!(t.first_buffer(), 1);
        assert_eq!(lens(&bufs[t.first_buffer()..]), [5]);
        assert_eq!(t.rest(&bufs).0.map(|b| b.len()), None);
        assert_eq!(t.step(Ok(4), &bufs, || None), None);
        t.cut_in_place(&mut bufs);
        assert_eq!(lens(&bufs[t.first_buffer()..]), [1]);
        assert_eq!(bufs[1].as_ptr(), data[9..].as_ptr());
        assert_eq!(t.step(Ok(1), &bufs, || None), Some(Ok(10)));
    }

    #[test]
    fn iovecs_are_cut_like_buffers() {
        let mut data = [0u8; 8];
        let mut iov = [libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 8,
        }];
        let mut t = HostTransfer::read(0, 8);
        assert_eq!(t.step(Ok(3), &iov, || None), None);
        t.cut_in_place(&mut iov);
        assert_eq!(iov[0].iov_len, 5);
        assert_eq!(iov[0].iov_base, data[3..].as_mut_ptr().cast());
        assert_eq!(iov[0].after(9).iov_len, 0);
    }

    #[test]
    fn a_read_ends_at_the_end_of_the_file() {
        let mut data = [0u8; 8];
        let bufs = [IoBufMut::from(&mut data[..])];
        let mut t = HostTransfer::read(0, 8);
        assert_eq!(t.step(Ok(3), &bufs, || panic!("not asked")), None);
        assert_eq!(t.step(Ok(0), &bufs, || panic!("not asked")), Some(Ok(3)));
        let mut t = HostTransfer::read(64, 8);
        assert_eq!(t.step(Ok(0), &bufs, || None), Some(Ok(0)));
        // Nothing asked: done at once, whichever way.
        let mut t = HostTransfer::write(0, 0);
        assert_eq!(t.step::<IoBufMut<'_>>(Ok(0), &[], || None), Some(Ok(0)));
    }

    #[test]
    fn an_error_after_a_partial_read_is_the_error_unless_the_file_ends_there() {
        let mut data = [0u8; 8192];
        let bufs = [IoBufMut::from(&mut data[..])];
        let mut partial = HostTransfer::read(4096, 8192);
        assert_eq!(partial.step(Ok(1000), &bufs, || None), None);
        // Inside the file (the file is longer than where the read stopped): the error.
        let mut t = partial;
        assert_eq!(
            t.step(Err(libc::EIO), &bufs, || Some(16384)),
            Some(Err(libc::EIO))
        );
        let mut t = partial;
        assert_eq!(
            t.step(Err(libc::EFAULT), &bufs, || None),
            Some(Err(libc::EFAULT))
        );
        // At the end of the file (an unaligned O_DIRECT continuation): the bytes read.
        let mut t = partial;
        assert_eq!(
            t.step(Err(libc::EINVAL), &bufs, || Some(5096)),
            Some(Ok(1000))
        );
        let mut t = partial;
        assert_eq!(
            t.step(Err(libc::EINVAL), &bufs, || Some(5000)),
            Some(Ok(1000))
        );
        // An error before any byte is the error, wherever the file ends.
        let mut t = HostTransfer::read(8192, 16);
        assert_eq!(
            t.step(Err(libc::EINVAL), &bufs, || panic!("not asked")),
            Some(Err(libc::EINVAL))
        );
    }

    #[test]
    fn writes_never_end_short() {
        let data = [0u8; 16];
        let bufs = [IoBuf::from(&data[..])];
        let mut t = HostTransfer::write(0, 16);
        assert_eq!(t.step(Ok(10), &bufs, || panic!("not asked")), None);
        let mut nothing_moved = t;
        assert_eq!(
            nothing_moved.step(Ok(0), &bufs, || None),
            Some(Err(libc::EIO))
        );
        // An error after a partial write is the error, even at the end of the file.
        assert_eq!(
            t.step(Err(libc::ENOSPC), &bufs, || panic!("not asked")),
            Some(Err(libc::ENOSPC))
        );
    }

    #[test]
    fn eintr_is_retried() {
        let mut data = [0u8; 8];
        let bufs = [IoBufMut::from(&mut data[..])];
        let mut t = HostTransfer::read(0, 8);
        assert_eq!(t.step(Err(libc::EINTR), &bufs, || None), None);
        assert_eq!((t.done(), t.offset()), (0, 0));
        assert_eq!(t.step(Ok(8), &bufs, || None), Some(Ok(8)));
    }
}
