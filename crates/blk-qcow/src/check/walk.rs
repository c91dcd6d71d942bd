//! Counting the references: header, L1 and L2 tables, snapshots, the refcount table and its blocks (QEMU's
//! `calculate_refcounts`, `check_refcounts_l1`, `check_refcounts_l2` and `check_refblocks`).

use super::checker::{Checker, Fix, Stop};
use super::expected::ExpectedRefcounts;
use super::layout::{
    decode_be64, read_padded, ClusterType, L1_OFFSET_MASK, L1_RESERVED_MASK, L2_BITMAP_ALL_ALLOC,
    L2_OFFSET_MASK, L2_STD_RESERVED_MASK, MAX_L1_BYTES, OFLAG_COPIED, OFLAG_ZERO,
};

/// How far past its length at the start of the check a repair extends the file to keep refcount blocks that
/// lie there (QEMU extends it to any of them).
pub(super) const MAX_REPAIR_GROWTH: u64 = 64 << 20;

impl Checker<'_> {
    /// Builds the expected refcount of every cluster.
    pub(super) fn calculate_refcounts(
        &mut self,
        fix: Fix,
        rebuild: &mut bool,
        expected: &mut ExpectedRefcounts,
    ) -> Result<(), Stop> {
        let cs = self.layout.cluster_size;
        // The header.
        self.inc(expected, 0, cs)?;
        // The LUKS header of an encrypted image.
        if let Some((offset, length)) = self.layout.crypto_header {
            self.inc(expected, offset, length)?;
        }
        // The active L1 table.
        let (l1_offset, l1_size) = (self.layout.l1_table_offset, self.layout.l1_size);
        self.check_l1(expected, l1_offset, l1_size, true, fix)?;
        // Snapshots: their L1 tables, then the snapshot table itself.
        if self.layout.data_file && !self.snapshots.entries.is_empty() {
            self.say(format!(
                "ERROR {} snapshots in image with data file",
                self.snapshots.entries.len()
            ));
            self.res.corruptions += 1;
        }
        let entries = self.snapshots.entries.clone();
        for snapshot in &entries {
            if self.layout.offset_into_cluster(snapshot.l1_table_offset) != 0 {
                self.say(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table \
                     entry corrupted",
                    snapshot.id, snapshot.name, snapshot.l1_table_offset
                ));
                self.res.corruptions += 1;
                continue;
            }
            if snapshot.l1_size * 8 > MAX_L1_BYTES {
                self.say(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    snapshot.id, snapshot.name, snapshot.l1_size
                ));
                self.res.corruptions += 1;
                continue;
            }
            self.check_l1(
                expected,
                snapshot.l1_table_offset,
                snapshot.l1_size,
                false,
                Fix::NONE,
            )?;
        }
        let (snap_offset, snap_size) = (self.layout.snapshots_offset, self.snapshots.size);
        self.inc(expected, snap_offset, snap_size)?;
        // The refcount table and its blocks.
        let (rt_offset, rt_entries) = (
            self.layout.refcount_table_offset,
            self.layout.refcount_table_entries,
        );
        self.inc(expected, rt_offset, rt_entries * 8)?;
        self.check_bitmaps(expected)?;
        self.check_refblocks(fix, rebuild, expected)
    }

    /// Counts an L1 table, its L2 tables and the clusters they reference.
    fn check_l1(
        &mut self,
        expected: &mut ExpectedRefcounts,
        l1_offset: u64,
        l1_size: u64,
        active: bool,
        fix: Fix,
    ) -> Result<(), Stop> {
        let bytes = l1_size * 8;
        self.inc(expected, l1_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        let table = if active {
            self.l1.clone()
        } else {
            match read_padded(
                self.file,
                self.file_len,
                l1_offset,
                usize::try_from(bytes).unwrap_or(0),
            ) {
                Ok(raw) => decode_be64(&raw),
                Err(_) => {
                    self.say("ERROR: I/O error in check_refcounts_l1".to_string());
                    self.res.check_errors += 1;
                    return Err(Stop);
                }
            }
        };
        for entry in table {
            if entry == 0 {
                continue;
            }
            if entry & L1_RESERVED_MASK != 0 {
                self.say(format!(
                    "ERROR found L1 entry with reserved bits set: {entry:x}"
                ));
                self.res.corruptions += 1;
            }
            let l2_offset = entry & L1_OFFSET_MASK;
            self.inc(expected, l2_offset, self.layout.cluster_size)?;
            if self.layout.offset_into_cluster(l2_offset) != 0 {
                self.say(format!(
                    "ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                self.res.corruptions += 1;
            }
            self.check_l2(expected, l2_offset, active, fix)?;
        }
        Ok(())
    }

    /// Counts the clusters one L2 table references, checking its entries.
    fn check_l2(
        &mut self,
        expected: &mut ExpectedRefcounts,
        l2_offset: u64,
        active: bool,
        fix: Fix,
    ) -> Result<(), Stop> {
        let cs = self.layout.cluster_size;
        let Ok(raw) = read_padded(
            self.file,
            self.file_len,
            l2_offset,
            usize::try_from(cs).unwrap_or(0),
        ) else {
            self.say("ERROR: I/O error in check_refcounts_l2".to_string());
            self.res.check_errors += 1;
            return Err(Stop);
        };
        let table = decode_be64(&raw);
        let frag_info = active;
        let mut next_contiguous = 0u64;
        let stride = self.layout.l2_stride();
        let extended = self.layout.extended_l2;
        for (index, words) in table.chunks_exact(stride).enumerate() {
            let mut entry = words.first().copied().unwrap_or(0);
            let bitmap = if extended {
                words.get(1).copied().unwrap_or(0)
            } else {
                0
            };
            let kind = self.layout.cluster_type(entry);
            if kind != ClusterType::Compressed && entry & L2_STD_RESERVED_MASK != 0 {
                self.say(format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
                self.res.corruptions += 1;
            }
            match kind {
                ClusterType::Compressed => {
                    if entry & OFLAG_COPIED != 0 {
                        let (coffset, _) = self.layout.compressed_range(entry);
                        self.say(format!(
                            "ERROR: coffset=0x{coffset:x}: copied flag must never be set for compressed clusters"
                        ));
                        entry &= !OFLAG_COPIED;
                        self.res.corruptions += 1;
                    }
                    if self.layout.data_file {
                        self.say(format!(
                            "ERROR compressed cluster {index} with data file, entry=0x{entry:x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.say(format!(
                            "ERROR compressed cluster {index} with non-zero subcluster allocation bitmap, \
                             entry=0x{entry:x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    let (coffset, csize) = self.layout.compressed_range(entry);
                    self.inc(expected, coffset, csize)?;
                    if frag_info {
                        self.res.allocated_clusters += 1;
                        self.res.compressed_clusters += 1;
                        self.res.fragmented_clusters += 1;
                    }
                }
                ClusterType::ZeroAlloc | ClusterType::Normal => {
                    let offset = entry & L2_OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.res.corruptions += 1;
                        self.say(format!(
                            "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                    }
                    if self.layout.offset_into_cluster(offset) != 0 {
                        self.res.corruptions += 1;
                        let contains_data = if extended {
                            bitmap & L2_BITMAP_ALL_ALLOC != 0
                        } else {
                            entry & OFLAG_ZERO == 0
                        };
                        if !contains_data {
                            let verb = if fix.errors { "Repairing" } else { "ERROR" };
                            self.say(format!(
                                "{verb} offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry \
                                 corrupted."
                            ));
                            let plain = if extended { 0 } else { OFLAG_ZERO };
                            if fix.errors
                                && self.rewrite_l2_entry(l2_offset, index as u64, plain)?
                            {
                                self.res.corruptions -= 1;
                                self.res.corruptions_fixed += 1;
                                continue;
                            }
                        } else {
                            self.say(format!(
                                "ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted."
                            ));
                        }
                    }
                    if frag_info {
                        self.res.allocated_clusters += 1;
                        if next_contiguous != 0 && offset != next_contiguous {
                            self.res.fragmented_clusters += 1;
                        }
                        next_contiguous = offset + cs;
                    }
                    // Data-file clusters are not refcounted in the image file (their offsets are in the
                    // data file).
                    if !self.layout.data_file {
                        self.inc(expected, offset, cs)?;
                    }
                }
                ClusterType::Unallocated if bitmap & L2_BITMAP_ALL_ALLOC != 0 => {
                    self.res.corruptions += 1;
                    self.say(
                        "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                            .to_string(),
                    );
                }
                ClusterType::ZeroPlain | ClusterType::Unallocated => {}
            }
        }
        Ok(())
    }

    /// Overwrites one L2 entry on disk (a repair); false when the write failed (counted as a check error).
    fn rewrite_l2_entry(&mut self, l2_offset: u64, index: u64, value: u64) -> Result<bool, Stop> {
        let at = l2_offset + index * 8 * self.layout.l2_stride() as u64;
        if self.overlaps_metadata(at, 8, true).is_some() || at.saturating_add(8) > self.file_len {
            self.say("ERROR: Overlap check failed".to_string());
            self.res.check_errors += 1;
            return Err(Stop);
        }
        let written = self
            .file
            .write_all_at(at, &value.to_be_bytes())
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.changes.tables = true;
                Ok(true)
            }
            Err(e) => {
                self.say(format!("ERROR: Failed to overwrite L2 table entry: {e}"));
                self.res.check_errors += 1;
                Ok(false)
            }
        }
    }

    /// Checks the refcount table's entries and counts the refcount blocks.
    fn check_refblocks(
        &mut self,
        fix: Fix,
        rebuild: &mut bool,
        expected: &mut ExpectedRefcounts,
    ) -> Result<(), Stop> {
        let cs = self.layout.cluster_size;
        let table = self.stored.table.clone();
        for (index, &offset) in table.iter().enumerate() {
            let cluster = offset / cs;
            if self.layout.offset_into_cluster(offset) != 0 {
                self.say(format!(
                    "ERROR refcount block {index} is not cluster aligned; refcount table entry corrupted"
                ));
                self.res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= expected.len() {
                let verb = if fix.errors { "Repairing" } else { "ERROR" };
                self.say(format!("{verb} refcount block {index} is outside image"));
                if !fix.errors {
                    self.res.corruptions += 1;
                    continue;
                }
                // QEMU extends the file to cover the block; blk only while the file stays within
                // MAX_REPAIR_GROWTH of its starting length (else the refcount structure is rebuilt).
                let new_len = offset.saturating_add(cs);
                let grown = new_len - self.start_len <= MAX_REPAIR_GROWTH
                    && expected
                        .grow_to(self.layout.size_to_clusters(new_len))
                        .is_ok()
                    && self.file.set_len(new_len).is_ok();
                if !grown {
                    self.res.corruptions += 1;
                    *rebuild = true;
                    self.say("ERROR could not resize image: File too large".to_string());
                    continue;
                }
                self.file_len = new_len;
                self.changes.file_length = true;
                self.res.corruptions_fixed += 1;
                self.inc(expected, offset, cs)?;
                continue;
            }
            if offset != 0 {
                self.inc(expected, offset, cs)?;
                let count = expected.get(cluster);
                if count != 1 {
                    self.say(format!("ERROR refcount block {index} refcount={count}"));
                    self.res.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }
}
