//! One run of the check: its state, counters and messages, and the order of its passes (QEMU's
//! `qcow2_check_refcounts` and `qcow2_co_check_locked`).

use blk_core::{CheckReport, HostFile, RepairMode, Result};

use crate::image::header::Header;

use super::bitmaps::BitmapDirectory;
use super::expected::{ExpectedRefcounts, TooLarge};
use super::layout::{decode_be64, read_padded, Layout, L1_OFFSET_MASK};
use super::snapshots::SnapshotTable;
use super::stored::StoredRefcounts;
use crate::snapshots::table::TableRepairs;

/// Byte offset of the header's `nb_snapshots` field.
const NB_SNAPSHOTS_OFFSET: u64 = 60;

/// At most this many problem lines are kept in the report (a hostile image could produce millions).
pub(super) const MAX_MESSAGES: usize = 10_000;

/// QEMU's `BdrvCheckResult` counters (copied and restored between passes as QEMU does).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
}

/// What QEMU's `BdrvCheckMode` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fix {
    pub leaks: bool,
    pub errors: bool,
}

impl Fix {
    pub const NONE: Fix = Fix {
        leaks: false,
        errors: false,
    };

    pub fn from_mode(mode: RepairMode) -> Fix {
        match mode {
            RepairMode::None => Fix::NONE,
            RepairMode::Leaks => Fix {
                leaks: true,
                errors: false,
            },
            RepairMode::All => Fix {
                leaks: true,
                errors: true,
            },
        }
    }

    pub fn any(self) -> bool {
        self.leaks || self.errors
    }
}

/// The check stopped early (QEMU returns -errno from `qcow2_check_refcounts`).
#[derive(Debug)]
pub(super) struct Stop;

/// What the run changed on disk, so the engine can drop or reload what it holds in memory.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Changes {
    /// Refcount blocks or L2 tables were written.
    pub tables: bool,
    /// Entries of the active L1 table were rewritten.
    pub l1: bool,
    /// A new refcount table replaced the old one (header fields changed).
    pub refcount_table: bool,
    /// The file was extended.
    pub file_length: bool,
    /// The check found the image clean after repairing: the dirty and corrupt bits may be cleared.
    pub mark_clean: bool,
    /// Snapshots were dropped from the end of the table (the header's count was rewritten).
    pub snapshot_count: bool,
    /// The snapshot table must be rewritten (QEMU's `qcow2_check_fix_snapshot_table`) to fix this many
    /// corruptions, already counted as fixed: the engine undoes that if the rewrite fails.
    pub snapshot_rewrite: u64,
}

/// The state of one check run.
pub(super) struct Checker<'a> {
    pub file: &'a HostFile,
    pub file_len: u64,
    /// The file's length when the check started (repairs extend it by a bounded amount).
    pub start_len: u64,
    pub layout: Layout,
    pub res: Counters,
    pub messages: Vec<String>,
    pub dropped_messages: u64,
    pub stored: StoredRefcounts,
    /// The active L1 table (raw entries), kept up to date with repairs.
    pub l1: Vec<u64>,
    pub snapshots: SnapshotTable,
    pub changes: Changes,
    /// Where the used area ends (set when the refcount comparison ran).
    pub image_end_offset: Option<u64>,
    /// The persistent bitmaps' directory, when QEMU would read it.
    pub bitmaps: Option<BitmapDirectory>,
}

impl<'a> Checker<'a> {
    /// Reads what the check needs from `file` (the engine has flushed its caches) for the image `header`
    /// describes.
    pub fn new(file: &'a HostFile, header: &Header) -> Result<Checker<'a>> {
        let layout = Layout::from_header(header)?;
        let file_len = file.len()?;
        let stored = StoredRefcounts::read(file, file_len, &layout)?;
        let l1_bytes = usize::try_from(layout.l1_size * 8).unwrap_or(0);
        let l1 = decode_be64(&read_padded(
            file,
            file_len,
            layout.l1_table_offset,
            l1_bytes,
        )?);
        Ok(Checker {
            file,
            file_len,
            start_len: file_len,
            layout,
            res: Counters::default(),
            messages: Vec::new(),
            dropped_messages: 0,
            stored,
            l1,
            snapshots: SnapshotTable::default(),
            changes: Changes::default(),
            image_end_offset: None,
            bitmaps: BitmapDirectory::from_header(header),
        })
    }

    /// Records one of qemu's stderr lines.
    pub fn say(&mut self, line: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(line);
        } else {
            self.dropped_messages += 1;
        }
    }

    /// Clusters in the file now.
    pub fn file_clusters(&self) -> u64 {
        self.layout.size_to_clusters(self.file_len)
    }

    /// Counts one reference to every cluster of `offset..offset + size` (QEMU's `qcow2_inc_refcounts_imrt`).
    pub fn inc(
        &mut self,
        expected: &mut ExpectedRefcounts,
        offset: u64,
        size: u64,
    ) -> std::result::Result<(), Stop> {
        if size == 0 {
            return Ok(());
        }
        let cs = self.layout.cluster_size;
        // The last cluster may be partly past the end of the file, never a whole cluster (QEMU 10).
        if offset.saturating_add(size) >= self.file_len.saturating_add(cs) {
            self.say(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: \
                 offset 0x{offset:x} size 0x{size:x}"
            ));
            self.res.corruptions += 1;
            return Ok(());
        }
        let first = offset / cs;
        let last = offset.saturating_add(size - 1) / cs;
        let max = self.layout.refcount_max();
        for cluster in first..=last {
            let count = expected.get(cluster);
            if count >= max {
                self.say(format!(
                    "ERROR: overflow cluster offset=0x{:x}",
                    cluster * cs
                ));
                self.say(
                    "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a \
                     clean copy if the image cannot be opened for writing"
                        .to_string(),
                );
                self.res.corruptions += 1;
                continue;
            }
            if let Err(TooLarge { cluster }) = expected.set(cluster, count + 1) {
                self.say(format!(
                    "ERROR: cluster {cluster} (offset 0x{:x}) is too far past the end of the image to be checked",
                    cluster.saturating_mul(cs)
                ));
                self.res.check_errors += 1;
                return Err(Stop);
            }
        }
        Ok(())
    }

    /// QEMU's `qcow2_check_refcounts`: returns Err when the check could not complete.
    pub fn check_refcounts(&mut self, fix: Fix) -> std::result::Result<(), Stop> {
        let nb_clusters = self.file_clusters();
        if nb_clusters > i32::MAX as u64 {
            self.res.check_errors += 1;
            self.say("ERROR: the image file is too large to be checked".to_string());
            return Err(Stop);
        }
        self.res.total_clusters = self.layout.size_to_clusters(self.layout.virtual_size);
        let mut expected = ExpectedRefcounts::new(nb_clusters);
        let mut rebuild = false;
        self.calculate_refcounts(fix, &mut rebuild, &mut expected)?;

        let pre_compare = self.res;
        let mut highest = self.compare_refcounts(Fix::NONE, &mut rebuild, &expected);

        if rebuild && fix.errors {
            let old = self.res;
            let mut fresh_leaks = 0;
            self.say("Rebuilding refcount structure".to_string());
            self.rebuild_refcount_structure(&mut expected)?;
            self.res.corruptions = 0;
            self.res.leaks = 0;
            rebuild = false;
            expected.clear();
            self.calculate_refcounts(Fix::NONE, &mut rebuild, &mut expected)?;
            if fix.leaks {
                let saved = self.res;
                self.res = Counters::default();
                highest = self.compare_refcounts(
                    Fix {
                        leaks: true,
                        errors: false,
                    },
                    &mut rebuild,
                    &expected,
                );
                if rebuild {
                    self.say("ERROR rebuilt refcount structure is still broken".to_string());
                }
                fresh_leaks = self.res.leaks;
                self.res = saved;
            }
            if self.res.corruptions < old.corruptions {
                self.res.corruptions_fixed += old.corruptions - self.res.corruptions;
            }
            if self.res.leaks < old.leaks {
                self.res.leaks_fixed += old.leaks - self.res.leaks;
            }
            self.res.leaks += fresh_leaks;
        } else if fix.any() {
            if rebuild {
                self.say("ERROR need to rebuild refcount structures".to_string());
                self.res.check_errors += 1;
                return Err(Stop);
            }
            if self.res.leaks > 0 || self.res.corruptions > 0 {
                self.res = pre_compare;
                highest = self.compare_refcounts(fix, &mut rebuild, &expected);
            }
        }

        self.check_oflag_copied(fix)?;
        self.image_end_offset = Some((highest + 1) * self.layout.cluster_size);
        Ok(())
    }

    /// Which metadata `offset..offset + len` overlaps, if any (QEMU's `qcow2_check_metadata_overlap` for
    /// the structures the check knows; `ignore_l2` skips the active L2 tables).
    pub fn overlaps_metadata(
        &self,
        offset: u64,
        len: u64,
        ignore_l2: bool,
    ) -> Option<&'static str> {
        let cs = self.layout.cluster_size;
        if len == 0 {
            return None;
        }
        if offset < cs {
            return Some("qcow2_header");
        }
        let start = offset - offset % cs;
        let end = offset.saturating_add(len).div_ceil(cs).saturating_mul(cs);
        let hits = |o: u64, l: u64| l != 0 && o < end && start < o.saturating_add(l);
        if hits(self.layout.l1_table_offset, self.layout.l1_size * 8) {
            return Some("active L1 table");
        }
        if hits(
            self.layout.refcount_table_offset,
            self.layout.refcount_table_entries * 8,
        ) {
            return Some("refcount table");
        }
        if hits(self.layout.snapshots_offset, self.snapshots.size) {
            return Some("snapshot table");
        }
        if self
            .snapshots
            .entries
            .iter()
            .any(|sn| hits(sn.l1_table_offset, sn.l1_size.saturating_mul(8)))
        {
            return Some("inactive L1 table");
        }
        if !ignore_l2
            && self
                .l1
                .iter()
                .any(|&e| e & L1_OFFSET_MASK != 0 && hits(e & L1_OFFSET_MASK, cs))
        {
            return Some("active L2 table");
        }
        if self
            .stored
            .table
            .iter()
            .any(|&e| e & !511 != 0 && hits(e & !511, cs))
        {
            return Some("refcount block");
        }
        None
    }

    /// QEMU's `qcow2_check_read_snapshot_table` after a repairing read: the messages, the corruptions, the
    /// reduced snapshot count written to the header (synced) at once, and the rewrite of the table (QEMU's
    /// `qcow2_check_fix_snapshot_table`, done by the engine with its allocator after the refcounts are
    /// repaired: `Changes::snapshot_rewrite`) counted as fixed. False when the header write failed.
    fn repaired_snapshot_table(&mut self, repairs: TableRepairs) -> bool {
        for line in repairs.messages {
            self.say(line);
        }
        if repairs.overhanging > 0 {
            let count = self.snapshots.entries.len() as u32;
            let written = self
                .file
                .write_all_at(NB_SNAPSHOTS_OFFSET, &count.to_be_bytes())
                .and_then(|()| self.file.sync_data());
            if let Err(e) = written {
                self.say(format!(
                    "ERROR failed to update the snapshot count in the image header: {e}"
                ));
                self.res.check_errors += 1;
                return false;
            }
            self.layout.nb_snapshots = u64::from(count);
            self.res.corruptions_fixed += repairs.overhanging;
            self.changes.snapshot_count = true;
        }
        if repairs.extra_data_dropped > 0 {
            self.res.corruptions_fixed += repairs.extra_data_dropped;
            self.changes.snapshot_rewrite = repairs.extra_data_dropped;
        }
        true
    }

    /// QEMU's `qcow2_co_check_locked`: the whole check, then whether the image may be marked clean.
    pub fn run(&mut self, fix: Fix) -> CheckReport {
        let mut repairs = TableRepairs::default();
        let read = SnapshotTable::read(
            self.file,
            self.file_len,
            &self.layout,
            fix.errors.then_some(&mut repairs),
        );
        let completed = match read {
            Ok(table) => {
                self.snapshots = table;
                self.repaired_snapshot_table(repairs) && self.check_refcounts(fix).is_ok()
            }
            Err(message) => {
                self.say(format!("Failed to read the snapshot table: {message}"));
                self.res.check_errors += 1;
                false
            }
        };
        if completed && fix.any() && self.res.check_errors == 0 && self.res.corruptions == 0 {
            self.changes.mark_clean = true;
        }
        if self.dropped_messages > 0 {
            let dropped = self.dropped_messages;
            self.messages
                .push(format!("({dropped} more messages not shown)"));
        }
        let nonzero = |v: u64| Some(v).filter(|&v| v != 0);
        CheckReport {
            corruptions: self.res.corruptions,
            leaks: self.res.leaks,
            check_errors: self.res.check_errors,
            corruptions_fixed: self.res.corruptions_fixed,
            leaks_fixed: self.res.leaks_fixed,
            image_end_offset: if completed {
                self.image_end_offset
            } else {
                None
            },
            total_clusters: nonzero(self.res.total_clusters),
            allocated_clusters: nonzero(self.res.allocated_clusters),
            fragmented_clusters: nonzero(self.res.fragmented_clusters),
            compressed_clusters: nonzero(self.res.compressed_clusters),
            messages: std::mem::take(&mut self.messages),
            stopped: !completed,
        }
    }
}
