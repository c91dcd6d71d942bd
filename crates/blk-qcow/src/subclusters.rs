//! Extended L2 entries: each L2 entry is followed by a 64-bit subcluster bitmap (bits 0-31: subcluster
//! allocated, bits 32-63: subcluster reads as zeros), splitting the cluster into 32 subclusters. This module
//! turns an entry and its bitmap into the status of each subcluster, as QEMU's `qcow2_get_subcluster_type`.

use blk_core::Result;

use crate::metadata::{corrupt, Geometry, Metadata};
use crate::qcow2::Qcow2;
use crate::tables::L2Entry;

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

    /// The entry the read path handles the subcluster as.
    pub(crate) fn as_read_entry(self) -> L2Entry {
        match self {
            Subcluster::Data { host } => L2Entry::Data {
                host,
                copied: false,
            },
            Subcluster::Zero { host } => L2Entry::Zero {
                host,
                copied: false,
            },
            Subcluster::Unallocated { .. } => L2Entry::Unallocated,
            Subcluster::Compressed { host, size } => L2Entry::Compressed { host, size },
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

impl Qcow2 {
    /// The entry and subcluster bitmap of guest cluster `gc`, validated like `lookup`.
    pub(crate) fn lookup_with_bitmap(
        &self,
        meta: &mut Metadata,
        gc: u64,
    ) -> Result<(L2Entry, u64)> {
        let entry = self.lookup(meta, gc)?;
        let (_, bitmap) = meta.l2_entry_and_bitmap(&self.shared.file, gc)?;
        Ok((entry, bitmap))
    }

    /// `lookup_with_bitmap` for a request that may replace or free the entry (see `lookup_for_update`).
    pub(crate) fn lookup_with_bitmap_for_update(
        &self,
        meta: &mut Metadata,
        gc: u64,
    ) -> Result<(L2Entry, u64)> {
        let (entry, bitmap) = self.lookup_with_bitmap(meta, gc)?;
        meta.check_release(&self.shared.file, entry)?;
        Ok((entry, bitmap))
    }

    /// The status of the subcluster holding guest offset `pos`.
    pub(crate) fn subcluster_at(&self, meta: &mut Metadata, pos: u64) -> Result<Subcluster> {
        let g = &self.shared.geometry;
        let gc = pos >> g.cluster_bits;
        let (entry, bitmap) = self.lookup_with_bitmap(meta, gc)?;
        let index = (pos % g.cluster_size) >> g.subcluster_bits;
        Subcluster::of(entry, bitmap, index, g, pos)
    }

    /// Appends the read segments `(guest offset, length, entry)` of `n` bytes at `pos` (inside one cluster),
    /// split where the subcluster status changes.
    pub(crate) fn push_read_segments(
        &self,
        meta: &mut Metadata,
        pos: u64,
        n: u64,
        segments: &mut Vec<(u64, u64, L2Entry)>,
    ) -> Result<()> {
        let g = &self.shared.geometry;
        if !g.extended_l2 {
            let entry = self.lookup(meta, pos >> g.cluster_bits)?;
            segments.push((pos, n, entry));
            return Ok(());
        }
        let gc = pos >> g.cluster_bits;
        let (entry, bitmap) = self.lookup_with_bitmap(meta, gc)?;
        let sc = g.subcluster_size();
        let end = pos + n;
        let mut at = pos;
        while at < end {
            let index = (at % g.cluster_size) >> g.subcluster_bits;
            let status = Subcluster::of(entry, bitmap, index, g, at)?.as_read_entry();
            let m = (sc - at % sc).min(end - at);
            match segments.last_mut() {
                Some((p, len, last))
                    if *last == status && *p + *len == at && *p >> g.cluster_bits == gc =>
                {
                    *len += m
                }
                _ => segments.push((at, m, status)),
            }
            at += m;
        }
        Ok(())
    }
}
