//! Refcounts: reading and writing one cluster's count in its refcount block (1 to 64 bits wide), adding
//! refcount blocks, and growing the refcount table (placing the new table and the blocks describing it in one
//! area after the used part of the file, so the file never doubles).

use blk_core::{HostFile, Result};

use crate::image::header::{MAX_HOST_OFFSET, MAX_REFTABLE_BYTES, REFTABLE_OFFSET_FIELD};
use crate::metadata::overlap::{OverlapCheck, IGNORE_NONE, REFCOUNT_BLOCK, REFCOUNT_TABLE};
use crate::metadata::tables::{entry, set_entry};
use crate::metadata::{corrupt, read_zero_filled, Metadata};

/// Host offset bits of a refcount table entry.
pub(crate) const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// Reads entry `index` of a refcount block of width `2^order` bits.
pub(crate) fn block_get(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if order >= 3 {
        let bytes = (bits / 8) as usize;
        let at = index as usize * bytes;
        let Some(b) = block.get(at..at + bytes) else {
            return 0;
        };
        b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    } else {
        let bit = index * bits;
        let Some(&byte) = block.get((bit / 8) as usize) else {
            return 0;
        };
        (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
    }
}

/// Writes entry `index` of a refcount block of width `2^order` bits (`value` must fit).
pub(crate) fn block_set(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    if order >= 3 {
        let bytes = (bits / 8) as usize;
        let at = index as usize * bytes;
        if let Some(b) = block.get_mut(at..at + bytes) {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (value >> (8 * (bytes - 1 - i))) as u8;
            }
        }
    } else {
        let bit = index * bits;
        if let Some(byte) = block.get_mut((bit / 8) as usize) {
            let mask = (((1u16 << bits) - 1) as u8) << (bit % 8);
            *byte = (*byte & !mask) | (((value as u8) << (bit % 8)) & mask);
        }
    }
}

impl Metadata {
    /// The largest refcount the image can store.
    pub(crate) fn max_refcount(&self) -> u64 {
        if self.g.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.g.refcount_order)) - 1
        }
    }

    /// The refcount block offset for block index `bi` (0: none).
    fn block_offset(&self, bi: u64) -> u64 {
        self.refcount_table.get(bi as usize).copied().unwrap_or(0) & REFTABLE_OFFSET_MASK
    }

    fn rb_slot(&mut self, file: &HostFile, offset: u64) -> Result<usize> {
        if let Some(slot) = self.rb_cache.lookup_mut(offset) {
            return Ok(slot);
        }
        self.check_table_location(offset, "refcount block")?;
        let data = read_zero_filled(file, offset, self.g.cluster_size as usize)?;
        let replace = if self.rb_cache.is_full() {
            let victim = self.rb_cache.victim();
            if let Some(v) = victim {
                if let Some(at) = self.rb_cache.slot(v).filter(|s| s.dirty).map(|s| s.offset) {
                    self.guard_write(file, REFCOUNT_BLOCK, at, self.g.cluster_size)?;
                }
                if let Some(s) = self.rb_cache.slot(v).filter(|s| s.dirty) {
                    file.write_all_at(s.offset, &s.data)?;
                }
                self.rb_cache.mark_clean(v);
            }
            victim
        } else {
            None
        };
        Ok(self
            .rb_cache
            .insert(offset, data.into_boxed_slice(), false, replace))
    }

    /// The refcount of cluster `cluster` (0 where no refcount block describes it).
    pub(crate) fn refcount(&mut self, file: &HostFile, cluster: u64) -> Result<u64> {
        let bi = cluster / self.g.rb_entries;
        let offset = self.block_offset(bi);
        if offset == 0 {
            return Ok(0);
        }
        let slot = self.rb_slot(file, offset)?;
        Ok(block_get(
            self.rb_cache.data(slot),
            cluster % self.g.rb_entries,
            self.g.refcount_order,
        ))
    }

    /// Sets the refcount of cluster `cluster`, adding a refcount block or growing the table as needed. On a
    /// lazy-refcounts open the first change sets the dirty bit on disk first (see `metadata`).
    pub(crate) fn set_refcount(&mut self, file: &HostFile, cluster: u64, value: u64) -> Result<()> {
        if value > self.max_refcount() {
            return Err(corrupt(
                format!("refcount of cluster {cluster} would overflow"),
                cluster << self.g.cluster_bits,
            ));
        }
        self.mark_dirty_for_lazy_refcounts(file)?;
        let bi = cluster / self.g.rb_entries;
        let mut offset = self.block_offset(bi);
        if offset == 0 {
            if value == 0 {
                return Ok(());
            }
            offset = self.new_refcount_block(file, bi)?;
        }
        let slot = self.rb_slot(file, offset)?;
        let order = self.g.refcount_order;
        block_set(
            self.rb_cache.data_mut(slot),
            cluster % self.g.rb_entries,
            order,
            value,
        );
        if value == 0 {
            if let Some(freed) = self.freed.as_mut() {
                freed.push(cluster);
            }
            if cluster < self.free_hint {
                self.free_hint = cluster;
            }
            if self.compressed_tail >> self.g.cluster_bits == cluster {
                // The cluster compressed data was being packed into is free (and may be reused for anything).
                self.compressed_tail = 0;
            }
        }
        Ok(())
    }

    /// Starts collecting the clusters freed from now on, for `discard_freed`.
    pub(crate) fn collect_freed(&mut self) {
        self.freed = Some(Vec::new());
    }

    /// Stops collecting freed clusters and discards (punches out of the image file) those still free, as
    /// QEMU's `qcow2_process_discards` does for the clusters its snapshot operations free: after the metadata
    /// that no longer references them was flushed. Runs of adjacent clusters are punched at once; a failed
    /// punch is ignored (the cluster only keeps its old bytes, as QEMU ignores a failed discard).
    pub(crate) fn discard_freed(&mut self, file: &HostFile) -> Result<()> {
        let Some(mut freed) = self.freed.take() else {
            return Ok(());
        };
        if self.g.data_file {
            return Ok(());
        }
        freed.sort_unstable();
        freed.dedup();
        let cs = self.g.cluster_size;
        let mut run: Option<(u64, u64)> = None;
        for c in freed {
            // Reused since it was freed (a new table placed there): keep it.
            if self.is_reserved(c) || self.refcount(file, c)? != 0 {
                continue;
            }
            run = match run {
                Some((start, end)) if end == c => Some((start, c + 1)),
                Some((start, end)) => {
                    let _ = file.punch_hole(start * cs, (end - start) * cs);
                    Some((c, c + 1))
                }
                None => Some((c, c + 1)),
            };
        }
        if let Some((start, end)) = run {
            let _ = file.punch_hole(start * cs, (end - start) * cs);
        }
        Ok(())
    }

    /// Adds `delta` to a cluster's refcount.
    pub(crate) fn change_refcount(
        &mut self,
        file: &HostFile,
        cluster: u64,
        delta: i64,
    ) -> Result<()> {
        let old = self.refcount(file, cluster)?;
        let new = old.checked_add_signed(delta).ok_or_else(|| {
            corrupt(
                format!("refcount of cluster {cluster} would drop below zero"),
                cluster << self.g.cluster_bits,
            )
        })?;
        self.set_refcount(file, cluster, new)
    }

    /// Adds `delta` to the refcount of every cluster touched by `len` bytes at host byte `offset`.
    pub(crate) fn change_refcount_range(
        &mut self,
        file: &HostFile,
        offset: u64,
        len: u64,
        delta: i64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.g.cluster_bits;
        let last = (offset + len - 1) >> self.g.cluster_bits;
        for c in first..=last {
            self.change_refcount(file, c, delta)?;
        }
        Ok(())
    }

    /// Creates refcount block `bi`, placed inside the range it describes when possible so it describes itself.
    /// Written to disk before the refcount table entry that points to it.
    fn new_refcount_block(&mut self, file: &HostFile, bi: u64) -> Result<u64> {
        if bi as usize >= self.refcount_table.len() {
            self.grow_refcount_table(file, bi + 1)?;
            let offset = self.block_offset(bi);
            if offset != 0 {
                return Ok(offset);
            }
        }
        let cs = self.g.cluster_size;
        let first = bi * self.g.rb_entries;
        if first.saturating_mul(cs) < self.open_end {
            // Clusters inside the file without a refcount block: their refcounts are unknown, and handing
            // them out could overwrite data.
            return Err(corrupt(
                format!("no refcount block describes cluster {first} inside the file"),
                self.header.refcount_table_offset + bi * 8,
            ));
        }
        let mut own = None;
        for c in first.max(1)..first + self.g.rb_entries {
            if !self.is_reserved(c)
                && self
                    .metadata_overlap(file, OverlapCheck::Cached.kinds(), IGNORE_NONE, c * cs, cs)
                    .is_none()
            {
                own = Some(c);
                break;
            }
        }
        let mut data = vec![0u8; cs as usize];
        let offset = match own {
            Some(c) => {
                block_set(&mut data, c - first, self.g.refcount_order, 1);
                c * cs
            }
            None => {
                // Every cluster of the range is being handed out: place the block elsewhere.
                self.allocate_clusters(file, 1)?
            }
        };
        if offset >= MAX_HOST_OFFSET {
            return Err(corrupt("the image would grow past 2^56 bytes", offset));
        }
        self.guard_write(file, IGNORE_NONE, offset, cs)?;
        self.file_end = self.file_end.max(offset + cs);
        file.write_all_at(offset, &data)?;
        let table_at = self.header.refcount_table_offset + bi * 8;
        self.guard_write(file, REFCOUNT_TABLE, table_at, 8)?;
        file.write_all_at(table_at, &offset.to_be_bytes())?;
        if let Some(e) = self.refcount_table.get_mut(bi as usize) {
            *e = offset;
        }
        self.refcount_table_changed();
        let replace = if self.rb_cache.is_full() {
            self.flush_one_rb(file)?
        } else {
            None
        };
        self.rb_cache
            .insert(offset, data.into_boxed_slice(), false, replace);
        Ok(offset)
    }

    /// Writes back and frees the refcount block slot the clock chooses.
    fn flush_one_rb(&mut self, file: &HostFile) -> Result<Option<usize>> {
        let victim = self.rb_cache.victim();
        if let Some(v) = victim {
            if let Some(at) = self.rb_cache.slot(v).filter(|s| s.dirty).map(|s| s.offset) {
                self.guard_write(file, REFCOUNT_BLOCK, at, self.g.cluster_size)?;
            }
            if let Some(s) = self.rb_cache.slot(v).filter(|s| s.dirty) {
                file.write_all_at(s.offset, &s.data)?;
            }
            self.rb_cache.mark_clean(v);
        }
        Ok(victim)
    }

    /// Replaces the refcount table by one of at least `min_entries` entries. The new table and any refcount
    /// blocks needed to describe it go in one free area; they are written and synced before the header points
    /// to them; then the old table is freed.
    fn grow_refcount_table(&mut self, file: &HostFile, min_entries: u64) -> Result<()> {
        let cs = self.g.cluster_size;
        let per_cluster = cs / 8;
        let old_entries = self.refcount_table.len() as u64;
        let mut entries = min_entries
            .max(old_entries + old_entries / 2)
            .div_ceil(per_cluster)
            * per_cluster;
        let mut extra = 0u64;
        let (start, table_clusters, missing) = loop {
            let table_clusters = entries.div_ceil(per_cluster);
            if table_clusters * cs > MAX_REFTABLE_BYTES {
                return Err(corrupt(
                    "the refcount table would exceed 8 MiB",
                    self.header.refcount_table_offset,
                ));
            }
            let start = self.find_free_run(file, table_clusters + extra)?;
            let end = start + table_clusters + extra;
            let mut missing: Vec<u64> = Vec::new();
            for bi in (start / self.g.rb_entries)..=((end - 1) / self.g.rb_entries) {
                if self.block_offset(bi) == 0 {
                    missing.push(bi);
                }
            }
            let max_bi = missing.last().copied().unwrap_or(0);
            if max_bi >= entries {
                entries = (max_bi + 1).div_ceil(per_cluster) * per_cluster;
                continue;
            }
            if missing.len() as u64 <= extra {
                break (start, table_clusters, missing);
            }
            extra = missing.len() as u64;
        };
        let blocks_start = start + table_clusters;
        let area_end = blocks_start + missing.len() as u64;
        self.file_end = self.file_end.max(area_end * cs);
        // New refcount blocks, describing whatever of the area falls in their range.
        let mut new_table = self.refcount_table.clone();
        new_table.resize(entries as usize, 0);
        let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        for (k, &bi) in missing.iter().enumerate() {
            let offset = (blocks_start + k as u64) * cs;
            new_table[bi as usize] = offset;
            let mut data = vec![0u8; cs as usize];
            for c in start..area_end {
                if c / self.g.rb_entries == bi {
                    block_set(&mut data, c % self.g.rb_entries, self.g.refcount_order, 1);
                }
            }
            blocks.push((offset, data));
        }
        // Existing blocks describing part of the area gain the references.
        self.reserved.push((start, area_end));
        let result = (|| -> Result<()> {
            for c in start..area_end {
                if !missing.contains(&(c / self.g.rb_entries)) {
                    self.change_refcount(file, c, 1)?;
                }
            }
            Ok(())
        })();
        self.reserved.pop();
        result?;
        for (offset, data) in &blocks {
            self.guard_write(file, IGNORE_NONE, *offset, cs)?;
            file.write_all_at(*offset, data)?;
        }
        let mut table_bytes = vec![0u8; (table_clusters * cs) as usize];
        for (i, &e) in new_table.iter().enumerate() {
            set_entry(&mut table_bytes, i, e);
        }
        let table_offset = start * cs;
        self.guard_write(file, IGNORE_NONE, table_offset, table_clusters * cs)?;
        file.write_all_at(table_offset, &table_bytes)?;
        self.write_back_refcounts(file, false)?;
        file.sync_data()?;
        let mut field = [0u8; 12];
        field[..8].copy_from_slice(&table_offset.to_be_bytes());
        field[8..].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        file.write_all_at(REFTABLE_OFFSET_FIELD, &field)?;
        file.sync_data()?;
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        self.header.refcount_table_offset = table_offset;
        self.header.refcount_table_clusters = table_clusters as u32;
        self.refcount_table = (0..entries as usize)
            .map(|i| entry(&table_bytes, i))
            .collect();
        self.refcount_table_changed();
        for c in 0..old_clusters {
            self.change_refcount(file, (old_offset >> self.g.cluster_bits) + c, -1)?;
        }
        Ok(())
    }
}
