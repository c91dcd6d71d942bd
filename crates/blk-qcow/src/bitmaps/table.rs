//! A bitmap's data on disk: its one-level bitmap table, whose entries are each a cluster of serialized bits
//! (bits 9-55: the cluster's offset), or 0 for a cluster of zeros, or 0 with bit 0 set for a cluster of ones
//! (QEMU's `load_bitmap_data` and `store_bitmap_data`).

use blk_core::{HostFile, Result};

use crate::bitmaps::directory::Bitmap;
use crate::bitmaps::dirty_bits::DirtyBits;
use crate::metadata::overlap::IGNORE_NONE;
use crate::metadata::tables::L2_OFFSET_MASK;
use crate::metadata::{corrupt, read_zero_filled, Metadata};

/// Reserved bits of a bitmap table entry.
pub(crate) const TABLE_ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// "All ones" flag of a bitmap table entry without a cluster.
pub(crate) const TABLE_ENTRY_ALL_ONES: u64 = 1;

impl Metadata {
    /// Reads the bits of `bitmap` for a disk of `size` bytes, and its table's entries. Every entry is checked
    /// (reserved bits clear, clusters aligned and inside the used part of the file) as QEMU's
    /// `check_table_entry` does.
    pub(crate) fn load_bitmap(
        &self,
        file: &HostFile,
        bitmap: &Bitmap,
        size: u64,
    ) -> Result<(DirtyBits, Vec<u64>)> {
        let cs = self.g.cluster_size;
        let table = self.read_bitmap_table(file, bitmap)?;
        let mut bits = DirtyBits::new(size, bitmap.granularity_bits());
        let ones = vec![0xffu8; cs as usize];
        let needed = bits.byte_len().div_ceil(cs);
        for (i, &entry) in table.iter().enumerate().take(needed as usize) {
            let data = entry & L2_OFFSET_MASK;
            let start = i as u64 * cs;
            if data == 0 {
                if entry & TABLE_ENTRY_ALL_ONES != 0 {
                    bits.write_bytes(start, &ones);
                }
                continue;
            }
            let cluster = read_zero_filled(file, data, cs as usize)?;
            bits.write_bytes(start, &cluster);
        }
        Ok((bits, table))
    }

    /// Reads the table of `bitmap` and checks every entry (reserved bits clear, clusters aligned and inside
    /// the used part of the file, not over the header or the L1 / refcount tables).
    pub(crate) fn read_bitmap_table(&self, file: &HostFile, bitmap: &Bitmap) -> Result<Vec<u64>> {
        let at = bitmap.table_offset;
        self.check_table_location(at, "bitmap table")?;
        // table_size * cluster size <= 512 MiB (the directory's checks), so the table is at most 8 MiB.
        let raw = read_zero_filled(file, at, bitmap.table_size as usize * 8)?;
        let table: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        for (i, &entry) in table.iter().enumerate() {
            let entry_at = at + i as u64 * 8;
            let data = entry & L2_OFFSET_MASK;
            if entry & TABLE_ENTRY_RESERVED != 0 || (data != 0 && entry & TABLE_ENTRY_ALL_ONES != 0)
            {
                return Err(corrupt(
                    format!(
                        "bitmap '{}': invalid bitmap table entry {entry:#x}",
                        bitmap.name
                    ),
                    entry_at,
                ));
            }
            if data != 0 {
                self.check_table_location(data, "bitmap data cluster")
                    .map_err(|e| {
                        corrupt(
                            format!("bitmap '{}': {}", bitmap.name, e.message()),
                            entry_at,
                        )
                    })?;
            }
        }
        Ok(table)
    }

    /// Writes `bits` to freshly allocated clusters (zero clusters not stored) and a fresh table, and returns
    /// the table's offset and entries. Nothing points to them yet; on failure they leak (as `check` reports).
    pub(crate) fn store_bitmap(
        &mut self,
        file: &HostFile,
        bits: &DirtyBits,
    ) -> Result<(u64, Vec<u64>)> {
        let cs = self.g.cluster_size;
        let entries = bits.byte_len().div_ceil(cs).max(1);
        let mut table = vec![0u64; entries as usize];
        let mut buf = vec![0u8; cs as usize];
        for (i, slot) in table.iter_mut().enumerate() {
            let start = i as u64 * cs;
            if bits.bytes_are_zero(start, cs) {
                continue;
            }
            bits.read_bytes(start, &mut buf);
            let host = self.allocate_clusters(file, 1)?;
            self.guard_write(file, IGNORE_NONE, host, cs)?;
            file.write_all_at(host, &buf)?;
            *slot = host;
        }
        let table_bytes = (entries * 8).next_multiple_of(cs);
        let at = self.allocate_clusters(file, table_bytes / cs)?;
        self.guard_write(file, IGNORE_NONE, at, table_bytes)?;
        let mut raw = Vec::with_capacity(table_bytes as usize);
        for e in &table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        raw.resize(table_bytes as usize, 0);
        file.write_all_at(at, &raw)?;
        Ok((at, table))
    }

    /// Drops the references of a table stored at `offset` with `table` entries: its data clusters and the
    /// table's own clusters (QEMU's `free_bitmap_clusters`).
    pub(crate) fn free_bitmap_table(
        &mut self,
        file: &HostFile,
        offset: u64,
        table: &[u64],
    ) -> Result<()> {
        let cs = self.g.cluster_size;
        for &entry in table {
            let data = entry & L2_OFFSET_MASK;
            if data != 0 {
                self.change_refcount_range(file, data, cs, -1)?;
            }
        }
        self.change_refcount_range(file, offset, table.len() as u64 * 8, -1)
    }
}
