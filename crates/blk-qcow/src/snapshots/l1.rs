//! A snapshot's L1 table: checked as QEMU's `qcow2_validate_table` checks it and against the image's layout,
//! read, and written (any L1 table, the active one included); and the active L1 table grown to a
//! snapshot's size before the snapshot is applied.

use blk_core::{HostFile, Result};

use crate::image::header::MAX_L1_BYTES;
use crate::metadata::overlap::IGNORE_NONE;
use crate::metadata::tables::{entry, set_entry};
use crate::metadata::{corrupt, read_zero_filled, Metadata};
use crate::snapshots::table::Snapshot;

/// Checks a snapshot's L1 table as QEMU's `qcow2_validate_table` does (at most 32 MiB, cluster-aligned)
/// and that it lies inside the used area, not over the header or the active tables.
pub(crate) fn check(meta: &Metadata, snapshot: &Snapshot) -> Result<()> {
    let offset = snapshot.l1_table_offset;
    let bad = |message: &str| {
        Err(corrupt(
            format!(
                "Snapshot L1 table {message} (offset {offset:#x}, {} entries)",
                snapshot.l1_size
            ),
            offset,
        ))
    };
    let bytes = snapshot.l1_size.saturating_mul(8);
    if bytes > MAX_L1_BYTES {
        return bad("too large");
    }
    if offset % meta.g.cluster_size != 0 {
        return bad("offset invalid");
    }
    if bytes > 0
        && (offset == 0
            || offset.saturating_add(bytes) > meta.file_end
            || meta.check_metadata_write(offset, bytes).is_err())
    {
        return bad("lies outside the image or over other metadata");
    }
    Ok(())
}

/// A snapshot's L1 table (checked first), read from the disk.
pub(crate) fn read(meta: &Metadata, file: &HostFile, snapshot: &Snapshot) -> Result<Vec<u64>> {
    check(meta, snapshot)?;
    let bytes = read_zero_filled(
        file,
        snapshot.l1_table_offset,
        (snapshot.l1_size * 8) as usize,
    )?;
    Ok((0..snapshot.l1_size as usize)
        .map(|i| entry(&bytes, i))
        .collect())
}

/// Writes a whole L1 table at `offset` and syncs, after the overlap check (`ignore`: the kind of table
/// written, `overlap::IGNORE_NONE` for a new one).
pub(crate) fn write(
    meta: &mut Metadata,
    file: &HostFile,
    ignore: u32,
    offset: u64,
    l1: &[u64],
) -> Result<()> {
    meta.guard_write(file, ignore, offset, l1.len() as u64 * 8)?;
    let mut bytes = vec![0u8; l1.len() * 8];
    for (i, &e) in l1.iter().enumerate() {
        set_entry(&mut bytes, i, e);
    }
    file.write_all_at(offset, &bytes)?;
    file.sync_data()
}

/// Where the header keeps the L1 table's size (u32), followed by its offset (u64).
const L1_SIZE_FIELD: u64 = 36;

/// Replaces the active L1 table by one of exactly `entries` entries (more than it has), as QEMU's
/// `qcow2_grow_l1_table` with `exact_size` does before applying a snapshot with a larger L1 table and when
/// `resize` grows the disk past what the table covers: the new
/// table allocated in free clusters (its refcounts written first), written with the old entries and zeros,
/// synced; the header switched to it in one synced write; then the old table's clusters freed.
pub(crate) fn grow_active(meta: &mut Metadata, file: &HostFile, entries: u64) -> Result<()> {
    let new_bytes = entries.saturating_mul(8);
    if new_bytes > MAX_L1_BYTES {
        return Err(corrupt(
            format!("an L1 table of {entries} entries would exceed 32 MiB"),
            meta.g.l1_table_offset,
        ));
    }
    let cs = meta.g.cluster_size;
    let old_offset = meta.g.l1_table_offset;
    let old_bytes = meta.g.l1_size * 8;
    let new_offset = meta.allocate_clusters(file, new_bytes.div_ceil(cs))?;
    meta.write_back_refcounts(file, true)?;
    let mut table = meta.l1.clone();
    table.resize(entries as usize, 0);
    write(meta, file, IGNORE_NONE, new_offset, &table)?;
    let mut field = [0u8; 12];
    field[..4].copy_from_slice(&(entries as u32).to_be_bytes());
    field[4..].copy_from_slice(&new_offset.to_be_bytes());
    file.write_all_at(L1_SIZE_FIELD, &field)?;
    file.sync_data()?;
    meta.header.l1_size = entries as u32;
    meta.header.l1_table_offset = new_offset;
    meta.g.l1_size = entries;
    meta.g.l1_table_offset = new_offset;
    meta.l1 = table;
    meta.l1_changed();
    meta.change_refcount_range(file, old_offset, old_bytes, -1)
}
