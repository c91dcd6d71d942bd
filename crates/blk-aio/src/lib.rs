//! Linux native AIO (`io_setup`/`io_submit`/`io_getevents`) as a backend of blk's asynchronous host-file layer,
//! for kernels and sandboxes where io_uring is disabled.
//!
//! [`AioBackend`] implements [`blk_core::HostQueueBackend`] (its name is `aio`; [`BACKEND`], its registration
//! with the factory, also answers to qemu-img's `native`); each queue it makes is an
//! [`AioQueue`], one kernel AIO context implementing [`blk_core::HostQueue`]: a batch of pushed operations goes
//! to the kernel with one `io_submit`, completions are reaped in bulk with one non-blocking `io_getevents`
//! and handed out one by one, and the kernel signals the queue's eventfd (`IOCB_FLAG_RESFD`) as operations
//! complete. Operations beyond the queue's depth wait in a backlog and are submitted as slots free.
//!
//! **Use it with O_DIRECT.** Linux runs buffered (page-cache) AIO synchronously inside `io_submit`: it works
//! and gives correct results, but `submit` then blocks for the whole batch. Only `O_DIRECT` files
//! ([`blk_core::HostOpenOptions::direct`]) get truly asynchronous I/O, and their buffers, offsets and lengths
//! must be aligned: a misaligned operation completes with `EINVAL` (the queue keeps working).
//!
//! ```
//! use blk_core::{ErrorKind, HostFile, HostOp, HostOpenOptions, HostQueueBackend, IoBuf};
//! use blk_aio::AioBackend;
//!
//! # fn main() -> blk_core::Result<()> {
//! let backend = match AioBackend::new() {
//!     Ok(backend) => backend,
//!     Err(e) if e.kind() == ErrorKind::Unsupported => return Ok(()), // fall back to another backend
//!     Err(e) => return Err(e),
//! };
//! let dir = tempfile::tempdir().unwrap();
//! let file = HostFile::create(dir.path().join("disk.img"), HostOpenOptions::default())?;
//! let mut queue = backend.create_queue(&[&file], 32)?;
//!
//! static DATA: [u8; 5] = *b"hello";
//! let bufs = [IoBuf::from(&DATA[..])];
//! queue.push(1, HostOp::Write { file: 0, offset: 4096, bufs: &bufs });
//! queue.push(2, HostOp::SyncData { file: 0 });
//! queue.submit()?;
//! let mut done = Vec::new();
//! while done.len() < 2 {
//!     match queue.next_completion() {
//!         Some(completion) => done.push(completion),
//!         None => std::thread::yield_now(), // a VMM waits on queue.notifier() instead
//!     }
//! }
//! assert!(done.iter().any(|c| c.user_data == 1 && c.result == Ok(5)));
//! assert_eq!(queue.pending(), 0);
//! assert_eq!(file.len()?, 4101);
//! # Ok(())
//! # }
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`backend`] | [`AioBackend`]: the availability probe and the queue factory; [`BACKEND`], the registration |
//! | [`queue`] | [`AioQueue`]: push, one-syscall submit, bulk reaping, backlog, drop waiting for the kernel |
//! | `slots` | the iocb slot table (iocbs that never move, reused iovec arrays, each operation's progress) and backlogged operations |
//! | `context` | one kernel AIO context and the raw system calls on it |
//! | `abi` | `struct iocb` and `struct io_event` as `<linux/aio_abi.h>` lays them out, opcodes and flags |
//!
//! # Behaviour
//! The contract is blk-core's ([`blk_core::host_queue`]); here is how Linux AIO meets it.
//! - Reads and writes with one buffer use `IOCB_CMD_PREAD`/`PWRITE`, with several `IOCB_CMD_PREADV`/`PWRITEV`;
//!   [`HostOp::SyncData`](blk_core::HostOp::SyncData) uses `IOCB_CMD_FDSYNC`. A filesystem that refuses
//!   `FDSYNC` (`EINVAL`) gets `fdatasync` on the thread calling `submit`/`next_completion`, for that sync and
//!   every later one on that file; the queue then writes the eventfd itself.
//! - An operation naming a file index the queue does not have completes with `EBADF`, one at an offset past
//!   `i64::MAX` with `EINVAL`, a read or write of zero bytes with `Ok(0)`, all without entering the kernel (on
//!   the next `submit`). Everything else the kernel refuses completes with the kernel's errno; `submit` fails
//!   only for the queue as a whole, which never happens with the current kernel interface.
//! - An event of a read or write is a step of its [`HostTransfer`](blk_core::host_queue::HostTransfer): when
//!   the kernel moved fewer bytes than asked (a read across the end of the file, a page fault part-way, a write
//!   that filled the filesystem), the rest goes out as a new iocb from where it stopped, with the next
//!   `io_submit` (`next_completion` sends it). A read ends at the end of the file with the bytes read; an
//!   error ends the operation with the error, even after some bytes (unless a read stopped at the end of the
//!   file: then the bytes so far); a write that makes no progress fails with `EIO`. So no completion is ever a
//!   short write, and a short read means the end of the file.
//! - When `io_submit` runs out of kernel resources (`EAGAIN`) the operations stay queued and are retried as
//!   completions come back; with nothing in flight the first of them completes with `EAGAIN` instead.
//! - Dropping a queue waits (blocking `io_getevents`) for every operation still in the kernel, so buffers are
//!   never written after the queue is gone; operations not in the kernel (never submitted, in the backlog, the
//!   rest of a short transfer) are dropped unexecuted. `pending()` counts pushes minus completions returned.
//!
//! # Threads and locks
//! A queue is owned by one thread at a time (`&mut self`, `Send`); it holds no lock. Queues share nothing but
//! the duplicated descriptors of their files; make one queue per thread.
//!
//! # Limits
//! - Queue depth: clamped to `1..=`[`MAX_DEPTH`] (4096). When `fs.aio-max-nr` leaves no room for the requested
//!   depth, it is halved until the kernel accepts it, down to 1; at 1, the queue fails with
//!   [`ErrorKind::Unsupported`](blk_core::ErrorKind::Unsupported). Per queue, memory is about 200 bytes per
//!   slot plus the iovec arrays the operations bring (kept for reuse).
//! - The backlog is not capped: it holds what the caller pushed beyond the depth (the caller bounds it).
//! - Buffers per operation: the kernel's `UIO_MAXIOV` (1024, [`blk_core::host_queue::IOV_MAX`]); more completes
//!   with `EINVAL` (the kernel refuses the iocb; nothing is transferred).
//! - Only little-endian Linux (x86_64, aarch64, ...): `struct iocb` differs on big-endian targets, which this
//!   crate refuses at compile time.

#[cfg(not(target_os = "linux"))]
compile_error!("blk-aio is Linux native AIO: it builds only for Linux targets");
#[cfg(target_endian = "big")]
compile_error!("blk-aio lays out `struct iocb` for little-endian targets only");

mod abi;
pub mod backend;
mod context;
pub mod queue;
mod slots;

pub use backend::{AioBackend, BACKEND};
pub use queue::AioQueue;

/// The backend's name, as [`BACKEND`], [`blk_core::HostQueueBackend::name`] and the CLI give it.
pub const BACKEND_NAME: &str = "aio";

/// The deepest queue [`AioQueue::new`] makes; deeper requests are clamped to it.
pub const MAX_DEPTH: u32 = 4096;
