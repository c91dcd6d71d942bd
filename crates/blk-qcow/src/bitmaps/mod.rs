//! Persistent dirty bitmaps (the bitmaps extension, type 0x23852875, valid while autoclear bit 0 is set):
//! listed by `info`, counted by `check`, and kept by a writable open as QEMU keeps them (loaded, marked in
//! use, set by every guest write, write-zeroes and discard, stored on flush and close).
//!
//! | module | what it holds |
//! |---|---|
//! | `directory` | the extension and the bitmap directory: validated as QEMU does, serialized |
//! | `dirty_bits` | one bitmap's bits in memory, their serialized bytes and dirty extents |
//! | `table` | a bitmap's table and data clusters: loaded, stored, freed |
//! | `persistent` | the bitmaps a writable open keeps: open, write tracking, store |
//! | `info` | the bitmaps as `qemu-img info` lists them |
//! | `actions` | `impl DirtyBitmaps for Qcow2`: listing, dirty extents, qemu-img bitmap's actions |

pub(crate) mod actions;
pub(crate) mod directory;
pub(crate) mod dirty_bits;
pub(crate) mod info;
pub(crate) mod persistent;
pub(crate) mod table;

pub(crate) use directory::{
    BitmapDirectory, AUTOCLEAR_BITMAPS, EXT_BITMAPS, MAX_BITMAPS, MAX_DIRECTORY_BYTES,
    MAX_TABLE_ENTRIES,
};
pub(crate) use info::info_value;
pub(crate) use persistent::PersistentBitmaps;
