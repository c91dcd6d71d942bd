//! Extended L2 entries: each L2 entry is followed by a 64-bit subcluster bitmap (bits 0-31: subcluster
//! allocated, bits 32-63: subcluster reads as zeros), splitting the cluster into 32 subclusters. This module
//! turns an entry and its bitmap into the status of each subcluster, as QEMU's `qcow2_get_subcluster_type`.
//!
//! With incompatible bit 4 an L2 entry is 128 bits: the usual entry (its bit 0 unused, so there is no zero
//! flag) and the bitmap; a table holds `cluster_size / 16` entries and clusters are at least 16 KiB. A bitmap
//! with a subcluster both allocated and zero, or with allocated bits in an unallocated cluster, is
//! `CorruptImage`; compressed clusters have a zero bitmap. Reads, `map` and writes work per subcluster as
//! QEMU's (see `io`).

use blk_core::Result;

use crate::metadata::tables::L2Entry;
use crate::metadata::{corrupt, Geometry};

/// Subclusters per cluster with extended L2 entries.
pub(crate) const SUBCLUSTERS: u64 = 32;
/// The "allocated" half of the bitmap.
pub(crate) const ALL_ALLOCATED: u64 = 0xffff_ffff;

/// What one subcluster (or, without extended L2 entries, one cluster) reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subcluster {
    /// Data at `host` (the cluster's host offset) + the offset inside the cluster.
    Data {
        /// Host offset of the cluster.
        host: u64,
    },
    /// Reads as zeros; `host` when the cluster is allocated.
    Zero {
        /// Host offset of the cluster, if allocated.
        host: Option<u64>,
    },
    /// Not allocated in this image (backing file or zeros); `host` when the cluster is allocated (its other
    /// subclusters hold data).
    Unallocated {
        /// Host offset of the cluster, if allocated.
        host: Option<u64>,
    },
    /// Inside a compressed cluster.
    Compressed {
        /// Host byte offset of the compressed data.
        host: u64,
        /// Bytes to read.
        size: u64,
    },
}

impl Subcluster {
    /// The status of subcluster `index` of a cluster whose (validated) entry is `entry` and bitmap `bitmap`.
    /// Corrupt bitmaps (a subcluster both allocated and zero, or allocated bits in an unallocated cluster) are
    /// refused as QEMU does.
    pub(crate) fn of(
        entry: L2Entry,
        bitmap: u64,
        index: u64,
        g: &Geometry,
        guest: u64,
    ) -> Result<Subcluster> {
        if !g.extended_l2 {
            return Ok(match entry {
                L2Entry::Data { host, .. } => Subcluster::Data { host },
                L2Entry::Zero { host, .. } => Subcluster::Zero { host },
                L2Entry::Unallocated => Subcluster::Unallocated { host: None },
                L2Entry::Compressed { host, size } => Subcluster::Compressed { host, size },
            });
        }
        let zero = (bitmap >> 32) & (1 << index) != 0;
        let allocated = bitmap & (1 << index) != 0;
        match entry {
            L2Entry::Compressed { host, size } => Ok(Subcluster::Compressed { host, size }),
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => {
                if (bitmap >> 32) & bitmap & ALL_ALLOCATED != 0 {
                    return Err(invalid_bitmap(bitmap, guest));
                }
                Ok(if zero {
                    Subcluster::Zero { host: Some(host) }
                } else if allocated {
                    Subcluster::Data { host }
                } else {
                    Subcluster::Unallocated { host: Some(host) }
                })
            }
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. } => {
                if bitmap & ALL_ALLOCATED != 0 {
                    return Err(invalid_bitmap(bitmap, guest));
                }
                Ok(if zero {
                    Subcluster::Zero { host: None }
                } else {
                    Subcluster::Unallocated { host: None }
                })
            }
        }
    }
}

fn invalid_bitmap(bitmap: u64, guest: u64) -> blk_core::Error {
    corrupt(
        format!(
            "Invalid cluster entry found (L2 bitmap {bitmap:#018x}) at guest offset {guest:#x}"
        ),
        guest,
    )
}

/// Bitmap bits "allocated" for subclusters `first..end`.
pub(crate) fn alloc_range(first: u64, end: u64) -> u64 {
    if end <= first {
        return 0;
    }
    let width = end - first;
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (ones << first) & ALL_ALLOCATED
}

/// Bitmap bits "reads as zero" for subclusters `first..end`.
pub(crate) fn zero_range(first: u64, end: u64) -> u64 {
    alloc_range(first, end) << 32
}
