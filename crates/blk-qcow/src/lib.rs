//! The QCOW2 disk-image format (versions 2 and 3): clusters, L1/L2 tables, refcounts, compression, backing
//! chains, extended L2 entries (subclusters) and external data files, read and written as QEMU 10 does.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions};
//! use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.qcow2");
//! let create = Qcow2CreateOptions::from_key_values(Some(16 << 20), &[])?;
//! Qcow2::create(&path, &create, &DenyNamedImages)?;
//!
//! let options = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
//! let disk = Qcow2::open(&path, &options)?;
//! disk.write_all_at(70_000, b"hello")?;
//! let mut back = [0u8; 5];
//! disk.read_exact_at(70_000, &mut back)?;
//! assert_eq!(&back, b"hello");
//! assert_eq!(disk.image_info()?.cluster_size, Some(65536));
//! # Ok(())
//! # }
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`qcow2`] | [`Qcow2`]: open, [`blk_core::DiskFile`] and [`blk_core::AsyncDiskFile`] |
//! | [`qcow2_async`] | [`Qcow2Async`], [`Qcow2Mapper`]: the native async path (which requests are fast, which slow) |
//! | `async_write` | the mapper's writes: in place, whole-cluster allocations, their link |
//! | [`options`] | [`Qcow2OpenOptions`], [`Qcow2CreateOptions`], [`CREATE_OPTIONS`] |
//! | `header` | the header: parsing, validation against QEMU's caps, rewriting |
//! | `header_update` | rewriting the header cluster (for `rebase` and `amend`) |
//! | `extensions` | header extensions (backing format, feature names, unknown ones kept byte for byte) |
//! | `features` | incompatible / compatible / autoclear feature bits |
//! | `tables` | L1 and L2 entries and their decoding |
//! | `subclusters` | extended L2 entries: the status of each subcluster from an entry and its bitmap |
//! | `subcluster_write` | writes, write-zeroes and discards at subcluster granularity |
//! | `data_file` | the external data file: opening it, guest data I/O to it, data cluster placement |
//! | `cache` | the L2-table and refcount-block caches (LRU, write-back) |
//! | `metadata` | `Metadata`: L1 table, caches, header state under one lock |
//! | `overlap` | the overlap check on writes: prevented writes over metadata mark the image corrupt |
//! | `refcount` | refcount reads and writes, new refcount blocks, refcount-table growth |
//! | `allocator` | cluster and byte (compressed) allocation |
//! | `compression` | deflate and zstd cluster compression |
//! | `backing` | the backing file |
//! | `amend` | [`Qcow2::amend`]: `qemu-img amend` (compat, lazy_refcounts) |
//! | `change_backing` | [`Qcow2::change_backing_file`]: the recorded backing file, as `qemu-img rebase` sets it |
//! | `io` | read, write, discard, compressed writes |
//! | `write_zeroes` | write-zeroes: zero flags in batches per L2 table, zero buffers for the rest |
//! | `write_run` | multi-cluster writes in one host write |
//! | `make_empty` | every cluster unmapped (`DiskFile::make_empty`, for `commit`) |
//! | `map` | `map` runs as `qemu-img map` shows them |
//! | `measure` | [`measure()`]: the size of a new image, as `qemu-img measure -O qcow2` computes it |
//! | `create` | [`Qcow2::create`] with qemu-img's layout |
//! | `snapshot_open` | opening an internal snapshot read-only (its L1 table in place of the active one) |
//! | `snapshot_ops` | what the snapshot operations share: the refcount walk with COPIED flags, the table rewrite |
//! | `snapshot_create` | [`Qcow2::create_snapshot`]: `qemu-img snapshot -c` |
//! | `snapshot_delete` | [`Qcow2::delete_snapshot`]: `qemu-img snapshot -d` |
//! | `snapshot_apply` | [`Qcow2::apply_snapshot`]: `qemu-img snapshot -a` |
//! | `snapshot_table` | the internal snapshot table (for `info` and `check`) |
//! | `bitmaps` | persistent dirty bitmaps: the bitmaps extension and directory, for `info` |
//! | `check` | `check` and repair |
//! | `resize` | [`resize()`]: grow or shrink an image as `qemu-img resize` does |
//!
//! # Locking
//!
//! Clones from `try_clone` share one `Arc` state and each own a [`blk_core::HostFile`] descriptor. The state has
//! one metadata lock (`Mutex<Metadata>`): the L1 table, both caches, the header fields that change, the
//! allocator and the table of clusters being allocated ("in flight"). Rules:
//!
//! 1. Guest data I/O never happens under the metadata lock: a request looks up (or allocates) under the lock,
//!    drops it, moves the data, and takes the lock again to link newly written clusters into their L2 table.
//! 2. A guest cluster being allocated is recorded in the in-flight table; another writer of the same cluster
//!    waits on the state's condition variable (which releases the lock) until it is linked. Readers see the old
//!    contents (backing file, zeros) until the link, which happens only after the data is written.
//! 3. Metadata I/O (L2 tables, refcount blocks, header) happens under the lock.
//! 4. The backing file is never called under the metadata lock (it has its own locks), so no lock order between
//!    layers exists. There is no other lock in the crate. The external data file is the exception to rule 1
//!    in one place: when clusters are freed or zeroed under the lock, their range is zeroed in the data file
//!    (so a raw data file keeps reading as the guest does); the data file is a leaf (it never calls back into
//!    this image), so this adds the order "metadata lock, then the data file's own locks" and no cycle.
//! 5. The offline operations (`create_snapshot`, `delete_snapshot`, `apply_snapshot`, `amend`,
//!    `change_backing_file`, `make_empty`) hold the metadata lock for their whole run and take no other lock;
//!    no guest I/O may run at the same time (the snapshot operations refuse while a write is in flight).
//! 6. The async path ([`Qcow2Mapper`], under a [`Qcow2Async`] queue) takes the same metadata lock and no other:
//!    once per request to map it (lookups, the overlap guard, allocation of fresh clusters, which enter the
//!    in-flight table under that hold) and once per allocated run to link it after its data write
//!    (`finish_allocation`, which removes the clusters from the in-flight table and notifies the condition
//!    variable, exactly as the sync path's link). It never waits on the condition variable: a cluster in
//!    flight makes the request slow, and the slow path (a worker thread running the sync methods) waits
//!    there instead. Data I/O of mapped pieces runs on the backend with no lock held (rule 1); the queue must
//!    call `finish_allocation` for every allocated piece, or the in-flight clusters block their writers.
//!
//! # Write ordering
//!
//! Data is written before the L2 entry pointing to it; refcount increments reach the disk before L2 tables
//! (the L2 cache flushes the refcount cache and syncs first); a new L2 table is written and synced before the
//! L1 entry pointing to it; for discards, write-zeroes that unmap and overwritten compressed clusters the L2
//! change is written and synced before the refcounts are decremented and the host range punched (discards
//! and write-zeroes batch this per L2 table: one flush, then the decrements and merged punch-holes). A crash
//! leaves at most leaked clusters. An L2 table shared with an internal snapshot is copied verbatim, as QEMU's
//! `l2_allocate` does: the clusters it references keep their refcounts (counted once per L1 table). With an external data file, `flush` flushes the data file before the metadata.
//!
//! # Extended L2 entries
//!
//! With incompatible bit 4 an L2 entry is 128 bits: the usual entry (its bit 0 unused) and a bitmap whose bits
//! 0-31 say "subcluster allocated" and 32-63 "subcluster reads as zeros" (both set, or allocated bits in an
//! unallocated cluster: `CorruptImage`); a table holds `cluster_size / 16` entries and clusters are at least
//! 16 KiB. Reads, `map` and writes work per subcluster as QEMU's: a write copies on write only the uncovered
//! parts of partially covered unallocated subclusters (a whole new cluster only when replacing a shared or
//! compressed one); write-zeroes sets zero bits of whole subclusters; discards act on whole clusters only, as
//! QEMU 10 ignores partial-cluster discards; compressed clusters have a zero bitmap. Preallocation leaves
//! every bitmap 0, as qemu-img does.
//!
//! # External data files
//!
//! With incompatible bit 2 guest data lives in a raw file named by header extension 0x44415441, opened through
//! the [`blk_core::ImageOpener`] (role `DataFile`, format `raw`, writable like the image, path relative to the
//! image's directory; QEMU opens it relative to its working directory). As QEMU does, a data cluster lies at
//! its guest offset in the data file (so with the `data_file_raw` autoclear bit, kept on writable opens, the
//! data file is a raw image of the guest), is not counted in the image file's refcounts, and an L2 entry with
//! offset 0 and the COPIED bit is guest cluster 0. Compressed clusters are refused (`CorruptImage` when
//! read, `UnsupportedFeature` when written). Creating makes the data file (the virtual size) next to the
//! image; `data_file_raw` forces metadata preallocation. `check` (and so the repair of a dirty lazy-refcounts
//! image on open) knows that data-file clusters are not refcounted.
//!
//! # Limits
//!
//! QEMU's caps, enforced at open: L1 table <= 32 MiB, refcount table <= 8 MiB, `cluster_bits` 9..=21,
//! `refcount_order` 0..=6, header length >= 104, a multiple of 8 and <= the cluster size (v3), backing file
//! name <= 1023 bytes inside cluster 0, backing format extension < 16 bytes, snapshots <= 65536, table offsets
//! cluster-aligned and below 2^56 with their start inside the file. Header extensions must lie inside the
//! header area. At most one cluster (<= 2 MiB) of the file is read to parse the header.
//!
//! While running: an L2 table or refcount block must be cluster-aligned, end inside the used part of the file
//! (the file length at open, less a crash's unused hole tail, grown by this process's allocations: see
//! `allocator`) and not overlap the header, the L1 table or
//! the refcount table; a data cluster must lie inside the used part of the file; otherwise the request fails
//! with `CorruptImage` and nothing is written. Every path that writes, copies on write, zeroes, discards or
//! frees through an L2 entry checks its cluster (compressed data: its byte span) that way before changing
//! anything, so freeing never creates refcount blocks past the file. A refcount block missing for clusters
//! inside the used part of the file (a lying refcount table) makes allocations there fail rather than hand out
//! clusters that may be in use.
//!
//! Growing ahead: when allocations pass the end of the host file, a writable open extends it (a hole, no data
//! written) by 4 MiB to 256 MiB at a time (an eighth of the used size, aligned to 1 MiB), so allocating writes
//! land below the end of file, where the kernel runs them concurrently (it serializes extending O_DIRECT
//! writes). Closing cuts the file back to the used end, as QEMU leaves it. A crash leaves the longer file, which
//! QEMU accepts; a writable open lowers the used end past such a tail when it is a hole with no refcounts
//! (at most 2^20 refcounts are read to find it) and the close cuts it off. Not for read-only opens, block
//! devices or `data_file_raw` images (with another external data file only the image file grows). Guest data and metadata are never written over the header, the L1 / refcount tables or a
//! cached table: as QEMU's overlap check, such a write is refused, the image is marked corrupt (v3) and every
//! later write of this open fails (reads go on).
//!
//! A dirty image opened writable is repaired first; as QEMU, a repair that fails or reports check errors
//! fails the open ("Could not repair dirty image"), while corruptions it leaves do not. Compressed writes
//! leave the file ending on a 512-byte boundary, as qemu-img does.
//!
//! Caches: the L2 cache holds at most `l2_cache_size` bytes of tables (default 32 MiB, QEMU's maximum
//! default; at least 2 tables), the refcount-block cache a quarter as many blocks (at least 4).
//!
//! Data-file host offsets are not checked against the image file (QEMU bounds them by nothing either; a read
//! past the data file's end gives zeros).
//!
//! Not implemented, refused with `UnsupportedFeature` at open or create: encryption (AES and LUKS), a data
//! file bit without its name extension (QEMU would need a `data-file` option). Internal snapshots are
//! listed, opened read-only (`Qcow2OpenOptions::snapshot`), created, deleted and applied (new names cut at
//! 255 bytes; a snapshot's L1 table at most 32 MiB, aligned and inside the image); persistent
//! bitmaps are not maintained, so their autoclear bit (like every autoclear bit) is cleared on a writable open,
//! as QEMU does for bits it does not know.
//!
//! `image_info` lists internal snapshots and persistent bitmaps as `qemu-img info` does, reading them when
//! called (not at open; QEMU fails the open where `image_info` fails). Snapshot table: at most 65536 entries,
//! at most 1024 bytes of extra data per entry, the table at most 64 MiB (checked after each entry); IDs and
//! names listed up to their first NUL, cut to 127 / 255 bytes. Bitmaps (v3 with autoclear bit 0 only):
//! extension exactly 24 bytes, reserved field 0, 1 to 65535 bitmaps, directory cluster-aligned, non-empty and
//! at most 1024 * 65535 bytes (read whole), names at most 1023 bytes, no extra data, QEMU's entry constraints
//! (see `bitmaps`). Violations are `CorruptImage` naming the field's offset.

//! # Internals for check/repair
//!
//! The `check` module walks and repairs the metadata through these `pub(crate)` items (kept stable):
//!
//! - `Qcow2::host_file`: the image's host file (metadata and data I/O).
//! - `Qcow2::geometry`: the fixed layout (`Geometry`: cluster
//!   bits/size, virtual size, L1 size and offset, refcount order, entries per refcount block, version).
//! - `Qcow2::lock_metadata`: takes the one metadata lock and returns the
//!   `Metadata` guard. Hold it for the whole check; do not call `DiskFile` methods of the
//!   image while holding it (they take it too).
//! - `Metadata::header()`: the current `Header` (refcount table offset/clusters, feature bits,
//!   snapshots count and offset, backing name offset/size...).
//! - `Metadata::l1_table()`: the L1 entries (raw, host order; use `tables::L1_OFFSET_MASK` and
//!   `tables::COPIED`).
//! - `Metadata::read_l2_table(&mut self, file, l2_offset) -> Result<Vec<u64>>`: an L2 table's raw entries
//!   (through the cache; with extended L2 entries the 64-bit entries without their bitmaps); decode with
//!   `tables::L2Entry::decode(raw, &geometry)`. `Geometry::extended_l2` / `data_file` / `data_file_raw` tell
//!   the image's features; `Metadata::l2_entry_and_bitmap` reads an entry with its subcluster bitmap.
//! - `Metadata::refcount_table()`: the refcount table entries (raw).
//! - `Metadata::refcount(&mut self, file, cluster_index) -> Result<u64>`,
//!   `Metadata::set_refcount(&mut self, file, cluster_index, value) -> Result<()>`: a cluster's refcount;
//!   setting adds refcount blocks and grows the refcount table as needed.
//! - `Metadata::flush(&mut self, file)`: writes back both caches (refcounts first) and syncs;
//!   `Metadata::invalidate_caches(&mut self)`: drops every cached table (call after `flush`, or after writing
//!   tables directly to the file); `Metadata::reset_allocator()`: forget the free-space hint after refcounts
//!   were rewritten.
//! - `Metadata::update_incompatible(&mut self, file, set, clear)`: sets and clears incompatible bits in the
//!   header on disk (bits in `features`: `INCOMPAT_DIRTY`, `INCOMPAT_CORRUPT`).

pub mod options;
pub mod qcow2;
pub mod qcow2_async;

mod allocator;
mod amend;
mod async_write;
mod backing;
mod bitmaps;
mod cache;
mod change_backing;
mod check;
mod compression;
mod create;
mod data_file;
mod extensions;
mod features;
mod header;
mod header_update;
mod io;
mod make_empty;
mod map;
mod measure;
mod metadata;
mod overlap;
mod refcount;
mod resize;
mod snapshot_apply;
mod snapshot_create;
mod snapshot_delete;
mod snapshot_open;
mod snapshot_ops;
mod snapshot_table;
mod subcluster_write;
mod subclusters;
mod tables;
mod write_run;
mod write_zeroes;

pub use measure::{
    measure, DataClusterCount, MeasuredBitmap, Qcow2Measure, Qcow2MeasureInput, Qcow2MeasureOptions,
};
pub use options::{
    CompressionType, Preallocation, Qcow2CreateOptions, Qcow2OpenOptions, CREATE_OPTIONS,
};
pub use qcow2::Qcow2;
pub use qcow2_async::{Qcow2Async, Qcow2Mapper};
pub use resize::{resize, Qcow2ResizeOptions};

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "qcow2";
