//! Opening an internal snapshot read-only (qemu-img `convert -l`, QEMU's `qcow2_snapshot_load_tmp`): the
//! snapshot's L1 table replaces the active one; everything below the L1 table is shared.

use blk_core::{Error, ErrorKind, HostFile, Result, SnapshotSelector};

use crate::image::header::{Header, MAX_L1_BYTES};
use crate::metadata::Geometry;
use crate::snapshots::table::{find_by_id_then_name, Snapshot, SnapshotTable};
use crate::FORMAT_NAME;

/// The snapshot `selector` names in the image whose header is `header`: its ID first, then its name for an
/// ID-or-name selector (QEMU's order); `NotFound` ("Can't find snapshot") when none matches.
pub(crate) fn find(
    file: &HostFile,
    file_len: u64,
    header: &Header,
    selector: &SnapshotSelector,
) -> Result<Snapshot> {
    let cluster_size = 1u64 << header.cluster_bits;
    let table = SnapshotTable::read(
        file,
        file_len,
        u64::from(header.nb_snapshots),
        header.snapshots_offset,
        cluster_size,
    )?;
    find_by_id_then_name(&table.entries, selector)
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("Failed to load snapshot: Can't find snapshot '{selector}'"),
            )
            .with_format(FORMAT_NAME)
        })
}

/// Points `g` at `snapshot`'s L1 table, checked as QEMU does (at most 32 MiB, cluster-aligned, starting inside
/// the file). As QEMU's `qcow2_snapshot_load_tmp`, the disk keeps its current size: guest clusters past the
/// snapshot's L1 table read as unallocated (zeros, or the backing file).
pub(crate) fn apply(g: &mut Geometry, snapshot: &Snapshot, file_len: u64) -> Result<()> {
    let corrupt = |message: String| {
        Error::new(ErrorKind::CorruptImage, message)
            .with_format(FORMAT_NAME)
            .with_offset(snapshot.l1_table_offset)
    };
    let bytes = snapshot.l1_size.saturating_mul(8);
    if bytes > MAX_L1_BYTES {
        return Err(corrupt(format!(
            "Snapshot L1 table too large ({} entries)",
            snapshot.l1_size
        )));
    }
    let offset = snapshot.l1_table_offset;
    if offset % g.cluster_size != 0
        || (offset == 0 && bytes != 0)
        || (bytes != 0 && offset >= file_len)
    {
        return Err(corrupt("Snapshot L1 table offset invalid".to_string()));
    }
    g.l1_size = snapshot.l1_size;
    g.l1_table_offset = offset;
    Ok(())
}
