//! Discards (QEMU's: whole clusters only, partial-cluster discards are ignored; v3 images get the zero flag,
//! v2 ones without backing file lose the cluster; with extended L2 entries the cluster becomes unallocated with
//! every subcluster reading as zeros), and freeing what replaced entries referenced: after the new entries reached the disk (one flush
//! per batch), the references drop and the freed host clusters are punched (in an external data file:
//! zeroed, so a raw data file keeps reading as the guest does).

use blk_core::{check_range, Result};

use crate::image::Qcow2;
use crate::metadata::subclusters::{zero_range, SUBCLUSTERS};
use crate::metadata::tables::{L2Entry, ZERO};
use crate::metadata::Metadata;

/// Why clusters are freed: QEMU's discard types, which decide whether the freed host clusters are discarded
/// (punched) from the image file too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freed {
    /// By a guest discard or write-zeroes (`QCOW2_DISCARD_REQUEST`): punched unless the open said
    /// `pass-discard-request=off`.
    Request,
    /// Always punched (`QCOW2_DISCARD_ALWAYS`: the tail a shrink discards).
    Always,
}

/// Whether replacing an entry must drop a reference to what it pointed to.
pub(crate) fn holds_reference(entry: L2Entry) -> bool {
    matches!(
        entry,
        L2Entry::Data { .. } | L2Entry::Compressed { .. } | L2Entry::Zero { host: Some(_), .. }
    )
}

impl Qcow2 {
    /// Drops the references of replaced entries (after their L2 tables reached the disk: one flush for the
    /// whole batch) and punches the freed host clusters, contiguous ones in one call, when `why` passes
    /// discards to the file. Runs under the lock, so no allocation can take a freed cluster before its punch.
    pub(crate) fn release_all(
        &self,
        meta: &mut Metadata,
        released: Vec<L2Entry>,
        why: Freed,
    ) -> Result<()> {
        if released.is_empty() {
            return Ok(());
        }
        let punch = why == Freed::Always || self.shared.pass_discard_request;
        let file = &self.shared.file;
        let cs = self.cluster_size();
        meta.flush(file)?;
        // Freed host ranges to punch, (start, end), merged when contiguous.
        let mut punches: Vec<(u64, u64)> = Vec::new();
        let mut result = Ok(());
        for entry in released {
            if let Err(e) = meta.release(file, entry) {
                result = Err(e);
                break;
            }
            if let L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } = entry
            {
                if self.shared.data_file.is_some() {
                    self.zero_data_cluster(host);
                    continue;
                }
                if !punch {
                    continue;
                }
                match meta.refcount(file, host >> self.shared.geometry.cluster_bits) {
                    Ok(0) => match punches.last_mut() {
                        Some((_, end)) if *end == host => *end = host + cs,
                        _ => punches.push((host, host + cs)),
                    },
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        for (start, end) in punches {
            // A failed punch only leaves the freed clusters' old bytes on the host.
            let _ = file.punch_hole(start, end - start);
        }
        result
    }

    pub(crate) fn discard_impl(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.shared.geometry.size;
        check_range(offset, len, size)?;
        let cs = self.cluster_size();
        let start = offset.div_ceil(cs) * cs;
        let mut end = (offset + len) / cs * cs;
        if offset + len == size && size % cs != 0 && offset <= end {
            end = size;
        }
        if start >= end {
            return Ok(());
        }
        let file = &self.shared.file;
        let v3 = self.shared.geometry.version >= 3;
        if !v3 && self.shared.backing.is_some() {
            // QEMU refuses discards on v2 images with a backing file (ENOTSUP, which its block layer turns
            // into success): without the zero flag, unallocating would expose the backing file's data.
            return Ok(());
        }
        let first = start / cs;
        let last = end.div_ceil(cs);
        if self.shared.geometry.extended_l2 {
            return self.discard_extended(first, last);
        }
        let mut gc = first;
        while gc < last {
            let meta = self.lock_metadata();
            let mut meta = self.wait_cluster(meta, gc);
            let mut released = Vec::new();
            // One L2 table's worth per lock hold.
            let stop = ((gc / self.shared.geometry.l2_entries + 1)
                * self.shared.geometry.l2_entries)
                .min(last);
            let mut changed = || -> Result<()> {
                for c in gc..stop {
                    if meta.in_flight.contains(&c) {
                        continue;
                    }
                    let entry = self.lookup_for_update(&mut meta, c)?;
                    let new = match entry {
                        L2Entry::Unallocated if self.shared.backing.is_some() && v3 => ZERO,
                        L2Entry::Data { .. } | L2Entry::Compressed { .. } => {
                            if v3 {
                                ZERO
                            } else {
                                0
                            }
                        }
                        _ => continue,
                    };
                    meta.set_l2_entry(file, c, new)?;
                    if holds_reference(entry) {
                        released.push(entry);
                    }
                }
                Ok(())
            };
            // A bad entry stops the discard there; what was changed before it is still released.
            let result = changed();
            self.release_all(&mut meta, released, Freed::Request)?;
            result?;
            gc = stop;
        }
        Ok(())
    }

    /// Discards whole clusters as QEMU does with extended L2 entries: an allocated cluster (or any, with a
    /// backing file) becomes unallocated with every subcluster reading as zeros.
    pub(crate) fn discard_extended(&self, first: u64, last: u64) -> Result<()> {
        let file = &self.shared.file;
        for c in first..last {
            let meta = self.lock_metadata();
            let mut meta = self.wait_cluster(meta, c);
            let (entry, bitmap) = self.lookup_with_bitmap_for_update(&mut meta, c)?;
            let allocated = !matches!(
                entry,
                L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
            );
            if !(allocated || self.shared.backing.is_some()) {
                continue;
            }
            let raw = meta.l2_entry(file, c)?;
            let all_zero = zero_range(0, SUBCLUSTERS);
            if raw == 0 && bitmap == all_zero {
                continue;
            }
            meta.set_l2_entry(file, c, 0)?;
            meta.set_l2_bitmap(file, c, all_zero)?;
            self.release_all(
                &mut meta,
                if allocated { vec![entry] } else { Vec::new() },
                Freed::Request,
            )?;
        }
        Ok(())
    }

    /// Zeroes a freed data cluster in the data file (QEMU discards it there), so a raw data file keeps
    /// reading as the guest does. Errors are ignored: the qcow2 metadata already says the range is zero.
    pub(crate) fn zero_data_cluster(&self, host: u64) {
        if let Some(data) = &self.shared.data_file {
            let cs = self.shared.geometry.cluster_size;
            let len = cs.min(data.disk.logical_size().saturating_sub(host));
            if len > 0 {
                let _ = data.disk.write_zeroes(host, len, true);
            }
        }
    }

    /// Zeroes `len` bytes at host `host` of the external data file (subclusters that became zero).
    pub(crate) fn zero_data_range(&self, host: u64, len: u64) {
        if let Some(data) = &self.shared.data_file {
            let len = len.min(data.disk.logical_size().saturating_sub(host));
            if len > 0 {
                let _ = data.disk.write_zeroes(host, len, true);
            }
        }
    }
}
