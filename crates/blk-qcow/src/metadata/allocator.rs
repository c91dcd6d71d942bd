//! Cluster allocation (first fit from a free-space hint, reusing freed clusters), byte allocation for
//! compressed clusters (packed like QEMU's, each host cluster counting one reference per compressed cluster),
//! and the host file's length: grown ahead of allocation, cut back to the used end on close.
//!
//! # Growing ahead
//!
//! Writes that extend a file are serialized by the kernel (ext4 makes extending `O_DIRECT` writes
//! synchronous; io_uring hands them to one worker per inode), writes into a hole below the end of file are
//! not. So when an allocation takes the used end (`Metadata::file_end`) past the host file's length, the file
//! is extended with `ftruncate` (a hole: nothing is written) to
//! `round_up(needed + clamp(needed / 8, 4 MiB, 256 MiB), 1 MiB)`: at least two queue depths of 64 KiB writes
//! at depth 32 ahead, a step proportional to the image (a logarithmic number of steps, at most 12.5% over
//! while open), and never more than 256 MiB past the need (QEMU's `preallocate` filter, which does the same
//! job, grows by 128 MiB). Should the file system refuse that length (`EFBIG` near its size limit), the file
//! is grown to exactly the need; an error then is the allocation's error, before any refcount changed.
//!
//! `file_end` stays the used end: every check of a host offset from the metadata (`check_data_location`,
//! `check_table_location`, ...) still bounds it by what was allocated, never by the grown tail. Closing a
//! writable image (after the final flush) cuts the file back to the used end: `file_end`, or the 512-byte
//! rounded end of the last compressed cluster when that is the last cluster, as qemu-img leaves it. Only the
//! image file grows: the clusters of an external data file are not allocated here; with `data_file_raw`,
//! block devices, read-only opens and the metadata-only opens of `create`'s preallocation nothing grows and
//! nothing is cut.
//!
//! A crash leaves the file longer than its used end, as QEMU accepts (`qemu-img check` is clean) and allocates
//! from the refcounts, not the file end. A writable open therefore forgets such a tail
//! (`forget_unused_tail`): when the file past the last cluster with a non-zero refcount (the header, L1 table
//! and refcount table are always kept) is a hole, the used end (and `open_end`, below which a missing
//! refcount block means a lying refcount table) is taken there, so allocations may add refcount blocks for it
//! and closing cuts it off (the bytes up to the next 64 KiB boundary, which may share a file system block
//! with the used end, must read as zeros). Data in that tail (or a file system without `SEEK_DATA`) keeps
//! the whole file as before. The scan of refcounts looks at no more than `TAIL_SCAN_CLUSTERS` (2^20) clusters described by a
//! refcount block, and stops at the first error (the file is then kept whole).

use blk_core::{HostFile, Result};

use crate::image::header::MAX_HOST_OFFSET;
use crate::metadata::refcount::REFTABLE_OFFSET_MASK;
use crate::metadata::{corrupt, Metadata};

/// Least growth ahead of need (bytes).
pub(crate) const GROW_MIN: u64 = 4 << 20;
/// Most growth ahead of need (bytes).
pub(crate) const GROW_MAX: u64 = 256 << 20;
/// A crash's tail is a hole from the next multiple of this (the largest file system block size) past the
/// used end on; the bytes before it must read as zeros.
const TAIL_PROBE: u64 = 64 << 10;
/// The grown length is a multiple of this.
const GROW_ALIGN: u64 = 1 << 20;
/// Most clusters (inside refcount blocks) whose refcount an open looks at to find a crash's unused tail.
pub(crate) const TAIL_SCAN_CLUSTERS: u64 = 1 << 20;

/// The length the host file grows to when the used end reaches `needed` bytes.
pub(crate) fn grow_target(needed: u64) -> u64 {
    let ahead = (needed / 8).clamp(GROW_MIN, GROW_MAX);
    needed
        .saturating_add(ahead)
        .div_ceil(GROW_ALIGN)
        .saturating_mul(GROW_ALIGN)
}

impl Metadata {
    /// Whether cluster `c` is being handed out.
    pub(crate) fn is_reserved(&self, c: u64) -> bool {
        self.reserved.iter().any(|&(s, e)| c >= s && c < e)
    }

    /// The first run of `n` free clusters (refcount 0, not reserved, not cluster 0) from the hint. Moves the
    /// hint to the first free cluster seen (everything before it is in use).
    pub(crate) fn find_free_run(&mut self, file: &HostFile, n: u64) -> Result<u64> {
        let limit = MAX_HOST_OFFSET >> self.g.cluster_bits;
        let mut start = self.free_hint.max(1);
        let mut first_free = None;
        let mut c = start;
        while c - start < n {
            if c >= limit {
                return Err(corrupt(
                    "the image would grow past 2^56 bytes",
                    c << self.g.cluster_bits,
                ));
            }
            if self.is_reserved(c) || self.refcount(file, c)? != 0 {
                c += 1;
                start = c;
            } else {
                first_free.get_or_insert(c);
                c += 1;
            }
        }
        self.free_hint = first_free.unwrap_or(start);
        Ok(start)
    }

    /// Allocates `n` contiguous clusters (refcount 1 each, in the cache) and returns the host offset of the
    /// first. The caller runs the overlap check before writing them.
    pub(crate) fn allocate_clusters(&mut self, file: &HostFile, n: u64) -> Result<u64> {
        let start = self.find_free_run(file, n)?;
        self.grow_host_file(file, (start + n) << self.g.cluster_bits)?;
        self.reserved.push((start, start + n));
        let result = (|| -> Result<()> {
            for c in start..start + n {
                self.set_refcount(file, c, 1)?;
            }
            Ok(())
        })();
        self.reserved.retain(|&r| r != (start, start + n));
        result?;
        if self.free_hint == start {
            self.free_hint = start + n;
        }
        let offset = start << self.g.cluster_bits;
        self.file_end = self.file_end.max((start + n) << self.g.cluster_bits);
        // No overlap check here: as QEMU's, it runs before the write into the clusters (see `overlap`), after
        // the refcounts reached the disk where QEMU flushes them first.
        Ok(offset)
    }

    /// Allocates `len` bytes (at most one cluster) for compressed data, packed after the previous compressed
    /// cluster when it fits in the same host cluster. Every host cluster touched gains one reference.
    pub(crate) fn allocate_bytes(&mut self, file: &HostFile, len: u64) -> Result<u64> {
        let cs = self.g.cluster_size;
        let tail = self.compressed_tail;
        if tail != 0 && tail % cs != 0 && tail % cs + len <= cs {
            // Still ours: the tail's cluster is referenced by an earlier compressed cluster.
            let cluster = tail >> self.g.cluster_bits;
            // A full refcount (1-bit refcounts: any second reference) starts a new host cluster, as QEMU's
            // qcow2_alloc_bytes does.
            let refcount = self.refcount(file, cluster)?;
            if refcount > 0 && refcount < self.max_refcount() {
                self.change_refcount(file, cluster, 1)?;
                self.compressed_tail = tail + len;
                return Ok(tail);
            }
        }
        let offset = self.allocate_clusters(file, len.div_ceil(cs))?;
        self.compressed_tail = offset + len;
        Ok(offset)
    }

    /// Checks that the clusters an L2 entry references may be freed or replaced: inside the used part of the
    /// file (`CorruptImage` otherwise) and not over the header, the L1 / refcount tables or a cached table
    /// (which, as a prevented write over metadata, also marks the image corrupt). Called before anything is
    /// changed for the entry, so a hostile entry changes nothing.
    pub(crate) fn check_release(
        &mut self,
        file: &HostFile,
        entry: crate::metadata::tables::L2Entry,
    ) -> Result<()> {
        use crate::metadata::tables::L2Entry;
        // A write replacing the entry may copy what it references (or the backing file's data) into a new
        // cluster: L2 tables then wait for a sync (see `Metadata::refcounts_before_l2`).
        if !matches!(
            entry,
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
        ) || self.header.backing_file_offset != 0
        {
            self.cow_unsynced = true;
        }
        match entry {
            // Clusters of an external data file are not refcounted.
            L2Entry::Data { .. } | L2Entry::Zero { .. } if self.g.data_file => Ok(()),
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => {
                self.check_data_location(host)?;
                self.guard_data_write(file, host, self.g.cluster_size)
            }
            L2Entry::Compressed { host, size } => {
                self.check_compressed_location(host, size)?;
                self.guard_data_write(file, host, size)
            }
            _ => Ok(()),
        }
    }

    /// Frees (decrements) the clusters an L2 entry referenced, after `check_release` (so no refcount block is
    /// ever created past the end of the file and no metadata is punched).
    pub(crate) fn release(
        &mut self,
        file: &HostFile,
        entry: crate::metadata::tables::L2Entry,
    ) -> Result<()> {
        use crate::metadata::tables::L2Entry;
        self.check_release(file, entry)?;
        match entry {
            L2Entry::Data { .. } | L2Entry::Zero { .. } if self.g.data_file => Ok(()),
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => self.change_refcount(file, host >> self.g.cluster_bits, -1),
            L2Entry::Compressed { host, size } => self.change_refcount_range(file, host, size, -1),
            _ => Ok(()),
        }
    }

    /// Makes the host file at least `needed` bytes long, growing it ahead of need (see the module docs).
    pub(crate) fn grow_host_file(&mut self, file: &HostFile, needed: u64) -> Result<()> {
        if !self.grow_ahead || needed <= self.host_len {
            return Ok(());
        }
        // The hint may be stale (a write past it extended the file, a resize cut it): ask, and never shrink.
        let len = file.len()?;
        if len >= needed {
            self.host_len = len;
            return Ok(());
        }
        let target = grow_target(needed);
        let grown = match file.set_len(target) {
            Ok(()) => target,
            Err(_) => {
                file.set_len(needed)?;
                needed
            }
        };
        self.host_len = grown;
        Ok(())
    }

    /// Where the file ends when nothing is grown ahead: `file_end`, or the end of the last compressed cluster
    /// rounded to 512 bytes when that is the last cluster (as qemu-img leaves it).
    pub(crate) fn used_length(&self) -> u64 {
        let cs = self.g.cluster_size;
        let tail = self.compressed_tail;
        if tail % cs != 0 && tail.div_ceil(cs) * cs == self.file_end {
            tail.div_ceil(512) * 512
        } else {
            self.file_end
        }
    }

    /// Cuts the host file back to its used end (`used_length`) when it grew past it. For closing, after the
    /// final flush; nothing when this open does not grow the file.
    pub(crate) fn cut_to_used_end(&mut self, file: &HostFile) -> Result<()> {
        if !self.grow_ahead {
            return Ok(());
        }
        let end = self.used_length();
        let len = file.len()?;
        if len > end {
            file.set_len(end)?;
            file.sync_data()?;
        }
        self.host_len = len.min(end);
        Ok(())
    }

    /// On a writable open: forgets an unused tail a crash left (see the module docs) by lowering `file_end`
    /// and `open_end` to the end of the last cluster with a non-zero refcount (or of the header, L1 and
    /// refcount tables), when the file past it is a hole. Keeps the file whole on any doubt or error.
    pub(crate) fn forget_unused_tail(&mut self, file: &HostFile) {
        if !self.grow_ahead {
            return;
        }
        let Some(end) = self.refcounted_end(file) else {
            return;
        };
        let cs = self.g.cluster_size;
        let tables_end = [
            cs,
            self.g
                .l1_table_offset
                .saturating_add(self.g.l1_size * 8)
                .div_ceil(cs)
                .saturating_mul(cs),
            self.header
                .refcount_table_offset
                .saturating_add(u64::from(self.header.refcount_table_clusters).saturating_mul(cs)),
        ];
        let end = tables_end.into_iter().fold(end, u64::max);
        if end >= self.file_end {
            return;
        }
        // Data past the refcounted end may be in use by a lying refcount table: only a hole is forgotten
        // (zeros up to the end of the file system block holding `end`, then nothing but holes).
        let probe = end.div_ceil(TAIL_PROBE) * TAIL_PROBE;
        let head_len = probe.min(self.file_end) - end;
        match crate::metadata::read_zero_filled(file, end, head_len as usize) {
            Ok(head) if head.iter().all(|&b| b == 0) => {}
            _ => return,
        }
        if probe < self.file_end && !matches!(file.next_data(probe), Ok(None)) {
            return;
        }
        self.file_end = end;
        self.open_end = self.open_end.min(end);
    }

    /// The end (bytes) of the last cluster inside the used end with a non-zero refcount; ranges without a
    /// refcount block are skipped whole. `None` when more than `TAIL_SCAN_CLUSTERS` refcounts would be read,
    /// or on an error.
    fn refcounted_end(&mut self, file: &HostFile) -> Option<u64> {
        let rb_entries = self.g.rb_entries;
        let mut end = self.file_end >> self.g.cluster_bits;
        let mut budget = TAIL_SCAN_CLUSTERS;
        while end > 0 {
            let c = end - 1;
            let block = self
                .refcount_table
                .get((c / rb_entries) as usize)
                .copied()
                .unwrap_or(0);
            if block & REFTABLE_OFFSET_MASK == 0 {
                end = c / rb_entries * rb_entries;
                continue;
            }
            budget = budget.checked_sub(1)?;
            if self.refcount(file, c).ok()? != 0 {
                break;
            }
            end = c;
        }
        Some(end << self.g.cluster_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_proportional_bounded_and_aligned() {
        const MIB: u64 = 1 << 20;
        // Small images: at least GROW_MIN ahead.
        assert_eq!(grow_target(64 << 10), 5 * MIB);
        assert_eq!(grow_target(8 * MIB), 12 * MIB);
        // Then an eighth of the need, rounded up to 1 MiB.
        assert_eq!(grow_target(100 * MIB), 113 * MIB);
        assert_eq!(grow_target(1 << 30), (1 << 30) + 128 * MIB);
        // At most GROW_MAX ahead.
        assert_eq!(grow_target(16 << 30), (16 << 30) + GROW_MAX);
        for needed in [1, 4095, MIB + 1, 3 << 30, (1 << 56) - 1] {
            let t = grow_target(needed);
            assert!(
                t % GROW_ALIGN == 0
                    && t >= needed + GROW_MIN
                    && t <= needed + GROW_MAX + GROW_ALIGN
            );
        }
        // No overflow near the top.
        assert!(grow_target(u64::MAX - 1) > 0);
    }
}
