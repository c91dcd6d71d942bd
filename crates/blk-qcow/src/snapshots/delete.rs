//! `qemu-img snapshot -d`, as QEMU's `qcow2_snapshot_delete` does it.
//!
//! Order (a crash at any point leaks clusters, never corrupts): the snapshot's L1 table is checked and read;
//! the snapshot table without the entry is written and synced, the header pointed at it (synced) and the old
//! table freed; then every cluster the snapshot's L1 table reaches loses a reference, the L1 table is freed,
//! and the COPIED flags of the active tables are recomputed (clusters whose refcount dropped to 1 get them
//! back; the L2 tables through the cache, flushed refcounts first, then the active L1 table, synced). Last,
//! the clusters freed are punched out of the file (see `snapshots::discarding_freed`).

use blk_core::{ErrorKind, Result, SnapshotSelector};

use crate::image::Qcow2;
use crate::metadata::overlap::ACTIVE_L1;
use crate::snapshots::table::Snapshot;
use crate::snapshots::{l1, op_error, preconditions, refcounts, table};

/// The index of the snapshot `selector` names, as qemu-img 10 looks it up for `-d` (`bdrv_snapshot_find`
/// with the name alone): a plain ID-or-name matches names only (the first snapshot with that name); the
/// `snapshot.id=` / `snapshot.name=` forms match exactly.
pub(crate) fn find_for_delete(entries: &[Snapshot], selector: &SnapshotSelector) -> Option<usize> {
    match selector {
        SnapshotSelector::IdOrName(x) => entries.iter().position(|s| &s.name_string() == x),
        _ => entries
            .iter()
            .position(|s| selector.matches(&s.id_string(), &s.name_string(), false)),
    }
}

/// `qemu-img snapshot -d`: deletes the snapshot `selector` names (a plain ID-or-name matches names
/// only, as qemu-img 10's `-d` does; [`SnapshotSelector::Id`] and the other forms match exactly). Its clusters lose their references (freed when none is left)
/// and clusters of the current disk whose refcount drops to 1 get their COPIED flag back.
///
/// Needs a writable open; an offline operation (see `snapshots`). `NotFound` ("snapshot not found")
/// when no snapshot matches; `CorruptImage` when the snapshot's L1 table is not where it may be (nothing
/// is changed then), or when an L2 table or cluster it reaches is broken (the snapshot is gone by then;
/// what was not released leaks).
pub(crate) fn delete_snapshot(image: &Qcow2, selector: &SnapshotSelector) -> Result<()> {
    crate::snapshots::discarding_freed(image, || delete(image, selector))
}

fn delete(image: &Qcow2, selector: &SnapshotSelector) -> Result<()> {
    let file = image.host_file();
    let mut meta = image.lock_metadata();
    preconditions(image, &meta)?;
    meta.flush(file)?;
    let table = table::read_checked(&meta, file)?;
    let index = find_for_delete(&table.entries, selector).ok_or_else(|| {
        op_error(
            ErrorKind::NotFound,
            format!("Could not delete snapshot '{selector}': snapshot not found"),
        )
    })?;
    let mut entries = table.entries;
    let snapshot = entries.remove(index);
    let mut l1 = l1::read(&meta, file, &snapshot)?;
    table::write(&mut meta, file, &entries, table.size)?;
    // The snapshot is gone: from here a failure only leaks.
    refcounts::update(&mut meta, file, &mut l1, -1)?;
    meta.change_refcount_range(file, snapshot.l1_table_offset, snapshot.l1_size * 8, -1)?;
    let mut active = meta.l1.clone();
    let l1_modified = refcounts::update(&mut meta, file, &mut active, 0)?;
    meta.flush(file)?;
    if l1_modified {
        let offset = meta.g.l1_table_offset;
        l1::write(&mut meta, file, ACTIVE_L1, offset, &active)?;
        meta.l1 = active;
        meta.l1_changed();
    }
    Ok(())
}
