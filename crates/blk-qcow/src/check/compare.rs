//! Comparing expected with stored refcounts, and the OFLAG_COPIED check (QEMU's `compare_refcounts` and
//! `check_oflag_copied`).

use super::checker::{Checker, Fix, Stop};
use super::expected::ExpectedRefcounts;
use super::layout::{
    decode_be64, read_padded, ClusterType, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COPIED,
};

impl Checker<'_> {
    /// Compares every cluster's stored refcount with the expected one, repairing as `fix` allows; returns the
    /// highest cluster in use.
    pub(super) fn compare_refcounts(
        &mut self,
        fix: Fix,
        rebuild: &mut bool,
        expected: &ExpectedRefcounts,
    ) -> u64 {
        let mut highest = 0;
        let mut cluster = 0;
        while cluster < expected.len() {
            // Where the stored refcounts are zeros and nothing is expected, both agree: skip to the next
            // stored block or expected reference.
            if let Some(end) = self.stored.end_of_zeros(self.file, self.file_len, cluster) {
                let next_used = expected.next_used(cluster).unwrap_or(u64::MAX);
                let skip_to = end.min(next_used).min(expected.len());
                if skip_to > cluster {
                    cluster = skip_to;
                    continue;
                }
            }
            if self.compare_cluster(cluster, fix, rebuild, expected) {
                highest = cluster;
            }
            cluster += 1;
        }
        highest
    }

    /// Compares (and repairs) one cluster's refcount; returns whether the cluster is in use (either count
    /// nonzero).
    fn compare_cluster(
        &mut self,
        cluster: u64,
        fix: Fix,
        rebuild: &mut bool,
        expected: &ExpectedRefcounts,
    ) -> bool {
        let stored = match self.stored.get(self.file, self.file_len, cluster) {
            Ok(v) => v,
            Err(e) => {
                self.say(format!("Can't get refcount for cluster {cluster}: {e}"));
                self.res.check_errors += 1;
                return false;
            }
        };
        let wanted = expected.get(cluster);
        let used = stored > 0 || wanted > 0;
        if stored == wanted {
            return used;
        }
        #[derive(PartialEq)]
        enum Fixing {
            No,
            Leak,
            Corruption,
        }
        let fixing = if stored == 0 {
            *rebuild = true;
            Fixing::No
        } else if stored > wanted && fix.leaks {
            Fixing::Leak
        } else if stored < wanted && fix.errors {
            Fixing::Corruption
        } else {
            Fixing::No
        };
        let verb = if fixing != Fixing::No {
            "Repairing"
        } else if stored < wanted {
            "ERROR"
        } else {
            "Leaked"
        };
        self.say(format!(
            "{verb} cluster {cluster} refcount={stored} reference={wanted}"
        ));
        if fixing != Fixing::No && self.store_refcount(cluster, wanted) {
            match fixing {
                Fixing::Leak => self.res.leaks_fixed += 1,
                _ => self.res.corruptions_fixed += 1,
            }
        } else if stored < wanted {
            self.res.corruptions += 1;
        } else {
            self.res.leaks += 1;
        }
        used
    }

    /// Writes a repaired refcount; a cluster dropping to 0 is punched out of the file (QEMU discards it).
    fn store_refcount(&mut self, cluster: u64, value: u64) -> bool {
        match self.stored.set(self.file, self.file_len, cluster, value) {
            Ok(true) => {
                self.changes.tables = true;
                let cs = self.layout.cluster_size;
                let offset = cluster * cs;
                if value == 0 && offset.saturating_add(cs) <= self.file_len {
                    // Best effort, as QEMU's discard: the refcount is already right either way.
                    let _ = self.file.punch_hole(offset, cs);
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.say(format!(
                    "ERROR: could not update the refcount of cluster {cluster}: {e}"
                ));
                false
            }
        }
    }

    /// Checks that OFLAG_COPIED is set exactly on entries whose cluster has refcount 1.
    pub(super) fn check_oflag_copied(&mut self, fix: Fix) -> Result<(), Stop> {
        let repair = if fix.errors {
            true
        } else if fix.leaks {
            self.res.check_errors == 0 && self.res.corruptions == 0 && self.res.leaks == 0
        } else {
            false
        };
        let cs = self.layout.cluster_size;
        for l1_index in 0..self.l1.len() {
            let Some(&l1_entry) = self.l1.get(l1_index) else {
                break;
            };
            let l2_offset = l1_entry & L1_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let Ok(refcount) = self.stored.get(self.file, self.file_len, l2_offset / cs) else {
                continue;
            };
            if (refcount == 1) != (l1_entry & OFLAG_COPIED != 0) {
                self.res.corruptions += 1;
                let verb = if repair { "Repairing" } else { "ERROR" };
                self.say(format!(
                    "{verb} OFLAG_COPIED L2 cluster: l1_index={l1_index} l1_entry={l1_entry:x} refcount={refcount}"
                ));
                if repair {
                    let fixed = if refcount == 1 {
                        l1_entry | OFLAG_COPIED
                    } else {
                        l1_entry & !OFLAG_COPIED
                    };
                    self.write_l1_entry(l1_index, fixed)?;
                    self.res.corruptions -= 1;
                    self.res.corruptions_fixed += 1;
                }
            }
            let Ok(raw) = read_padded(
                self.file,
                self.file_len,
                l2_offset,
                usize::try_from(cs).unwrap_or(0),
            ) else {
                self.say("ERROR: Could not read L2 table: Input/output error".to_string());
                self.res.check_errors += 1;
                return Err(Stop);
            };
            let mut table = decode_be64(&raw);
            let mut dirty = 0u64;
            let stride = self.layout.l2_stride();
            for slot in table.iter_mut().step_by(stride) {
                let entry = *slot;
                if !matches!(
                    self.layout.cluster_type(entry),
                    ClusterType::Normal | ClusterType::ZeroAlloc
                ) {
                    continue;
                }
                // Clusters of an external data file are not refcounted: QEMU takes their refcount as 1.
                let refcount = if self.layout.data_file {
                    1
                } else {
                    let Ok(refcount) =
                        self.stored
                            .get(self.file, self.file_len, (entry & L2_OFFSET_MASK) / cs)
                    else {
                        continue;
                    };
                    refcount
                };
                if (refcount == 1) != (entry & OFLAG_COPIED != 0) {
                    self.res.corruptions += 1;
                    let verb = if repair { "Repairing" } else { "ERROR" };
                    self.say(format!(
                        "{verb} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={refcount}"
                    ));
                    if repair {
                        *slot = if refcount == 1 {
                            entry | OFLAG_COPIED
                        } else {
                            entry & !OFLAG_COPIED
                        };
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                if self.overlaps_metadata(l2_offset, cs, true).is_some()
                    || l2_offset.saturating_add(cs) > self.file_len
                {
                    self.say(
                        "ERROR: Could not write L2 table; metadata overlap check failed: Input/output error".to_string(),
                    );
                    self.res.check_errors += 1;
                    return Err(Stop);
                }
                let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
                if let Err(e) = self.file.write_all_at(l2_offset, &bytes) {
                    self.say(format!("ERROR: Could not write L2 table: {e}"));
                    self.res.check_errors += 1;
                    return Err(Stop);
                }
                self.changes.tables = true;
                self.res.corruptions -= dirty;
                self.res.corruptions_fixed += dirty;
            }
        }
        Ok(())
    }

    /// Rewrites one entry of the active L1 table, on disk and in the check's copy.
    fn write_l1_entry(&mut self, index: usize, value: u64) -> Result<(), Stop> {
        let at = self.layout.l1_table_offset + index as u64 * 8;
        let written = self
            .file
            .write_all_at(at, &value.to_be_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.say(format!("ERROR: could not write L1 entry {index}: {e}"));
            self.res.check_errors += 1;
            return Err(Stop);
        }
        if let Some(slot) = self.l1.get_mut(index) {
            *slot = value;
        }
        self.changes.l1 = true;
        Ok(())
    }
}
