//! The VHDX disk-image format (MS-VHDX): dynamic, fixed and differencing images with a crash-safe metadata log.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions, ImageAdmin, MappedDisk};
//! use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.vhdx");
//! let create = VhdxCreateOptions::from_key_values(Some(64 << 20), &[])?;
//! Vhdx::create(&path, &create, &DenyNamedImages)?;
//! let options = VhdxOpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
//! let disk = MappedDisk::new(Vhdx::open(&path, &options)?);
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
//! | `bat` | BAT entries and what a payload block's state means, geometry (chunk ratio, interleaving), BAT checks (2.4, 2.5) |
//! | `log_format`, `log_replay`, `log_writer` | log entries, finding and replaying the active sequence, logged updates (2.3) |
//! | `vhdx` | [`Vhdx`]: opening an image |
//! | `shared`, `parent` | the state every handle shares and the metadata updates made through it; the differencing parent |
//! | `mapper` | the one translation: [`blk_core::Mapper`] for [`Vhdx`] (host ranges, zeros, the parent, sector bitmaps) |
//! | `slow_write` | slow writes: the data write GUID, allocation and promotion, write-zeroes and discard |
//! | `admin` | [`blk_core::ImageAdmin`]: info, check |
//! | `descriptor` | [`FORMAT`]: vhdx's registration with the factory (probe, open, create) |
//! | `create`, [`options`] | [`Vhdx::create`], [`VhdxCreateOptions`], [`VhdxOpenOptions`], [`CREATE_OPTIONS`] |
//! | `guid`, `checksum`, `error` | GUIDs, CRC-32C, error constructors |
//!
//! # Crash safety
//!
//! Every metadata change (BAT entries) goes through the log: entry written, flushed, applied in place, flushed.
//! A block promoted or copied from a parent by the slow path has its data written and flushed before the BAT
//! entry naming it is logged. A block a write allocates while mapping (one that read as zeros) is linked in
//! memory at once and logged by the next flush (after the data is flushed) or close: it is a hole of the grown
//! file, so wherever its new data is not (yet) written it reads as zeros, as the block did before. A crash at
//! any point leaves either the old mapping (the new block leaked past the end of the file) or the new one, and
//! every write acknowledged before a completed flush is there.
//! A writable open replays a log left behind; a read-only open of such an image fails ([`blk_core::ErrorKind::ReadOnly`]),
//! as in QEMU, because replaying only in memory would show data other tools do not see until a writable open.
//!
//! # Locking
//!
//! Handles from `duplicate` share one `Arc`'d state. The BAT is held as one atomic per entry: the mapping loads
//! entries without a lock and writes nothing shared, so reads and in-place writes of present blocks run in
//! parallel, on the calling thread or on blk-core's queues. A `Mutex` (`meta`) serializes metadata changes
//! (every store of a BAT entry happens under it): headers, the log, allocation at the end of the file and the
//! set of blocks the slow path is allocating. A write
//! into a block that reads as zeros takes `meta` while mapping, reserves and links the block, and is then an
//! in-place write; later writes into that block find it present. The slow path (promotion of partially
//! present blocks, copies from the parent) reserves its block under `meta`, releases it while writing and
//! flushing the block's data, then retakes it to log the BAT entry; other slow writers to that block wait on a
//! condition variable, and the mapping answers slow for it meanwhile. Sector bitmaps of partially present
//! blocks are cached behind their own `RwLock`, filled on first read.
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
//! - Host ranges past the end of the file read as zeros (as QEMU's file driver reads them).
//! - A writable session grows the file ahead of its allocations (see `shared`) and a clean close cuts it back;
//!   a crash leaves the grown tail (a hole), which later opens keep and allocate past.
//! - Cached sector bitmaps: at most 32 MiB (`shared::BITMAP_CACHE_BYTES`); past it the cache starts over.

mod admin;
mod bat;
mod checksum;
mod create;
mod descriptor;
mod error;
mod guid;
mod header;
mod log_format;
mod log_replay;
mod log_writer;
mod mapper;
mod metadata;
pub mod options;
mod parent;
mod parent_locator;
mod region;
mod shared;
mod slow_write;
mod vhdx;

pub use descriptor::FORMAT;
pub use options::{Subformat, VhdxCreateOptions, VhdxOpenOptions, CREATE_OPTIONS};
pub use vhdx::Vhdx;

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "vhdx";
