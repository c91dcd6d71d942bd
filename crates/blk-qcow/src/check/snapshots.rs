//! The snapshot table: only what the check needs (each snapshot's L1 table and the table's own extent).

use blk_core::HostFile;

use super::layout::{read_padded, Layout, MAX_SNAPSHOTS};

/// QEMU's cap on the snapshot table's size.
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// QEMU's cap on a snapshot's extra data.
const MAX_EXTRA_DATA: u64 = 1024;

/// One snapshot's L1 table.
#[derive(Debug, Clone)]
pub(super) struct SnapshotEntry {
    /// The snapshot's ID string.
    pub id: String,
    /// The snapshot's name.
    pub name: String,
    /// Where its L1 table starts.
    pub l1_table_offset: u64,
    /// Its L1 table's entries.
    pub l1_size: u64,
}

/// The parsed snapshot table.
#[derive(Debug, Clone, Default)]
pub(super) struct SnapshotTable {
    /// The snapshots, in table order.
    pub entries: Vec<SnapshotEntry>,
    /// The table's size in bytes (each entry padded to 8 bytes).
    pub size: u64,
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| s.iter().fold(0, |acc, &x| (acc << 8) | u64::from(x)))
}

fn be_u32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map_or(0, |s| s.iter().fold(0, |acc, &x| (acc << 8) | u64::from(x)))
}

fn be_u16(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map_or(0, |s| s.iter().fold(0, |acc, &x| (acc << 8) | u64::from(x)))
}

impl SnapshotTable {
    /// Reads the table the header names, with QEMU's caps; the error is qemu's message for a table it
    /// cannot read.
    pub fn read(file: &HostFile, file_len: u64, layout: &Layout) -> Result<SnapshotTable, String> {
        let count = layout.nb_snapshots;
        if count == 0 {
            return Ok(SnapshotTable::default());
        }
        if count > MAX_SNAPSHOTS {
            return Err(format!("snapshot table too large ({count} snapshots)"));
        }
        if layout.offset_into_cluster(layout.snapshots_offset) != 0 {
            return Err("snapshot table is not cluster aligned".to_string());
        }
        let mut offset = layout.snapshots_offset;
        let mut entries = Vec::new();
        for _ in 0..count {
            let fixed = read_padded(file, file_len, offset, 40).map_err(|e| e.to_string())?;
            let extra = be_u32(&fixed, 36);
            let id_len = be_u16(&fixed, 12);
            let name_len = be_u16(&fixed, 14);
            if extra > MAX_EXTRA_DATA {
                return Err("too much extra metadata in snapshot table entry".to_string());
            }
            let strings_at = offset.saturating_add(40 + extra);
            let names = read_padded(file, file_len, strings_at, (id_len + name_len) as usize)
                .map_err(|e| e.to_string())?;
            let (id, name) = names.split_at((id_len as usize).min(names.len()));
            entries.push(SnapshotEntry {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                l1_table_offset: be_u64(&fixed, 0),
                l1_size: be_u32(&fixed, 8),
            });
            offset = strings_at
                .saturating_add(id_len + name_len)
                .saturating_add(7)
                & !7;
            if offset - layout.snapshots_offset > MAX_SNAPSHOT_TABLE_BYTES {
                return Err("snapshot table too large".to_string());
            }
        }
        Ok(SnapshotTable {
            entries,
            size: offset - layout.snapshots_offset,
        })
    }
}
