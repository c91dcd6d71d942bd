//! `qemu-img snapshot -a`, as QEMU's `qcow2_snapshot_goto` does it.
//!
//! Order (a crash at any point leaks clusters, never corrupts): the snapshot's L1 table is checked and read;
//! every cluster it reaches gains a reference (its COPIED flags recomputed: the snapshot's own L1 table is
//! rewritten when they change, as QEMU does); refcounts and L2 tables are flushed; the snapshot's L1 table
//! (padded with zeros to the active table's size) is written over the active one and synced; then every
//! cluster the old active table reached loses a reference, and the COPIED flags of the new active tables are
//! recomputed and written (refcounts first, then L2 tables, then the L1 table, synced). Last, the clusters
//! freed are punched out of the file (see `snapshots::discarding_freed`).

use blk_core::{ErrorKind, Result, SnapshotSelector};

use crate::image::Qcow2;
use crate::metadata::overlap::{ACTIVE_L1, INACTIVE_L1};
use crate::snapshots::table::{find_by_id_then_name, Snapshot};
use crate::snapshots::{l1, op_error, preconditions, refcounts, table};

/// The snapshot `selector` names, as QEMU's `qcow2_snapshot_goto` looks it up: a plain ID-or-name matches IDs
/// first, then names.
fn find_for_apply<'a>(
    entries: &'a [Snapshot],
    selector: &SnapshotSelector,
) -> Result<&'a Snapshot> {
    find_by_id_then_name(entries, selector).ok_or_else(|| {
        op_error(
            ErrorKind::NotFound,
            format!(
                "Could not apply snapshot '{selector}': Failed to load snapshot: \
                     No such file or directory"
            ),
        )
    })
}

/// `qemu-img snapshot -a`: the current disk becomes the snapshot `selector` names (a plain ID-or-name:
/// by ID first, then by name, as QEMU's `qcow2_snapshot_goto`). Later writes copy shared clusters, so
/// the snapshot keeps its contents.
///
/// Needs a writable open; an offline operation (see `snapshots`). `NotFound` when no snapshot
/// matches; `CorruptImage` when its L1 table is not where it may be (nothing changed) or an L2 table or
/// cluster it reaches is broken (what gained a reference leaks).
///
/// A snapshot whose L1 table is larger than the active one gets the active table grown to its size first,
/// as QEMU does (qemu-img never makes such images at equal disk sizes; other tools may).
///
/// Differences from QEMU: a snapshot taken at another disk size is refused (`UnsupportedFeature`; QEMU
/// resizes v3 images first: see `snapshot_disk_size` for doing that).
pub(crate) fn apply_snapshot(image: &Qcow2, selector: &SnapshotSelector) -> Result<()> {
    crate::snapshots::discarding_freed(image, || apply(image, selector))
}

fn apply(image: &Qcow2, selector: &SnapshotSelector) -> Result<()> {
    let file = image.host_file();
    let mut meta = image.lock_metadata();
    preconditions(image, &meta)?;
    meta.flush(file)?;
    let table = table::read_checked(&meta, file)?;
    let snapshot = find_for_apply(&table.entries, selector)?;
    l1::check(&meta, snapshot)?;
    let size = meta.g.size;
    if snapshot.disk_size.unwrap_or(size) != size {
        return Err(op_error(
            ErrorKind::UnsupportedFeature,
            format!(
                "snapshot '{selector}' was taken at disk size {} (now {size}): loading snapshots \
                 with a different disk size is not implemented (resize the image first)",
                snapshot.disk_size.unwrap_or(size)
            ),
        ));
    }
    if snapshot.l1_size > meta.l1.len() as u64 {
        // As QEMU's `qcow2_snapshot_goto`: the active table grown to exactly the snapshot's size first.
        l1::grow_active(&mut meta, file, snapshot.l1_size)?;
    }
    let active_size = meta.l1.len();
    let mut new_l1 = l1::read(&meta, file, snapshot)?;
    new_l1.resize(active_size, 0);
    // The snapshot's clusters gain the new active table's reference.
    let mut counted = new_l1.clone();
    counted.truncate(snapshot.l1_size as usize);
    refcounts::check_shareable(
        &mut meta,
        file,
        &counted,
        snapshot.l1_table_offset,
        INACTIVE_L1,
    )?;
    let snapshot_l1_modified = refcounts::update(&mut meta, file, &mut counted, 1)?;
    meta.flush(file)?;
    if snapshot_l1_modified {
        l1::write(
            &mut meta,
            file,
            INACTIVE_L1,
            snapshot.l1_table_offset,
            &counted,
        )?;
    }
    let active_offset = meta.g.l1_table_offset;
    l1::write(&mut meta, file, ACTIVE_L1, active_offset, &new_l1)?;
    // The old active table's clusters lose its reference (the in-memory table is still the old one).
    let mut old = std::mem::replace(&mut meta.l1, new_l1.clone());
    meta.l1_changed();
    refcounts::update(&mut meta, file, &mut old, -1)?;
    let l1_modified = refcounts::update(&mut meta, file, &mut new_l1, 0)?;
    meta.flush(file)?;
    if l1_modified {
        l1::write(&mut meta, file, ACTIVE_L1, active_offset, &new_l1)?;
        meta.l1 = new_l1;
        meta.l1_changed();
    }
    Ok(())
}

/// The virtual disk size recorded for the snapshot `apply_snapshot` would apply (the current size for
/// entries that record none, as QEMU reads them). QEMU resizes a v3 image to it before applying; here the
/// caller does: when it differs from the current size, close the image, [`crate::offline::resize()`] it (with
/// `shrink`) to this size, reopen and apply.
pub(crate) fn snapshot_disk_size(image: &Qcow2, selector: &SnapshotSelector) -> Result<u64> {
    let meta = image.lock_metadata();
    let table = table::read_checked(&meta, image.host_file())?;
    let snapshot = find_for_apply(&table.entries, selector)?;
    Ok(snapshot.disk_size.unwrap_or(meta.g.size))
}
