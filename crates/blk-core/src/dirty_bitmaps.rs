//! [`DirtyBitmaps`]: persistent dirty bitmaps of an open image, for a VMM's incremental backups.
//!
//! A dirty bitmap has one bit per granule of guest data; an enabled bitmap gets the bits of every guest write,
//! write-zeroes and discard set. A backup reads which ranges are dirty in a bitmap ([`DirtyBitmaps::dirty_extents`])
//! and copies them; to keep tracking while it copies, it first rotates: a new enabled bitmap is added and the
//! old one disabled in one step ([`DirtyBitmaps::rotate`], or any list of [`BitmapAction`]s through
//! [`DirtyBitmaps::apply`]), so that no write is counted in neither. After a failed backup, merging the old
//! bitmap into the new one ([`BitmapAction::Merge`]) gives the next backup everything again.
//!
//! The capability is reached from an open image's administration handle
//! ([`ImageAdmin::dirty_bitmaps`](crate::ImageAdmin::dirty_bitmaps)); formats without persistent bitmaps
//! answer `None`.
//!
//! ```
//! use blk_core::{BitmapAction, DirtyBitmaps, Result};
//!
//! /// One incremental backup: rotate `current` to `next`, copy what `current` saw, then drop it (or, if the
//! /// copy failed, merge it into `next` so the next backup copies it again).
//! fn incremental_backup(
//!     bitmaps: &dyn DirtyBitmaps,
//!     current: &str,
//!     next: &str,
//!     copy: &mut dyn FnMut(u64, u64) -> Result<()>,
//! ) -> Result<()> {
//!     bitmaps.rotate(current, next)?;
//!     let copied = bitmaps
//!         .dirty_extents(current)?
//!         .into_iter()
//!         .try_for_each(|(offset, len)| copy(offset, len));
//!     let cleanup = match copied {
//!         Ok(()) => vec![BitmapAction::Remove { name: current.into() }],
//!         Err(_) => vec![
//!             BitmapAction::Merge { source: current.into(), target: next.into() },
//!             BitmapAction::Remove { name: current.into() },
//!         ],
//!     };
//!     bitmaps.apply(&cleanup)?;
//!     copied
//! }
//! # let _ = incremental_backup;
//! ```

use std::fmt::Debug;

use crate::error::{Error, ErrorKind, Result};

/// One persistent dirty bitmap, as [`DirtyBitmaps::bitmaps`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmapInfo {
    /// The bitmap's name.
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    /// Whether guest writes set its bits (QEMU's `auto` flag).
    pub enabled: bool,
    /// Whether it was found in use when the image was opened (a writer did not close it): its bits cannot be
    /// trusted, it is kept as it is and refused by [`DirtyBitmaps::dirty_extents`].
    pub inconsistent: bool,
}

/// A change to the bitmaps of an image (qemu-img bitmap's actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapAction {
    /// Adds an empty bitmap; `granularity` None takes the format's default.
    Add {
        /// Its name (unique in the image).
        name: String,
        /// Bytes per bit: a power of two from 512 to 2 GiB.
        granularity: Option<u64>,
        /// Whether guest writes set its bits.
        enabled: bool,
    },
    /// Removes a bitmap.
    Remove {
        /// Its name.
        name: String,
    },
    /// Clears every bit of a bitmap.
    Clear {
        /// Its name.
        name: String,
    },
    /// Makes guest writes set a bitmap's bits.
    Enable {
        /// Its name.
        name: String,
    },
    /// Stops guest writes from setting a bitmap's bits.
    Disable {
        /// Its name.
        name: String,
    },
    /// Sets in `target` every granule dirty in `source` (of the same image).
    Merge {
        /// The bitmap read.
        source: String,
        /// The bitmap changed.
        target: String,
    },
    /// Sets in `name` the granules the guest ranges `(offset, len)` touch (a merge from another image).
    MarkDirty {
        /// The bitmap changed.
        name: String,
        /// Guest byte ranges.
        extents: Vec<(u64, u64)>,
    },
}

/// Persistent dirty bitmaps of an open image (see the [module docs](self)).
pub trait DirtyBitmaps: Send + Sync + Debug {
    /// The image's bitmaps, in directory order.
    fn bitmaps(&self) -> Result<Vec<DirtyBitmapInfo>>;

    /// The dirty guest ranges `(offset, len)` of bitmap `name`, in order and merged (whole granules, the last
    /// one clipped to the disk).
    fn dirty_extents(&self, name: &str) -> Result<Vec<(u64, u64)>>;

    /// Applies `actions` in order, all or none (each is checked against the state the previous ones leave;
    /// a refused action leaves the bitmaps unchanged), and stores the result before returning.
    fn apply(&self, actions: &[BitmapAction]) -> Result<()>;

    /// Adds `new` (enabled, with `old`'s granularity) and disables `old`, atomically with respect to guest
    /// writes: each write lands in exactly one of them. `NotFound` when there is no bitmap `old`.
    fn rotate(&self, old: &str, new: &str) -> Result<()> {
        let granularity = self
            .bitmaps()?
            .into_iter()
            .find(|b| b.name == old)
            .map(|b| b.granularity)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("Dirty bitmap '{old}' not found"),
                )
            })?;
        self.apply(&[
            BitmapAction::Add {
                name: new.to_string(),
                granularity: Some(granularity),
                enabled: true,
            },
            BitmapAction::Disable {
                name: old.to_string(),
            },
        ])
    }
}
