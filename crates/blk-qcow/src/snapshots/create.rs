//! `qemu-img snapshot -c`, as QEMU's `qcow2_snapshot_create` does it.
//!
//! Order (a crash at any point leaks clusters, never corrupts): the caches are flushed; the active L1 table
//! is copied into new clusters; every cluster the active L1 table reaches gains a reference and loses its
//! COPIED flag (L2 tables through the cache, flushed with the refcounts first, then the active L1 table,
//! synced); the new snapshot table is written and synced, the header is pointed at it (synced), and the old
//! table is freed.

use std::time::{SystemTime, UNIX_EPOCH};

use blk_core::{ErrorKind, Result};

use crate::image::Qcow2;
use crate::metadata::overlap::{ACTIVE_L1, IGNORE_NONE};
use crate::snapshots::table::{c_bytes, Snapshot, MAX_SNAPSHOTS};
use crate::snapshots::{l1, op_error, preconditions, refcounts, table};

/// QEMU keeps at most this many bytes of a new snapshot's name (`QEMUSnapshotInfo.name` holds 256 bytes
/// with the NUL).
const MAX_NAME: usize = 255;

/// C's `strtoul(text, NULL, 10)` on 64 bits: leading whitespace, an optional sign (a minus negates, modulo
/// 2^64), then decimal digits; no digits gives 0, overflow gives `u64::MAX`.
fn strtoul(text: &[u8]) -> u64 {
    let mut rest = text;
    while let Some((&first, tail)) = rest.split_first() {
        if !first.is_ascii_whitespace() {
            break;
        }
        rest = tail;
    }
    let mut negative = false;
    if let Some((&sign, tail)) = rest.split_first() {
        if sign == b'+' || sign == b'-' {
            negative = sign == b'-';
            rest = tail;
        }
    }
    let mut value = 0u64;
    let mut overflow = false;
    for &b in rest.iter().take_while(|b| b.is_ascii_digit()) {
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    if overflow {
        u64::MAX
    } else if negative {
        value.wrapping_neg()
    } else {
        value
    }
}

/// QEMU's `find_new_snapshot_id`: one more than the largest numeric ID.
fn new_snapshot_id(entries: &[Snapshot]) -> Vec<u8> {
    let max = entries
        .iter()
        .map(|s| strtoul(c_bytes(&s.id)))
        .max()
        .unwrap_or(0);
    max.wrapping_add(1).to_string().into_bytes()
}

/// `qemu-img snapshot -c NAME`: a disk-only snapshot of the current disk (VM state size 0, the date now,
/// VM clock 0, instruction count 0 as qemu-img records it, the next free numeric ID, 24 bytes of extra
/// data with the disk size, for v2 and v3 images alike). As qemu-img, names need not be unique; a name
/// is cut to 255 bytes (and at a NUL).
///
/// Needs a writable open; an offline operation (see `snapshots`): it holds the metadata lock
/// throughout and no guest I/O may run concurrently. Refused as QEMU refuses: an image that already has
/// 65536 snapshots or a new table over 64 MiB ("File too large", `InvalidInput`), an image with an external data file
/// (`Unsupported`); and, with `CorruptImage` before anything is written (see `refcounts::check_shareable`),
/// an active L1 or L2 table QEMU's walk would fail or abort on (unaligned, outside the image or over
/// metadata, an L1 entry naming no table) or a refcount that would overflow (1-bit refcounts: QEMU's
/// `EINVAL`, which QEMU hits after some clusters gained a reference).
pub(crate) fn create_snapshot(image: &Qcow2, name: &str) -> Result<()> {
    crate::snapshots::discarding_freed(image, || create(image, name))
}

fn create(image: &Qcow2, name: &str) -> Result<()> {
    let file = image.host_file();
    let mut meta = image.lock_metadata();
    preconditions(image, &meta)?;
    meta.flush(file)?;
    let table = table::read_checked(&meta, file)?;
    if table.entries.len() as u64 >= MAX_SNAPSHOTS {
        return Err(op_error(
            ErrorKind::InvalidInput,
            format!("Could not create snapshot '{name}': File too large"),
        ));
    }
    let id = new_snapshot_id(&table.entries);
    if table
        .entries
        .iter()
        .any(|s| c_bytes(&s.id) == id.as_slice())
    {
        return Err(op_error(
            ErrorKind::InvalidInput,
            format!("Could not create snapshot '{name}': File exists"),
        ));
    }
    // Everything the new snapshot will share must be able to take its reference: checked before anything
    // is written, so a corrupt image is refused as it was.
    let active = meta.l1.clone();
    let active_at = meta.g.l1_table_offset;
    refcounts::check_shareable(&mut meta, file, &active, active_at, ACTIVE_L1)?;
    let name_bytes = c_bytes(name.as_bytes());
    let name_bytes = name_bytes.get(..MAX_NAME).unwrap_or(name_bytes).to_vec();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The active L1 table, copied into new clusters.
    let mut l1 = meta.l1.clone();
    let l1_bytes = l1.len() as u64 * 8;
    let cs = meta.g.cluster_size;
    let l1_offset = if l1_bytes == 0 {
        0
    } else {
        meta.allocate_clusters(file, l1_bytes.div_ceil(cs))?
    };
    if l1_bytes > 0 {
        l1::write(&mut meta, file, IGNORE_NONE, l1_offset, &l1)?;
    }
    // Every cluster reached gains the snapshot's reference; the COPIED flags go.
    let l1_modified = refcounts::update(&mut meta, file, &mut l1, 1)?;
    meta.flush(file)?;
    if l1_modified {
        let active = meta.g.l1_table_offset;
        l1::write(&mut meta, file, ACTIVE_L1, active, &l1)?;
        meta.l1 = l1;
        meta.l1_changed();
    }
    let snapshot = Snapshot {
        id,
        name: name_bytes,
        l1_table_offset: l1_offset,
        l1_size: l1_bytes / 8,
        vm_state_size: 0,
        // QEMU stores the seconds in 32 bits, and microseconds as nanoseconds.
        date_sec: now.as_secs() as u32,
        date_nsec: now.subsec_micros() * 1000,
        vm_clock_nsec: 0,
        disk_size: Some(meta.g.size),
        icount: Some(0),
        unknown_extra: Vec::new(),
    };
    let mut entries = table.entries;
    entries.push(snapshot);
    table::write(&mut meta, file, &entries, table.size)?;
    meta.flush(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoul_as_c() {
        assert_eq!(strtoul(b"12"), 12);
        assert_eq!(strtoul(b"  7abc"), 7);
        assert_eq!(strtoul(b"abc"), 0);
        assert_eq!(strtoul(b""), 0);
        assert_eq!(strtoul(b"+3"), 3);
        assert_eq!(strtoul(b"-1"), u64::MAX);
        assert_eq!(strtoul(b"99999999999999999999999"), u64::MAX);
    }
}
