//! The VHD (qemu's `vpc`) disk-image format: fixed, dynamic and differencing images, read and write.
//!
//! Written from Microsoft's "Virtual Hard Disk Image Format Specification" (sections cited in each module)
//! and matched against QEMU's `block/vpc.c` behaviour (qemu-img 10). [`Vhd`] answers where a guest range lives
//! (a [`blk_core::Mapper`]); blk-core's engines do the data I/O: [`blk_core::MappedDisk`] synchronously, its
//! queues asynchronously. The factory finds the format through [`FORMAT`].
//!
//! ```
//! use blk_core::{DenyNamedImages, DiskFile, ImageAdmin, MappedDisk};
//! use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.vhd");
//! let create = VhdCreateOptions::from_key_values(Some(10 << 20), &[])?;
//! Vhd::create(&path, &create, &DenyNamedImages)?;
//! let disk = MappedDisk::new(Vhd::open(&path, &VhdOpenOptions::default())?);
//! assert_eq!(disk.logical_size(), 10_514_432); // rounded up to a CHS geometry, as qemu-img does
//! disk.write_all_at(2 << 20, b"hello")?;
//! let mut back = [0u8; 5];
//! disk.read_exact_at(2 << 20, &mut back)?;
//! assert_eq!(&back, b"hello");
//! assert_eq!(disk.image_info()?.cluster_size, Some(2 << 20));
//! # Ok(())
//! # }
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`footer`] | the hard disk footer, checksums, disk types |
//! | [`dynamic_header`] | the dynamic disk header and parent locator entries |
//! | [`geometry`] | CHS geometry and the virtual size, as QEMU derives them |
//! | [`bat`] | the block allocation table, file layout validation, metadata regions, block-bounded pieces |
//! | [`parent`] | differencing parents: locators, opening through the opener, identity check |
//! | [`options`] | [`VhdOpenOptions`], [`VhdCreateOptions`], [`CREATE_OPTIONS`] |
//! | [`vhd`] | [`Vhd`]: opening and shared state |
//! | `sector_bitmap` | sector bitmaps and the one classification of a block (unallocated, full, partial) |
//! | `mapper` | the single translation: `impl Mapper for Vhd` (reads, in-place writes, write-zeroes) |
//! | [`allocation`] | where the next block goes; blocks of dynamic disks reserved by writes in flight, linked after their data |
//! | `slow_write` | what the mapper answers slow: differencing allocations, bitmap bits, partial-sector merges |
//! | `block_status` | `map`: runs of equal status |
//! | `image_admin`, `check` | `ImageAdmin for Vhd`: `image_info`, `check`, `has_zero_init` |
//! | `create` | [`Vhd::create`] |
//! | [`descriptor`] | [`FORMAT`]: probe, open, create and options for the factory |
//!
//! # Behaviour
//!
//! - **Detection and size**: a valid footer of a dynamic/differencing disk at offset 0 (its copy is used, as
//!   QEMU does; a damaged copy falls back to the end footer), else a fixed disk's footer at the end. Checksums
//!   of footer and dynamic header must match. The size comes from the CHS geometry, or from *Current Size*
//!   for creators `win `, `qem2`, `d2v `, `CTXS`, `tap\0` and for the maximum geometry (QEMU's rule).
//! - **Reads** honour the per-block sector bitmaps: a clear bit reads as zeros (dynamic) or from the parent
//!   (differencing). QEMU ignores the bitmaps; QEMU-made blocks have every bit set, so both read the same.
//! - **Writes** allocate blocks at the end of the blocks (dynamic disks: the file grown ahead with the footer
//!   at its end, one sync for many blocks, cut back on close; then the data, and the bitmap and the BAT
//!   entry by the next flush or close; see [`allocation`]), set bitmap bits, and merge partial sectors with what lies below. Writes into
//!   unallocated blocks of dynamic disks, and into full blocks, run on the backend like raw writes; partial
//!   blocks and differencing allocations on the worker pool.
//! - **write_zeroes**: dynamic disks zero allocated blocks in place and leave unallocated ones; differencing
//!   disks write zeros. **discard** is a no-op, as in QEMU.
//! - **Host ranges past the end of the file** (only possible when the file shrinks under an open image: every
//!   BAT entry is checked at open) read as zeros, as QEMU's file driver reads them.
//! - **Differencing**: see [`parent`]. The parent is opened only through the opener, read-only, format `vpc`;
//!   its footer's unique id must equal the child's *Parent Unique ID*; a parent that is the child itself (by
//!   path or unique id) is refused as a loop, and the opener caps chain depth.
//! - **check**: see the `check` module's keys: end footer missing/damaged/differing from the copy, damaged copy,
//!   parent locators outside the file. Checksums, BAT entries past the end of the file, into the footer, into
//!   metadata or overlapping each other fail the open.
//!
//! # Differences from QEMU
//!
//! - Sector bitmaps are honoured on read (QEMU ignores them; its own blocks have every bit set).
//! - New blocks are placed so that their data starts on a 4 KiB boundary of the file
//!   ([`allocation::DATA_ALIGNMENT`]; up to 3.5 KiB of zeros before a 2 MiB block's bitmap); QEMU packs blocks
//!   end to end, which leaves every O_DIRECT data write of its blocks but the first 512 bytes off the file
//!   system's blocks. Both read and extend each other's images (blocks are where the BAT says, the end footer
//!   right after the last block once closed); `check` counts the padding as no fragmentation.
//! - A damaged footer copy at 0 falls back to the end footer (QEMU fails the open); the dynamic header's
//!   checksum and major version are verified (QEMU checks neither); BAT entries into the end footer, into
//!   metadata or overlapping each other are refused like those past the end of the file (QEMU only checks the
//!   end of the file).
//! - write_zeroes does not allocate blocks of dynamic disks (QEMU writes zero buffers, allocating them).
//! - Differencing disks are supported (QEMU opens them as dynamic disks without their parent).
//! - For fixed disks `map` reports host holes as zero runs; qemu-img prints them `"zero": true, "data": true`,
//!   which [`blk_core::Extent`] cannot express.
//!
//! # Limits
//!
//! - virtual size at most 2040 GiB (QEMU's);
//! - block size a power of two of at least 512 bytes (QEMU's); the sector bitmap is
//!   ROUND_UP(block_size / 512 / 8, 512) bytes (the spec's; QEMU computes 0 below 4 KiB blocks);
//! - BAT at most [`bat::MAX_BAT_BYTES`] (256 MiB) in memory, and max table entries at most what 2040 GiB needs
//!   and within the file;
//! - a parent locator's data at most [`parent::MAX_LOCATOR_BYTES`] (64 KiB).
//!
//! # Locking
//!
//! Handles share one `Arc`'d state. The BAT is a table of atomics: a lookup is one load, an entry is stored
//! (after the block's bitmap state, so a reader that sees it sees the block's state) only under the allocator
//! mutex, which serializes block allocation: reserving a block (metadata writes, and a sync when the file grows ahead, in the mapping),
//! linking or giving it back (`finish_allocation`), writing the bitmaps and BAT entries of blocks linked
//! since the last flush (`Mapper::flush`, close), and the slow path's differencing allocations (held while
//! the new block's first data is written: its data must land before the BAT entry publishes it). Sector-bitmap
//! read-modify-writes take `bitmap_lock`; unaligned writes that merge partial sectors take `merge_lock` first.
//! Order: `merge_lock` → allocator; `bitmap_lock` is taken alone.
//!
//! A mapping reads the block's BAT entry and its cached full/partial state (two atomic loads, no lock, no
//! shared write); the first time it meets an allocated block it reads the block's sector bitmap (metadata I/O
//! on the mapping thread, no lock held) and caches whether it is full. It maps in place what needs no metadata
//! change (reads, writes into full blocks), as a fresh allocation writes into unallocated blocks of dynamic
//! disks; everything else runs in `write_slow`. No lock is held during data I/O.

pub mod allocation;
pub mod bat;
mod block_status;
mod check;
mod create;
pub mod descriptor;
pub mod dynamic_header;
pub mod footer;
pub mod geometry;
mod image_admin;
mod mapper;
pub mod options;
pub mod parent;
mod sector_bitmap;
mod slow_write;
pub mod vhd;

pub use create::DEFAULT_BLOCK_SIZE;
pub use descriptor::FORMAT;
pub use footer::DiskType;
pub use options::{Subformat, VhdCreateOptions, VhdOpenOptions, CREATE_OPTIONS};
pub use vhd::Vhd;

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "vpc";
