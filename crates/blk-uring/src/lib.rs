//! blk's asynchronous host-file layer on Linux io_uring.
//!
//! [`UringBackend`] implements blk-core's [`HostQueueBackend`](blk_core::HostQueueBackend); each
//! [`UringQueue`] it makes is one io_uring ring implementing [`HostQueue`](blk_core::HostQueue). Formats never
//! name this crate: the factory hands an `Arc<dyn HostQueueBackend>` to their async queues
//! ([`MappedQueue`](blk_core::MappedQueue)). The factory finds the backend through [`BACKEND`], its
//! [`BackendDescriptor`](blk_core::BackendDescriptor): the name `io_uring` (as `-i` takes it) and a probe that
//! honours [`DISABLE_IO_URING_ENV`].
//!
//! | module | what it holds |
//! |---|---|
//! | `backend` | [`UringBackend`]: the probe (`UringBackend::new`) and queue creation; [`BACKEND`], the registration |
//! | `queue` | [`UringQueue`]: the ring, submission with a backlog, reaping, waiting on drop, moving to another thread's ring |
//! | `ring` | the ring's set-up flags with their fallbacks ([`RingOptions`], [`RingSetup`]), and which thread owns a ring |
//! | `slot` | the slot table: each operation's copied buffer list and progress (a `HostTransfer`) until it completes |
//! | `files` | the queue's files: duplicated, and registered with the ring unless the kernel refuses |
//! | `fixed_buffers` | registered buffers ([`UringQueue::register_buffers`]): which region holds a buffer |
//!
//! # The contract, as this backend keeps it
//!
//! The contract is blk-core's ([`blk_core::host_queue`]); here is how io_uring meets it.
//!
//! - [`UringBackend::new`] creates and drops a tiny ring and checks the operations it needs (`READV`, `WRITEV`,
//!   `FSYNC`; `READ`/`WRITE` are used for single buffers when the kernel has them). When io_uring cannot be
//!   used (too old a kernel, `kernel.io_uring_disabled`, seccomp answering `ENOSYS`/`EPERM`) it fails with
//!   [`ErrorKind::Unsupported`](blk_core::ErrorKind::Unsupported) and `io_uring is not available: <reason>`, so
//!   a factory can fall back to another backend. [`BACKEND`]'s probe fails the same way, with the reason
//!   `disabled by BLK_DISABLE_IO_URING`, when that environment variable is set (before touching io_uring at
//!   all: some sandboxes kill a process that tries).
//! - A queue's ring has `depth` entries rounded up to a power of two (at most [`MAX_QUEUE_DEPTH`]); at most
//!   `depth` operations are in the ring at once. The completion ring is twice as large, so it never overflows.
//! - The ring (see "The ring" below) is made with `COOP_TASKRUN` and `TASKRUN_FLAG` where the kernel has them
//!   (5.19): a completion made outside the submitting thread (an io-wq worker's buffered write, a device
//!   interrupt's direct I/O) does not interrupt that thread with an inter-processor interrupt; it is posted at
//!   the thread's next system call, or at once when the thread sleeps (on the eventfd or anything else), and
//!   [`next_completion`](blk_core::HostQueue::next_completion) makes that system call itself
//!   (`io_uring_enter` with `GETEVENTS`, no wait) when the kernel flags completions as waiting. So a queue is
//!   best reaped by the thread that submits to it (as every blk queue is); another thread reaping still gets
//!   every completion, once the submitter enters the kernel (a sleeping submitter is woken for it; one that
//!   ended leaves it to a kernel worker).
//! - The queue keeps duplicates of its files ([`HostFile::try_clone`](blk_core::HostFile::try_clone)), so it
//!   works after the `HostFile`s it was made from are dropped and can ask a file's length. A ring any thread
//!   may use gets them registered (`IORING_REGISTER_FILES`; SQEs use `types::Fixed`, sparing the kernel a
//!   file lookup per operation); a single-issuer ring does not (see "Threads"), nor one whose kernel refuses:
//!   SQEs then name the duplicated descriptors ([`UringQueue::files_registered`] says which). Either way the
//!   queue keeps the files' open file descriptions, and with them their advisory (OFD) locks, while it lives,
//!   and releases them by the time its drop returns: it unregisters registered files and closes the
//!   duplicates (a closed ring would release registered files later, from a kernel worker, and a `qemu-img`
//!   run right after could find the image still locked).
//! - The queue's eventfd is registered with the ring (`IORING_REGISTER_EVENTFD`): the kernel writes it for
//!   every completion. Completions the queue makes itself (an operation naming a file index the queue does
//!   not have: `EBADF`) are signalled by writing it in [`submit`](blk_core::HostQueue::submit).
//! - [`wait_for_completion`](blk_core::HostQueue::wait_for_completion) sleeps in `io_uring_enter` (`GETEVENTS`,
//!   one completion; a timeout through `IORING_ENTER_EXT_ARG`) when everything is submitted, something is
//!   in the kernel and the calling thread owns the ring: the kernel runs the thread's task work and posts
//!   completions inside that one call, where a sleep on the eventfd takes a read, a poll interrupted by the
//!   task work and restarted, and a read again. [`MappedQueue`](blk_core::MappedQueue)'s `wait` uses it.
//! - [`push`](blk_core::HostQueue::push) copies the operation and its iovec array into a slot (slot buffer
//!   lists are reused) and never enters the kernel. [`submit`](blk_core::HostQueue::submit) fills the
//!   submission queue from the backlog and calls `io_uring_enter` once (again only after `EINTR`, or when the
//!   kernel stopped at a failing entry). Operations beyond the ring's room wait in the backlog; they go out
//!   from [`next_completion`](blk_core::HostQueue::next_completion) once the completion ring is drained and
//!   slots are free. `EAGAIN`/`EBUSY` from the kernel leave the entries queued for the next call.
//! - [`next_completion`](blk_core::HostQueue::next_completion) reads the completion ring directly: no system
//!   call per completion, and none at all (the eventfd is not read) while completions are there; it enters the
//!   kernel only to post completions waiting as task work or to submit the backlog. Each completion entry of a read or write is a step of the operation's
//!   [`HostTransfer`](blk_core::host_queue::HostTransfer): a short transfer goes back to the backlog for the
//!   rest, from where it stopped; a read ends at the end of the file (a short count); an error ends the
//!   operation with the error, even after some bytes (unless a read stopped at the end of the file: then the
//!   bytes so far); a write that makes no progress fails with `EIO`. A list of more than 1024 (`IOV_MAX`)
//!   buffers goes out as several entries, one after the other.
//! - `SyncData` is `IORING_OP_FSYNC` with `DATASYNC`: it covers the writes completed before it was pushed,
//!   as the contract asks (not writes still in flight beside it).
//! - The memory behind an operation's buffers must stay valid until its completion has been returned (the
//!   [`HostQueue`](blk_core::HostQueue) contract). Dropping a queue waits for every operation the kernel has
//!   been handed, so the caller's memory is not written after the drop; backlogged operations (and the rest of
//!   a short transfer waiting there) are dropped unexecuted and produce no completion. `pending()` counts
//!   pushes minus completions returned, nothing else.
//!
//! O_DIRECT is the caller's business: the kernel gets the buffers as they are, so a misaligned buffer on an
//! O_DIRECT file completes with `EINVAL` (the queue keeps working). Formats bounce unaligned I/O before it gets
//! here.
//!
//! # The ring
//!
//! [`RingOptions`] (from [`UringBackend::with_ring_options`]; [`RingOptions::default`] otherwise) says which
//! set-up flags a queue's ring asks for; each is used only where the kernel has it, the ring being made again
//! without the newest flag left whenever the kernel answers `EINVAL`, down to the flags of Linux 5.1.
//! [`UringQueue::ring_setup`] says what a ring got. By default: `SUBMIT_ALL` (5.18: the kernel goes on past
//! an entry that fails early), `COOP_TASKRUN` and `TASKRUN_FLAG` (above), `SINGLE_ISSUER` (6.0: the kernel
//! skips synchronisation a ring only one thread submits to does not need) and `NO_SQARRAY` (6.6: no
//! indirection array between the submission ring and its entries).
//!
//! `DEFER_TASKRUN` (6.1), which would post completions only inside the submitting thread's own
//! `io_uring_enter`, is not used: with it, only that thread can ever post its completions. Another thread
//! reaping or dropping the queue (a vhost-user queue drained from the frontend's thread, a queue dropped after
//! its thread ended) would find nothing and wait forever; after the submitting thread ends, its completions
//! stay unposted until the ring closes (`tests/kernel_ring_rules.rs` shows both on this kernel).
//!
//! # Threads and locks
//!
//! A queue is used from one thread at a time (`&mut self`), and is `Send`: made on one thread, it may be
//! used on another, and move between threads, with operations in flight or not. A single-issuer ring is
//! made disabled (`IORING_SETUP_R_DISABLED`: the eventfd, and buffers, register from any thread before it is
//! enabled) and enabled (`IORING_REGISTER_ENABLE_RINGS`) by the first thread that submits, which owns it from
//! then on: the kernel refuses another thread's submissions and registrations (`EEXIST`). So, per call:
//! - [`submit`](blk_core::HostQueue::submit) (and buffer registration:
//!   [`HostQueue::register_memory`](blk_core::HostQueue::register_memory) answers `false` while it cannot)
//!   from a thread other than the owner: when none of the queue's operations are in the kernel, the queue
//!   moves to a new ring owned by the calling thread (its eventfd and registered buffers registered again;
//!   [`UringQueue::ring_moves`] counts these), and submits there. Otherwise the operations wait in the
//!   backlog and go out from
//!   [`next_completion`](blk_core::HostQueue::next_completion) on the new ring once the old ring's completions
//!   have been reaped (they still come: any thread may read a ring's completions, and the old owner posts
//!   them). Nothing blocks, nothing is lost.
//! - [`next_completion`](blk_core::HostQueue::next_completion) from any thread reads the completion ring; only
//!   the owner enters the kernel for the task work flag (another thread's call would not run the owner's).
//! - Dropping from any thread waits for the operations in the kernel (a ring without `DEFER_TASKRUN` may be
//!   waited on by any thread). Only the owner may unregister anything (others get `EEXIST`), which is why a
//!   single-issuer ring never registers the files: a queue dropped by another thread still releases them,
//!   and their locks, before its drop returns. (Registered buffers of a ring dropped by another thread are
//!   unpinned by the kernel worker that frees the ring, shortly after.)
//! - With [`RingOptions::single_issuer`] off (or a kernel without it), the ring is shared by every thread and
//!   never moves.
//!
//! Moving costs a ring set-up (a few system calls, and pinning the registered buffers again): a queue is best
//! kept on one thread, as blk's own users do (`blk bench` makes each queue on its thread; blk-vhost-user makes
//! each on its vring thread, when the first request comes, drains it from the frontend's thread on
//! `GET_VRING_BASE`, which only reaps, and drops it on whichever thread lets go of the connection last). A
//! queue holds no lock: nothing to order. The backend is a plain value (`Copy`), shared freely.
//!
//! # Limits
//!
//! | what | cap |
//! |---|---|
//! | ring size / operations in the kernel per queue | `depth` rounded up to a power of two, at most [`MAX_QUEUE_DEPTH`] (4096) |
//! | iovecs per submission entry | 1024 (`IOV_MAX`); longer lists are split |
//! | bytes per single-buffer entry | `0x7fff_f000` (the kernel's `MAX_RW_COUNT`); the rest is resubmitted |
//! | backlog | unbounded: every pushed operation is kept until it completes |
//! | `submit` retries while the ring answers `EAGAIN`/`EBUSY` and nothing of the queue is in the kernel | 1000, 1 ms apart |
//! | registered buffers per queue | [`MAX_FIXED_BUFFERS`] (16384) regions of at most [`MAX_FIXED_BUFFER_LEN`] (1 GiB), the kernel's limits |
//!
//! Registered (fixed) buffers are opt-in: [`UringQueue::register_buffers`] (unsafe: the regions must outlive
//! the queue) on a queue from [`UringBackend::create_uring_queue`], or the same through
//! [`HostQueue::register_memory`](blk_core::HostQueue::register_memory), which a
//! [`GuestQueue`](blk_core::GuestQueue) calls with the VMM's guest memory (keeping it mapped for the queue's
//! life); then single-buffer operations inside a region use `READ_FIXED`/`WRITE_FIXED`, counted by
//! [`HostQueue::fixed_buffer_ops`](blk_core::HostQueue::fixed_buffer_ops). Vectored operations always use
//! `READV`/`WRITEV`.
//!
//! # Example
//!
//! ```
//! use blk_core::{ErrorKind, HostFile, HostOp, HostOpenOptions, HostQueueBackend, IoBuf, IoBufMut};
//! use blk_uring::UringBackend;
//!
//! # fn main() -> blk_core::Result<()> {
//! let backend = match UringBackend::new() {
//!     Ok(backend) => backend,
//!     Err(e) if e.kind() == ErrorKind::Unsupported => {
//!         eprintln!("{e}"); // io_uring is disabled here: a factory would fall back
//!         return Ok(());
//!     }
//!     Err(e) => return Err(e),
//! };
//! let dir = tempfile::tempdir().unwrap();
//! let file = HostFile::create(dir.path().join("disk.img"), HostOpenOptions::default())?;
//! file.set_len(1 << 20)?;
//! let mut queue = backend.create_queue(&[&file], 32)?;
//!
//! // Buffers must stay valid until their completions are returned: 'static ones here.
//! static DATA: [u8; 512] = [0xab; 512];
//! let back: &'static mut [u8] = Box::leak(vec![0u8; 512].into_boxed_slice());
//! queue.push(1, HostOp::Write { file: 0, offset: 4096, bufs: &[IoBuf::from(&DATA[..])] });
//! queue.push(2, HostOp::SyncData { file: 0 });
//! queue.push(3, HostOp::Read { file: 0, offset: 1 << 20, bufs: &[IoBufMut::from(back)] });
//! queue.submit()?; // one io_uring_enter for the three
//!
//! let mut done = Vec::new();
//! while queue.pending() > 0 {
//!     // A VMM waits on queue.notifier() (the kernel writes it) in its event loop instead of spinning.
//!     match queue.next_completion() {
//!         Some(c) => done.push(c),
//!         None => std::thread::yield_now(),
//!     }
//! }
//! done.sort_by_key(|c| c.user_data);
//! assert_eq!(done[0].result, Ok(512));
//! assert_eq!(done[1].result, Ok(0));
//! assert_eq!(done[2].result, Ok(0)); // a read at the end of the file transfers nothing
//! let mut check = [0u8; 512];
//! file.read_exact_at(4096, &mut check)?;
//! assert_eq!(check, DATA);
//! # Ok(())
//! # }
//! ```

mod backend;
mod files;
mod fixed_buffers;
mod queue;
mod ring;
mod slot;

pub use backend::{UringBackend, BACKEND, DISABLE_IO_URING_ENV};
pub use fixed_buffers::{MAX_FIXED_BUFFERS, MAX_FIXED_BUFFER_LEN};
pub use queue::{UringQueue, MAX_QUEUE_DEPTH};
pub use ring::{RingOptions, RingSetup};

/// The backend's name, as [`BACKEND`] and [`blk_core::HostQueueBackend::name`] give it and `-i` takes it.
pub const BACKEND_NAME: &str = "io_uring";
