//! The lookup every path shares: a guest cluster's L2 entry (and subcluster bitmap), validated before
//! anything uses it, and the classifier that says what a write into one cluster needs. The mapper
//! (`mapper`), the slow path (`slow_write`), write-zeroes, discards and `block_status` all decide through
//! these: guest offsets are translated in this module and nowhere else.
//!
//! Validation (before anything is read, written or freed through an entry): a data or preallocated zero
//! cluster must be cluster-aligned and lie inside the used part of the image file (not checked in an external
//! data file, which QEMU does not bound); compressed clusters are refused with an external data file; a
//! corrupt subcluster bitmap is refused as QEMU refuses it. Paths that replace or free the entry also check,
//! with `Metadata::check_release`, that what it references may be freed.

use blk_core::Result;

use crate::image::Qcow2;
use crate::metadata::subclusters::Subcluster;
use crate::metadata::tables::L2Entry;
use crate::metadata::{corrupt, Metadata};

/// What a write into one guest cluster needs: the per-cluster classifier shared by the mapper and the slow
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WritePlan {
    /// Overwrite in place: the cluster's host offset (in the image file, or in the external data file).
    InPlace(u64),
    /// A whole fresh cluster of the image file: allocate it and link it after the data.
    Allocate,
    /// Anything else: copy-on-write, shared, compressed or preallocated zero clusters, clusters in flight,
    /// data-file allocations, subcluster bitmap changes.
    Slow,
}

/// A cluster's validated entry (and subcluster bitmap) and what a write into it needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterWrite {
    pub(crate) entry: L2Entry,
    pub(crate) bitmap: u64,
    pub(crate) plan: WritePlan,
}

impl Qcow2 {
    /// The cluster size in bytes.
    pub(crate) fn cluster_size(&self) -> u64 {
        self.shared.geometry.cluster_size
    }

    /// The decoded L2 entry of guest cluster `gc`, validated: an allocated cluster must be aligned and lie
    /// inside the used part of the file; compressed clusters are refused with an external data file.
    pub(crate) fn lookup(&self, meta: &mut Metadata, gc: u64) -> Result<L2Entry> {
        let raw = meta.l2_entry(&self.shared.file, gc)?;
        self.validated(meta, gc, raw)
    }

    /// `lookup_with_bitmap` from the L2 cache alone, under the metadata lock's shared side: `None` when the
    /// L2 table is not cached (the caller takes the lock exclusively and looks up again).
    pub(crate) fn cached_lookup_with_bitmap(
        &self,
        meta: &Metadata,
        gc: u64,
    ) -> Result<Option<(L2Entry, u64)>> {
        let Some((raw, bitmap)) = meta.cached_l2_entry_and_bitmap(gc) else {
            return Ok(None);
        };
        Ok(Some((self.validated(meta, gc, raw)?, bitmap)))
    }

    /// The raw L2 entry `raw` of guest cluster `gc`, decoded and validated.
    fn validated(&self, meta: &Metadata, gc: u64, raw: u64) -> Result<L2Entry> {
        let entry = L2Entry::decode(raw, &self.shared.geometry);
        if let L2Entry::Data { host, .. }
        | L2Entry::Zero {
            host: Some(host), ..
        } = entry
        {
            if host % self.cluster_size() != 0 {
                return Err(corrupt(
                    format!(
                        "L2 entry of guest cluster {gc} points to unaligned host offset {host:#x}"
                    ),
                    gc * self.cluster_size(),
                ));
            }
            meta.check_data_location(host)?;
        }
        if matches!(entry, L2Entry::Compressed { .. }) && self.shared.data_file.is_some() {
            return Err(corrupt(
                format!("compressed cluster entry for guest cluster {gc} in an image with an external data file"),
                gc * self.cluster_size(),
            ));
        }
        Ok(entry)
    }

    /// `lookup` for a request that may replace or free the entry: also checks that what it references may be
    /// freed (`Metadata::check_release`), before anything changes.
    pub(crate) fn lookup_for_update(&self, meta: &mut Metadata, gc: u64) -> Result<L2Entry> {
        let entry = self.lookup(meta, gc)?;
        meta.check_release(&self.shared.file, entry)?;
        Ok(entry)
    }

    /// The entry and subcluster bitmap of guest cluster `gc`, validated like `lookup` (the bitmap is 0
    /// without extended L2 entries).
    pub(crate) fn lookup_with_bitmap(
        &self,
        meta: &mut Metadata,
        gc: u64,
    ) -> Result<(L2Entry, u64)> {
        let entry = self.lookup(meta, gc)?;
        if !self.shared.geometry.extended_l2 {
            return Ok((entry, 0));
        }
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

    /// The status of the subcluster (the cluster, without extended L2 entries) holding guest offset `pos`.
    pub(crate) fn subcluster_at(&self, meta: &mut Metadata, pos: u64) -> Result<Subcluster> {
        let g = &self.shared.geometry;
        let gc = pos >> g.cluster_bits;
        let (entry, bitmap) = self.lookup_with_bitmap(meta, gc)?;
        let index = (pos % g.cluster_size) >> g.subcluster_bits;
        Subcluster::of(entry, bitmap, index, g, pos)
    }

    /// The classifier: what a write of `n` bytes at byte `in_off` of guest cluster `gc` needs (validated as
    /// `lookup` validates). A cluster in flight is slow.
    pub(crate) fn classify_write(
        &self,
        meta: &mut Metadata,
        gc: u64,
        in_off: u64,
        n: u64,
    ) -> Result<ClusterWrite> {
        let (entry, bitmap) = self.lookup_with_bitmap(meta, gc)?;
        self.classify_entry(meta, gc, in_off, n, entry, bitmap)
    }

    /// The classifier's answer for guest cluster `gc` whose validated entry and bitmap are `entry` and
    /// `bitmap` (looked up under either side of the metadata lock).
    pub(crate) fn classify_entry(
        &self,
        meta: &Metadata,
        gc: u64,
        in_off: u64,
        n: u64,
        entry: L2Entry,
        bitmap: u64,
    ) -> Result<ClusterWrite> {
        let g = &self.shared.geometry;
        let write = |plan| {
            Ok(ClusterWrite {
                entry,
                bitmap,
                plan,
            })
        };
        if meta.in_flight.contains(&gc) {
            return write(WritePlan::Slow);
        }
        if g.extended_l2 {
            let L2Entry::Data { host, copied: true } = entry else {
                return write(WritePlan::Slow);
            };
            // In place only where every covered subcluster already holds data (no bitmap change).
            let first = in_off >> g.subcluster_bits;
            let last = (in_off + n - 1) >> g.subcluster_bits;
            let guest = gc << g.cluster_bits;
            for index in first..=last {
                let at = guest + (index << g.subcluster_bits);
                if !matches!(
                    Subcluster::of(entry, bitmap, index, g, at)?,
                    Subcluster::Data { .. }
                ) {
                    return write(WritePlan::Slow);
                }
            }
            return write(WritePlan::InPlace(host));
        }
        write(match entry {
            L2Entry::Data { host, copied: true } => WritePlan::InPlace(host),
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
                if in_off == 0 && n == g.cluster_size && self.shared.data_file.is_none() =>
            {
                WritePlan::Allocate
            }
            _ => WritePlan::Slow,
        })
    }
}
