//! A snapshot's L1 table: checked as QEMU's `qcow2_validate_table` checks it and against the image's layout,
//! read, and written (any L1 table, the active one included).

use blk_core::{HostFile, Result};

use crate::image::header::MAX_L1_BYTES;
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
