//! QEMU's `qcow2_update_snapshot_refcount`: the walk over everything an L1 table reaches, adding to the
//! refcounts (creating, deleting and applying snapshots) and recomputing the COPIED flags; and the read-only
//! walk before it that refuses, with nothing written yet, what would make QEMU's walk fail or abort part-way.

use blk_core::{HostFile, Result};

use crate::metadata::overlap::{kind_name, ACTIVE_L2};
use crate::metadata::tables::{entry, set_entry, L2Entry, COPIED, L1_OFFSET_MASK};
use crate::metadata::{corrupt, Metadata};

/// QEMU's `qcow2_update_snapshot_refcount`: adds `addend` (-1, 0 or 1) to the refcount of every L2 table
/// `l1` reaches and of every cluster those tables reference (compressed data: every host cluster it
/// spans), and sets the COPIED flag of each L2 entry (in the cache) and L1 entry (in `l1`) exactly when
/// the refcount is then 1. Returns whether `l1` changed. L2 tables whose refcount drops to 0 are dropped
/// from the cache (they are free). Every cluster is checked to lie inside the image before its refcount
/// changes; an error part-way leaves at most leaked clusters (increments come first) or, for
/// decrements, entries already released.
pub(crate) fn update(
    meta: &mut Metadata,
    file: &HostFile,
    l1: &mut [u64],
    addend: i64,
) -> Result<bool> {
    let mut l1_modified = false;
    for l1_entry in l1.iter_mut() {
        let l2_offset = *l1_entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        meta.check_table_location(l2_offset, "L2 table")?;
        let slot = meta.l2_slot(file, l2_offset)?;
        let words: Vec<u64> = (0..meta.g.l2_entries)
            .map(|i| entry(meta.l2_cache.data(slot), meta.g.l2_word(i)))
            .collect();
        for (i, &raw) in words.iter().enumerate() {
            let new = update_l2_entry(meta, file, raw, addend)?;
            if new != raw {
                let slot = meta.l2_slot(file, l2_offset)?;
                let word = meta.g.l2_word(i as u64);
                set_entry(meta.l2_cache.data_mut(slot), word, new);
            }
        }
        let cluster = l2_offset >> meta.g.cluster_bits;
        if addend != 0 {
            meta.change_refcount(file, cluster, addend)?;
        }
        let refcount = meta.refcount(file, cluster)?;
        if refcount == 0 {
            meta.l2_cache.forget(l2_offset);
        }
        // As QEMU, the entry is rewritten from its offset alone: reserved bits go.
        let new = if refcount == 1 {
            l2_offset | COPIED
        } else {
            l2_offset
        };
        if new != *l1_entry {
            *l1_entry = new;
            l1_modified = true;
        }
    }
    Ok(l1_modified)
}

/// One L2 entry of `update_snapshot_refcount`: its clusters' refcounts changed by `addend`, and the entry
/// with its COPIED flag recomputed.
fn update_l2_entry(meta: &mut Metadata, file: &HostFile, raw: u64, addend: i64) -> Result<u64> {
    let decoded = L2Entry::decode(raw, &meta.g);
    let refcount = match decoded {
        L2Entry::Compressed { host, size } => {
            if addend != 0 {
                meta.check_release(file, decoded)?;
                meta.change_refcount_range(file, host, size, addend)?;
            }
            // Compressed clusters are never written in place.
            2
        }
        L2Entry::Data { host, .. }
        | L2Entry::Zero {
            host: Some(host), ..
        } => {
            if host % meta.g.cluster_size != 0 {
                return Err(meta.signal_found_corruption(
                    file,
                    format!("Cluster allocation offset {host:#x} unaligned"),
                    host,
                ));
            }
            let cluster = host >> meta.g.cluster_bits;
            if addend != 0 {
                meta.check_release(file, decoded)?;
                meta.change_refcount(file, cluster, addend)?;
            }
            meta.refcount(file, cluster)?
        }
        L2Entry::Zero { host: None, .. } | L2Entry::Unallocated => 0,
    };
    Ok(if refcount == 1 {
        raw | COPIED
    } else {
        raw & !COPIED
    })
}

/// Checks, reading only, that [`update`] with `addend` 1 can give a new reference to everything `l1` reaches:
/// every L1 entry that is not zero holds an L2 table offset (an entry with only flag or reserved bits makes
/// QEMU's walk abort on an assertion), every L2 table lies where a table may (aligned: QEMU refuses an
/// unaligned one with "L2 table offset ... unaligned" and, as here, marks a v3 image corrupt; inside the
/// image, off the header and the other tables), every allocated cluster an L2 entry names is aligned
/// (QEMU: "Cluster allocation offset ... unaligned", marking the image corrupt too), inside the image and
/// not over metadata (as `check_release`, which marks the image corrupt there), and no refcount would pass the
/// image's maximum (QEMU: `EINVAL`, after it raised some). Creating and applying a snapshot call it before
/// anything is written, so a corrupt image is refused as it was rather than having its errors shared by a
/// new snapshot. A cluster named twice is counted once here: its second reference can still overflow in
/// [`update`], part-way, as QEMU's walk does.
///
/// The tables [`update`] writes back must also pass the overlap check their writes will run (`l1` is
/// rewritten at `l1_at`, a table of kind `l1_kind`; each L2 table as an active one): refused only then,
/// after the refcounts were raised and flushed, the image would be left with COPIED flags its refcounts
/// contradict. QEMU writes the L1 table there without the check; blk refuses first instead.
pub(crate) fn check_shareable(
    meta: &mut Metadata,
    file: &HostFile,
    l1: &[u64],
    l1_at: u64,
    l1_kind: u32,
) -> Result<()> {
    let max = meta.max_refcount();
    check_no_overlap(meta, file, l1_kind, l1_at, l1.len() as u64 * 8, "L1 table")?;
    for (index, &l1_entry) in l1.iter().enumerate() {
        if l1_entry == 0 {
            continue;
        }
        let l2_offset = l1_entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Err(corrupt(
                format!("L1 entry {index:#x} ({l1_entry:#018x}) is not zero but names no L2 table"),
                l1_at + index as u64 * 8,
            ));
        }
        if l2_offset % meta.g.cluster_size != 0 {
            return Err(meta.signal_found_corruption(
                file,
                format!("L2 table offset {l2_offset:#x} unaligned (L1 index: {index:#x})"),
                l2_offset,
            ));
        }
        meta.check_table_location(l2_offset, "L2 table")?;
        let cs = meta.g.cluster_size;
        check_no_overlap(meta, file, ACTIVE_L2, l2_offset, cs, "L2 table")?;
        check_room(meta, file, l2_offset >> meta.g.cluster_bits, max)?;
        let slot = meta.l2_slot(file, l2_offset)?;
        let words: Vec<u64> = (0..meta.g.l2_entries)
            .map(|i| entry(meta.l2_cache.data(slot), meta.g.l2_word(i)))
            .collect();
        for (l2_index, &raw) in words.iter().enumerate() {
            let decoded = L2Entry::decode(raw, &meta.g);
            match decoded {
                L2Entry::Compressed { host, size } => {
                    meta.check_release(file, decoded)?;
                    let first = host >> meta.g.cluster_bits;
                    let last = (host + size.max(1) - 1) >> meta.g.cluster_bits;
                    for cluster in first..=last {
                        check_room(meta, file, cluster, max)?;
                    }
                }
                L2Entry::Data { host, .. }
                | L2Entry::Zero {
                    host: Some(host), ..
                } => {
                    if host % meta.g.cluster_size != 0 {
                        return Err(meta.signal_found_corruption(
                            file,
                            format!(
                                "Cluster allocation offset {host:#x} unaligned (L2 offset: {l2_offset:#x}, L2 index: {l2_index:#x})"
                            ),
                            host,
                        ));
                    }
                    if meta.g.data_file {
                        continue;
                    }
                    meta.check_release(file, decoded)?;
                    check_room(meta, file, host >> meta.g.cluster_bits, max)?;
                }
                L2Entry::Zero { host: None, .. } | L2Entry::Unallocated => {}
            }
        }
    }
    Ok(())
}

/// Checks that cluster `cluster` can take one more reference (QEMU's `update_refcount` fails with `EINVAL`
/// otherwise, "Invalid argument", after the clusters before it gained theirs).
fn check_room(meta: &mut Metadata, file: &HostFile, cluster: u64, max: u64) -> Result<()> {
    let refcount = meta.refcount(file, cluster)?;
    if refcount >= max {
        return Err(corrupt(
            format!(
                "Invalid argument: the refcount of cluster {cluster} ({refcount}) cannot take another reference"
            ),
            cluster << meta.g.cluster_bits,
        ));
    }
    Ok(())
}

/// Refuses (reading only, nothing marked) a table write of `len` bytes at `offset`, of kind `ignore`, that
/// the overlap check would refuse.
fn check_no_overlap(
    meta: &mut Metadata,
    file: &HostFile,
    ignore: u32,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<()> {
    let kinds = meta.overlap.kinds;
    match meta.metadata_overlap(file, kinds, ignore, offset, len) {
        None => Ok(()),
        Some(kind) => Err(corrupt(
            format!(
                "the {what} at {offset:#x} ({len} bytes) overlaps the {}: its rewrite would be refused",
                kind_name(kind)
            ),
            offset,
        )),
    }
}
