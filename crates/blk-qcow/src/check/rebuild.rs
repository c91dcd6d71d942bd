//! Rebuilding the refcount structure from the expected refcounts (QEMU's `rebuild_refcount_structure`):
//! new refcount blocks and a new refcount table in free clusters, then the header switched to them. The old
//! structures become leaks, which the caller frees.

use super::checker::{Checker, Stop};
use super::expected::ExpectedRefcounts;
use super::layout::{MAX_REFTABLE_BYTES, REFTABLE_FIELDS_OFFSET};
use super::stored::set_entry;

impl Checker<'_> {
    /// Writes a new refcount structure matching `expected` and points the header at it.
    pub(super) fn rebuild_refcount_structure(
        &mut self,
        expected: &mut ExpectedRefcounts,
    ) -> Result<(), Stop> {
        self.stored.forget_cache();
        let cs = self.layout.cluster_size;
        let mut first_free = 0u64;
        let mut reftable: Vec<u64> = Vec::new();
        let nb_clusters = expected.len();
        self.write_refblocks(expected, &mut reftable, &mut first_free, 0, nb_clusters)?;
        let (reftable_offset, reftable_clusters) = loop {
            let clusters = self.layout.size_to_clusters(reftable.len() as u64 * 8);
            let offset = self.alloc_clusters_imrt(expected, clusters, &mut first_free)?;
            let start = offset / cs;
            let grown = self.write_refblocks(
                expected,
                &mut reftable,
                &mut first_free,
                start,
                start + clusters,
            )?;
            if !grown {
                break (offset, clusters);
            }
            for cluster in start..start + clusters {
                // Inside the table: the allocation above grew it that far.
                // Setting 0 allocates nothing and the cluster is inside the table: it cannot fail.
                let _ = expected.set(cluster, 0);
            }
        };

        let bytes: Vec<u8> = reftable.iter().flat_map(|e| e.to_be_bytes()).collect();
        if let Some(what) = self.overlaps_metadata(reftable_offset, bytes.len() as u64, false) {
            self.say(format!("ERROR writing reftable: overlaps with {what}"));
            self.res.check_errors += 1;
            return Err(Stop);
        }
        if let Err(e) = self.file.write_all_at(reftable_offset, &bytes) {
            self.say(format!("ERROR writing reftable: {e}"));
            self.res.check_errors += 1;
            return Err(Stop);
        }
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&reftable_offset.to_be_bytes());
        fields[8..].copy_from_slice(&(reftable_clusters as u32).to_be_bytes());
        let switched = self
            .file
            .sync_data()
            .and_then(|()| self.file.write_all_at(REFTABLE_FIELDS_OFFSET, &fields))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = switched {
            self.say(format!("ERROR setting reftable: {e}"));
            self.res.check_errors += 1;
            return Err(Stop);
        }
        self.file_len = self.file_len.max(reftable_offset + bytes.len() as u64);
        self.layout.refcount_table_offset = reftable_offset;
        self.layout.refcount_table_entries = reftable.len() as u64;
        self.stored.table = reftable;
        self.stored.forget_cache();
        self.changes.refcount_table = true;
        self.changes.tables = true;
        Ok(())
    }

    /// Finds `count` contiguous clusters free in `expected` at or after `*first_free`, marks them used and
    /// returns the offset of the first (QEMU's `alloc_clusters_imrt`).
    fn alloc_clusters_imrt(
        &mut self,
        expected: &mut ExpectedRefcounts,
        count: u64,
        first_free: &mut u64,
    ) -> Result<u64, Stop> {
        let mut cluster = *first_free;
        let mut contiguous = 0u64;
        let mut first_gap = true;
        while cluster < expected.len() && contiguous < count {
            if expected.get(cluster) == 0 {
                contiguous += 1;
                if first_gap {
                    *first_free = cluster;
                    first_gap = false;
                }
            } else {
                contiguous = 0;
            }
            cluster += 1;
        }
        if contiguous < count && expected.grow_to(cluster + count - contiguous).is_err() {
            self.say("ERROR allocating refblock: Cannot allocate memory".to_string());
            self.res.check_errors += 1;
            return Err(Stop);
        }
        let start = cluster - contiguous;
        for c in start..start + count {
            if expected.set(c, 1).is_err() {
                self.say("ERROR allocating refblock: Cannot allocate memory".to_string());
                self.res.check_errors += 1;
                return Err(Stop);
            }
        }
        Ok(start * self.layout.cluster_size)
    }

    /// Allocates and writes the refcount blocks covering the used clusters in `first..end`; returns whether
    /// the new refcount table had to grow.
    fn write_refblocks(
        &mut self,
        expected: &mut ExpectedRefcounts,
        reftable: &mut Vec<u64>,
        first_free: &mut u64,
        first: u64,
        end: u64,
    ) -> Result<bool, Stop> {
        let cs = self.layout.cluster_size;
        let block_bits = self.layout.refcount_block_bits();
        let per_block = 1u64 << block_bits;
        let mut grown = false;
        let mut end = end;
        let mut cluster = first;
        while cluster < end {
            match expected.next_used(cluster) {
                Some(used) if used < end => cluster = used,
                _ => break,
            }
            let index = cluster >> block_bits;
            let block_start = index << block_bits;
            let slot = usize::try_from(index).unwrap_or(usize::MAX);
            let existing = reftable.get(slot).copied().unwrap_or(0);
            let block_offset = if existing != 0 {
                existing
            } else {
                *first_free = (*first_free).max(block_start);
                let offset = self.alloc_clusters_imrt(expected, 1, first_free)?;
                end = end.max(offset / cs + 1);
                if reftable.len() <= slot {
                    let new_len = ((index + 1) * 8).next_multiple_of(cs) / 8;
                    if new_len * 8 > MAX_REFTABLE_BYTES {
                        self.say("ERROR the rebuilt refcount table would exceed 8 MiB".to_string());
                        self.res.check_errors += 1;
                        return Err(Stop);
                    }
                    reftable.resize(usize::try_from(new_len).unwrap_or(0), 0);
                    grown = true;
                }
                if let Some(entry) = reftable.get_mut(slot) {
                    *entry = offset;
                }
                offset
            };
            if let Some(what) = self.overlaps_metadata(block_offset, cs, false) {
                self.say(format!("ERROR writing refblock: overlaps with {what}"));
                self.res.check_errors += 1;
                return Err(Stop);
            }
            let mut block = vec![0u8; usize::try_from(cs).unwrap_or(0)];
            for i in 0..per_block {
                let count = expected.get(block_start + i);
                if count != 0 {
                    set_entry(&mut block, self.layout.refcount_order, i, count);
                }
            }
            if let Err(e) = self.file.write_all_at(block_offset, &block) {
                self.say(format!("ERROR writing refblock: {e}"));
                self.res.check_errors += 1;
                return Err(Stop);
            }
            self.file_len = self.file_len.max(block_offset + cs);
            cluster = block_start + per_block;
        }
        Ok(grown)
    }
}
