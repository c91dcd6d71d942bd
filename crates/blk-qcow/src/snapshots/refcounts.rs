//! QEMU's `qcow2_update_snapshot_refcount`: the walk over everything an L1 table reaches, adding to the
//! refcounts (creating, deleting and applying snapshots) and recomputing the COPIED flags.

use blk_core::{HostFile, Result};

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
        let new = if refcount == 1 {
            *l1_entry | COPIED
        } else {
            *l1_entry & !COPIED
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
                return Err(corrupt(
                    format!("cluster allocation offset {host:#x} unaligned"),
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
