//! The VHDX disk-image format (MS-VHDX): dynamic, fixed and differencing images with a crash-safe metadata log.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions};
//! use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.vhdx");
//! let create = VhdxCreateOptions::from_key_values(Some(64 << 20), &[])?;
//! Vhdx::create(&path, &create, &DenyNamedImages)?;
//! let disk = Vhdx::open(&path, &VhdxOpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages)))?;
//! disk.write_all_at(4096, b"hello")?;
//! let mut back = [0u8; 5];
//! disk.read_exact_at(4096, &mut back)?;
//! assert_eq!(&back, b"hello");
//! assert_eq!(disk.image_info()?.cluster_size, Some(8 << 20));
//! # Ok(())
//! # }
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | `header` | file identifier, the two headers, choosing and updating them (2.2.1, 2.2.2) |
//! | `region` | the region table (2.2.3) |
//! | `metadata`, `parent_locator` | the metadata region and its items (2.6) |
//! | `bat` | BAT entries, geometry (chunk ratio, interleaving), BAT checks (2.4, 2.5) |
//! | `log_format`, `log_replay`, `log_writer` | log entries, finding and replaying the active sequence, logged updates (2.3) |
//! | `vhdx` | [`Vhdx`]: open, shared state, parent |
//! | `io` | guest reads, writes, allocation, write-zeroes and discard |
//! | `vhdx_async` | [`VhdxMapper`], [`VhdxAsync`]: the asynchronous path (host ranges and zeros from the cached BAT, the rest slow) |
//! | `disk_file`, `info` | [`blk_core::DiskFile`], info, check, allocation status |
//! | `create`, [`options`] | [`Vhdx::create`], [`VhdxCreateOptions`], [`VhdxOpenOptions`], [`CREATE_OPTIONS`] |
//! | `guid`, `checksum`, `error` | GUIDs, CRC-32C, error constructors |
//!
//! # Crash safety
//!
//! Every metadata change (BAT entries) goes through the log: entry written, flushed, applied in place, flushed.
//! A newly allocated block's data is written and flushed before the BAT entry naming it is logged, so a crash
//! at any point leaves either the old mapping (the new block leaked past the end of the file) or the new one.
//! A writable open replays a log left behind; a read-only open of such an image fails ([`blk_core::ErrorKind::ReadOnly`]),
//! as in QEMU, because replaying only in memory would show data other tools do not see until a writable open.
//!
//! # Locking
//!
//! Handles from `try_clone` share one `Arc`'d state. The BAT sits behind an `RwLock`, taken for reading only
//! long enough to copy an entry, never across I/O: reads and in-place writes of present blocks run in parallel.
//! A `Mutex` (`meta`) serializes metadata changes: headers, the log, allocation at the end of the file and the
//! set of blocks being allocated. Lock order: `meta`, then the BAT's write lock (held only to store entries).
//! An allocating write reserves its block under `meta`, releases it while writing and flushing the block's data,
//! then retakes it to log the BAT entry; other writers to that block wait on a condition variable.
//!
//! The asynchronous path ([`VhdxAsync`]) adds no lock: [`VhdxMapper`] takes the BAT's read lock once per request
//! to copy the entries it needs and releases it before the queue submits any I/O. It maps only reads of fully
//! present blocks and of blocks that read as zeros, and in-place writes to fully present blocks once the
//! session's data write GUID is written; everything that changes metadata (allocation, BAT states, the log,
//! headers), reads of the parent or of partially present blocks, flush, write-zeroes and discard run through the
//! synchronous path above, which stays the only writer of metadata, so the crash-safety order and the lock order
//! are unchanged. Queues do host I/O on the backend set with [`Vhdx::set_io_backend`] (default: blk-core's
//! `SyncHostBackend`).
//!
//! # Limits
//!
//! - Block sizes 1..256 MiB (powers of two), logical and physical sectors 512 or 4096, virtual size <= 64 TiB, log
//!   length a multiple of 1 MiB (spec and QEMU).
//! - BAT read into memory: at most 256 MiB (`bat::MAX_BAT_BYTES`; 32 TiB of 1 MiB blocks); log: at most 1 GiB
//!   (`header::MAX_LOG_LENGTH`); one log entry: at most 32 MiB (`log_format::MAX_ENTRY_LENGTH`). Metadata items
//!   at most 1 MiB and tables at most 2047 entries (spec).
//! - A log whose header GUID is set but which holds no valid sequence is refused as corrupt (the spec's rule;
//!   QEMU ignores such a log).
//! - `map` mirrors qemu-img (all data, no offsets: QEMU's vhdx has no block status); [`Vhdx::allocation`] gives
//!   the real status.

mod bat;
mod checksum;
mod create;
mod disk_file;
mod error;
mod guid;
mod header;
mod info;
mod io;
mod log_format;
mod log_replay;
mod log_writer;
mod metadata;
pub mod options;
mod parent_locator;
mod region;
mod vhdx;
mod vhdx_async;

pub use options::{Subformat, VhdxCreateOptions, VhdxOpenOptions, CREATE_OPTIONS};
pub use vhdx::Vhdx;
pub use vhdx_async::{VhdxAsync, VhdxMapper};

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "vhdx";
