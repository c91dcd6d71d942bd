//! The snapshot table: only what the check needs (each snapshot's L1 table and the table's own extent), from
//! the crate's one snapshot-table parser ([`crate::snapshots::table`]).

use blk_core::HostFile;

use super::layout::Layout;
use crate::snapshots::table;

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
    /// The table's size in bytes (from its start to the end of the last entry's name).
    pub size: u64,
    /// The entries as parsed (for rewriting the table after a repair).
    pub parsed: Vec<table::Snapshot>,
}

impl SnapshotTable {
    /// Reads the table the header names, with QEMU's caps; the error is the message for a table that cannot
    /// be read. With `repairs`, repairs what QEMU's `check -r all` repairs while reading (see
    /// [`table::SnapshotTable::read_repairing`]).
    pub fn read(
        file: &HostFile,
        file_len: u64,
        layout: &Layout,
        repairs: Option<&mut table::TableRepairs>,
    ) -> Result<SnapshotTable, String> {
        let (count, offset, cs) = (
            layout.nb_snapshots,
            layout.snapshots_offset,
            layout.cluster_size,
        );
        let table = match repairs {
            None => table::SnapshotTable::read(file, file_len, count, offset, cs),
            Some(repairs) => {
                table::SnapshotTable::read_repairing(file, file_len, count, offset, cs, repairs)
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(SnapshotTable {
            entries: table
                .entries
                .iter()
                .map(|s| SnapshotEntry {
                    id: s.id_string(),
                    name: s.name_string(),
                    l1_table_offset: s.l1_table_offset,
                    l1_size: s.l1_size,
                })
                .collect(),
            size: table.size,
            parsed: table.entries,
        })
    }
}
