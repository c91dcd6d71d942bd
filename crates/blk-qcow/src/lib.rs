//! The QCOW2 disk-image format (versions 2 and 3), read and written as QEMU 10 does: clusters, L1/L2 tables,
//! refcounts, compression (deflate and zstd), backing chains, extended L2 entries (subclusters), external data
//! files and internal snapshots.
//!
//! [`Qcow2::open`] gives an open image. It is a [`blk_core::Mapper`], the one answer to "where does this guest
//! range live", which blk-core's engines serve for guest I/O: [`blk_core::MappedDisk`] on the calling thread,
//! [`blk_core::MappedQueue`] on an asynchronous backend. It is also the image's [`blk_core::ImageAdmin`]
//! (`info`, `check`, compressed writes, snapshots, `amend`, `rebase`). [`FORMAT`] registers the format with
//! the factory: detection, open, create, measure and resize.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions, ImageAdmin, MappedDisk};
//! use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.qcow2");
//! let create = Qcow2CreateOptions::from_key_values(Some(16 << 20), &[])?;
//! Qcow2::create(&path, &create, &DenyNamedImages)?;
//!
//! let options = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
//! let disk = MappedDisk::new(Qcow2::open(&path, &options)?);
//! disk.write_all_at(70_000, b"hello")?;
//! let mut back = [0u8; 5];
//! disk.read_exact_at(70_000, &mut back)?;
//! assert_eq!(&back, b"hello");
//! // The disk dereferences to the image: its administration is at hand.
//! assert_eq!(disk.image_info()?.cluster_size, Some(65536));
//! // Asynchronous queues map through the same image.
//! use blk_core::AsyncDiskFile;
//! let _queue = disk.create_async_io(32)?;
//! # Ok(())
//! # }
//! ```
//!
//! # What is supported
//!
//! - Every image qemu-img 10 makes, read and written; files named inside an image (the backing file, an
//!   external data file) are opened through the caller's [`blk_core::ImageOpener`].
//! - LUKS encryption (`encrypt.format=luks`): unlocked with [`Qcow2OpenOptions::key_secret`], guest data
//!   decrypted and encrypted with the IV of its host sector, as QEMU; created with the `encrypt.*` options.
//! - Refused with `UnsupportedFeature`: AES-CBC encryption, a data-file bit without its name extension,
//!   compressed writes with an external data file.
//! - Persistent dirty bitmaps are kept by every writable open as QEMU keeps them (loaded, marked in use, set
//!   by guest writes, stored on flush and close) and changed through [`blk_core::DirtyBitmaps`].
//! - Internal snapshots are listed, opened read-only ([`Qcow2OpenOptions::snapshot`]), created, deleted and
//!   applied.
//!
//! # Limits
//!
//! - QEMU's caps, checked at open: an L1 table of at most 32 MiB, a refcount table of at most 8 MiB, clusters
//!   of 512 B to 2 MiB, at most 65536 snapshots (the snapshot table at most 64 MiB).
//! - Untrusted images: every table, refcount block and cluster an entry names is checked before it is used; a
//!   bad one fails the request with `CorruptImage` and nothing is written. A write that would land on
//!   metadata is refused and marks the image corrupt (QEMU's overlap check); a dirty image opened writable is
//!   repaired first.
//! - Memory: the L2 cache holds at most [`Qcow2OpenOptions::l2_cache_size`] bytes of tables (default 32 MiB),
//!   the refcount-block cache a quarter as many blocks.
//! - A writable open grows the image file ahead of allocation (4 MiB to 256 MiB at a time) and cuts it back
//!   to its used end on close.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | `image` | [`Qcow2`]: opening, the header, options, the backing and data files, `ImageAdmin` |
//! | `metadata` | the metadata behind the one lock: tables, subclusters, refcounts, caches, allocator, overlap guard; the locking rules |
//! | `io` | `impl Mapper for Qcow2`, the one translation; slow writes, write-zeroes, discards, compression; write ordering |
//! | `snapshots` | internal snapshots: opened read-only, created, deleted, applied |
//! | `bitmaps` | persistent dirty bitmaps: the directory, tables, tracking writes, `DirtyBitmaps` |
//! | `encryption` | LUKS: the header, key slots, PBKDF2, the sector cipher |
//! | `check` | `check` and repair |
//! | `offline` | creating, measuring, resizing, amending, the recorded backing file, emptying for `commit` |
//! | `descriptor` | [`FORMAT`] |

mod bitmaps;
mod check;
mod descriptor;
mod encryption;
mod image;
mod io;
mod metadata;
mod offline;
mod snapshots;

pub use descriptor::FORMAT;
pub use encryption::create_options::LuksCreateOptions;
pub use encryption::try_unlock_luks_area;
pub use image::options::{
    CompressionType, Preallocation, Qcow2CreateOptions, Qcow2OpenOptions, CREATE_OPTIONS,
    DEFAULT_L2_CACHE_SIZE, RUNTIME_OPTIONS,
};
pub use image::Qcow2;
pub use io::mapper::{BACKING_DISK, DATA_FILE_DISK};
pub use metadata::overlap::{OverlapCheck, OverlapStructure};
pub use offline::measure::{
    measure, DataClusterCount, MeasuredBitmap, Qcow2Measure, Qcow2MeasureInput, Qcow2MeasureOptions,
};
pub use offline::resize::{resize, Qcow2ResizeOptions};

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "qcow2";
