//! Consistency check and repair, with QEMU's semantics (`block/qcow2-refcount.c`, `qcow2_check_refcounts`):
//! the expected refcount of every host cluster is rebuilt from the header, the L1 and L2 tables, the snapshot
//! table and the snapshots' tables, the refcount table and its blocks, and compressed clusters (their sector
//! ranges), then compared with the stored refcounts: stored > expected is a leak, stored < expected a
//! corruption. Misaligned or reserved-bit entries, refcount blocks outside the image and OFLAG_COPIED
//! mismatches are reported as qemu does, with qemu's message lines and counters.
//!
//! External data files (incompatible bit 2, QEMU's `has_data_file`): data and preallocated zero clusters
//! live in the data file, so they are not counted against the image file (their offsets are data-file
//! offsets, not bounded by the image file), their refcount is taken as 1 for the OFLAG_COPIED check, an
//! L2 entry with offset 0 and OFLAG_COPIED is the data file's first cluster (not unallocated), and
//! compressed clusters and snapshots are corruptions (reported, not repaired, as QEMU does).
//!
//! Repair: [`RepairMode::Leaks`] lowers leaked refcounts; [`RepairMode::All`] also raises refcounts that are
//! too low, rebuilds the whole refcount structure (new refcount blocks and table in free clusters, the old
//! ones then freed as leaks) when a refcount in use is 0 or a refcount block is bad, fixes OFLAG_COPIED, and
//! clears the dirty and corrupt bits when nothing is left to fix.
//!
//! Locking: the check holds the image's metadata lock from start to end (after writing back the caches), so
//! it runs with exclusive access to the metadata, like QEMU's, while other handles' requests wait. It starts
//! only at a moment when no write is between allocating clusters and linking them into an L2 table (those
//! clusters would look leaked), waiting for one if needed; data requests already past their lookup may still
//! move guest data, which the check never touches. After a
//! repair the engine's caches are dropped and its L1 and refcount tables replaced with the repaired ones.
//!
//! Bounds: the table of expected refcounts covers the file plus at most
//! [`expected::MAX_CLUSTERS_PAST_END`] clusters referenced past its end (beyond that the check stops with a
//! check error, where QEMU would try to allocate and fail); at most [`checker::MAX_MESSAGES`] message lines
//! are kept.
//!
//! # What the check uses of the image
//!
//! The check walks and repairs the metadata through these crate-internal items (kept stable):
//!
//! - `Qcow2::host_file`: the image's host file (metadata and data I/O); `Qcow2::geometry`: the fixed layout
//!   (`Geometry`: cluster bits and size, virtual size, L1 size and offset, refcount order, entries per
//!   refcount block, version; `extended_l2` / `data_file` / `data_file_raw` tell the image's features).
//! - `Qcow2::lock_metadata`: the one metadata lock, held for the whole check; the image's `Mapper` methods
//!   must not be called while it is held (they take it too).
//! - `Metadata::header()`: the current `Header` (refcount table offset and clusters, feature bits, snapshot
//!   count and offset, backing name...); `Metadata::l1_table()`: the L1 entries (raw, host order; decode with
//!   `tables::L1_OFFSET_MASK` and `tables::COPIED`); `Metadata::refcount_table()`: the refcount table entries.
//! - `Metadata::read_l2_table(file, l2_offset)`: an L2 table's raw entries through the cache (with extended
//!   L2 entries the 64-bit entries without their bitmaps), decoded with `tables::L2Entry::decode`;
//!   `Metadata::l2_entry_and_bitmap` reads an entry with its subcluster bitmap.
//! - `Metadata::refcount(file, cluster)`, `Metadata::set_refcount(file, cluster, value)`: a cluster's
//!   refcount; setting adds refcount blocks and grows the refcount table as needed.
//! - `Metadata::flush(file)`: both caches written back (refcounts first) and synced;
//!   `Metadata::invalidate_caches()`: every cached table dropped (after `flush`, or after writing tables
//!   directly to the file); `Metadata::reset_allocator()`: the free-space hint forgotten after refcounts were
//!   rewritten.
//! - `Metadata::update_incompatible(file, set, clear)`: incompatible bits set and cleared in the header on
//!   disk (`INCOMPAT_DIRTY`, `INCOMPAT_CORRUPT`).
//!
//! | module | what it holds |
//! |---|---|
//! | `layout` | the header fields and entry formats the check reads |
//! | `expected` | the in-memory table of expected refcounts |
//! | `stored` | the refcounts as stored on disk, read and repaired |
//! | `snapshots` | the snapshot table (each snapshot's L1 table) |
//! | `bitmaps` | persistent dirty bitmaps (directory, tables, their clusters) |
//! | `checker` | one run: counters, messages and the order of the passes |
//! | `walk` | counting references from every table |
//! | `compare` | comparing and repairing refcounts, OFLAG_COPIED |
//! | `rebuild` | rebuilding the refcount structure |

mod bitmaps;
mod checker;
mod compare;
mod expected;
mod layout;
mod rebuild;
mod snapshots;
mod stored;
mod walk;

use blk_core::{CheckReport, Error, ErrorKind, Operation, RepairMode, Result};

use crate::image::features::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::snapshots::table;
use crate::{Qcow2, FORMAT_NAME};

use checker::{Checker, Fix};

/// How many times (1 ms apart) the check looks for a moment without allocating writes before giving up.
const QUIESCE_ATTEMPTS: u32 = 10_000;

/// Checks (and repairs as `repair` allows) the image's metadata.
pub(crate) fn run(image: &Qcow2, repair: RepairMode) -> Result<CheckReport> {
    let file = image.host_file();
    let context = |e: Error| {
        e.with_format(FORMAT_NAME)
            .with_path(file.path())
            .with_operation(Operation::Check)
    };
    if repair != RepairMode::None && file.is_read_only() {
        return Err(context(Error::new(
            ErrorKind::ReadOnly,
            "repairing needs the image opened writable",
        )));
    }
    // Wait until no writer is between allocating clusters and linking them (their refcounts are already
    // counted but nothing references them yet: they would look leaked, and freeing them would corrupt).
    let mut meta = image.lock_metadata();
    let mut waited = 0;
    while !(meta.in_flight.is_empty() && meta.reserved.is_empty()) {
        drop(meta);
        waited += 1;
        if waited > QUIESCE_ATTEMPTS {
            return Err(context(Error::new(
                ErrorKind::Io,
                "the image stayed busy with allocating writes; try the check again",
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        meta = image.lock_metadata();
    }
    if !file.is_read_only() {
        // Deferred refcount blocks (lazy refcounts) included: the check reads them from the disk.
        meta.flush_all(file).map_err(context)?;
    }
    let mut checker = Checker::new(file, meta.header()).map_err(context)?;
    let report = checker.run(Fix::from_mode(repair));
    let mut changes = checker.changes;
    if changes.tables || changes.l1 || changes.refcount_table || changes.file_length {
        meta.invalidate_caches();
        meta.reset_allocator();
    }
    if changes.file_length || changes.refcount_table {
        // The repair extended the file (a refcount block kept where it lay, or a rebuilt structure appended).
        let cs = checker.layout.cluster_size;
        meta.file_end = meta.file_end.max(checker.file_len.div_ceil(cs) * cs);
    }
    if changes.l1 {
        meta.l1 = checker.l1.clone();
        meta.l1_changed();
    }
    if changes.refcount_table {
        let clusters = checker
            .layout
            .size_to_clusters(checker.layout.refcount_table_entries * 8);
        meta.header.refcount_table_offset = checker.layout.refcount_table_offset;
        meta.header.refcount_table_clusters = u32::try_from(clusters).unwrap_or(u32::MAX);
        meta.refcount_table = std::mem::take(&mut checker.stored.table);
        meta.refcount_table_changed();
    }
    if changes.snapshot_count {
        meta.header.nb_snapshots = u32::try_from(checker.layout.nb_snapshots).unwrap_or(u32::MAX);
    }
    let mut report = report;
    if changes.snapshot_rewrite > 0 {
        // QEMU's `qcow2_check_fix_snapshot_table`: the table rewritten (new clusters, the old ones freed)
        // with the refcounts repaired; the corruptions it fixes were counted as fixed.
        let entries = std::mem::take(&mut checker.snapshots.parsed);
        if let Err(e) = table::write(&mut meta, file, &entries, checker.snapshots.size) {
            let n = changes.snapshot_rewrite;
            report.check_errors += 1;
            report.corruptions += n;
            report.corruptions_fixed -= n;
            report
                .messages
                .push(format!("ERROR failed to update snapshot table: {e}"));
            changes.mark_clean = false;
        }
    }
    if changes.mark_clean {
        // A lazy-refcounts image open for writing stays dirty while open (the engine set the bit and clears it
        // when closing): only the corrupt bit goes then.
        let clear = if image.shared.set_dirty {
            INCOMPAT_CORRUPT
        } else {
            INCOMPAT_DIRTY | INCOMPAT_CORRUPT
        };
        meta.update_incompatible(file, 0, clear).map_err(context)?;
    }
    if changes.tables || changes.l1 || changes.refcount_table || changes.file_length {
        file.sync_data().map_err(context)?;
    }
    Ok(report)
}
