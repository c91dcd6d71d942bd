//! The raw disk-image format: the guest disk is the host file (or block device) byte for byte.
//!
//! ```
//! use blk_core::{DiskFile, HostOpenOptions, ImageAdmin, MappedDisk};
//! use blk_raw::{Preallocation, Raw, RawCreateOptions};
//!
//! # fn main() -> blk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.img");
//! let options = RawCreateOptions { size: 1 << 20, preallocation: Preallocation::Off };
//! let disk = MappedDisk::new(Raw::create(&path, &options)?);
//! disk.write_all_at(4096, b"hello")?;
//! let mut back = [0u8; 5];
//! disk.read_exact_at(4096, &mut back)?;
//! assert_eq!(&back, b"hello");
//! drop(disk); // releases the exclusive lock
//!
//! let disk = MappedDisk::new(Raw::open(&path, HostOpenOptions { read_only: true, ..HostOpenOptions::default() })?);
//! assert_eq!(disk.logical_size(), 1 << 20);
//! assert_eq!(disk.image_info()?.format, "raw");
//! # Ok(())
//! # }
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`raw`] | [`Raw`]: opening, its one translation ([`blk_core::Mapper`], the identity) and `info` ([`blk_core::ImageAdmin`]) |
//! | `map` | [`Mapper::block_status`](blk_core::Mapper::block_status) from `SEEK_DATA`/`SEEK_HOLE`, as `qemu-img map` shows it |
//! | `format` | [`FORMAT`]: raw's registration with the factory (probe, open, create, measure, resize) |
//! | `create` | [`Raw::create`] with qemu's preallocation modes |
//! | `resize` | [`resize()`]: a new size, as `qemu-img resize -f raw` sets it |
//! | `preallocation` | growing a file with qemu's preallocation modes |
//! | [`options`] | [`RawCreateOptions`], [`Preallocation`] and qemu-img `-o` parsing |
//!
//! Every error is a [`blk_core::Error`] naming the format `raw`, the file, the offset and the operation.

mod create;
mod format;
mod map;
pub mod options;
mod preallocation;
pub mod raw;
mod resize;

pub use format::FORMAT;
pub use options::{Preallocation, RawCreateOptions, CREATE_OPTIONS};
pub use raw::Raw;
pub use resize::{resize, RawResizeOptions};

/// The format name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "raw";
