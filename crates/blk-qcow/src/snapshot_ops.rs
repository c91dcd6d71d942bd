//! What creating, deleting and applying internal snapshots share: the preconditions, the walk that adds to the
//! refcounts of everything an L1 table reaches and recomputes the COPIED flags (QEMU's
//! `qcow2_update_snapshot_refcount`), reading a snapshot's L1 table, and rewriting the snapshot table (QEMU's
//! `qcow2_write_snapshots`).
//!
//! These are offline operations: each holds the metadata lock from start to end, and refuses to start while a
//! guest write is between its data write and its L2 link (the in-flight table is not empty). Guest I/O must
//! not run concurrently with them (a write that starts after would be served by the new tables, but a read
//! racing an apply may see either disk).

use blk_core::{Error, ErrorKind, HostFile, Result};

use crate::header::MAX_L1_BYTES;
use crate::metadata::{corrupt, read_zero_filled, Metadata};
use crate::qcow2::Qcow2;
use crate::snapshot_table::{serialize, Snapshot, SnapshotTable, MAX_TABLE_BYTES};
use crate::tables::{entry, set_entry, L2Entry, COPIED, L1_OFFSET_MASK};
use crate::FORMAT_NAME;

/// Byte offset of the header's `nb_snapshots` field (followed by `snapshots_offset`).
const NB_SNAPSHOTS_FIELD: u64 = 60;

/// An error of `kind` with the format's name.
pub(crate) fn op_error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message).with_format(FORMAT_NAME)
}

impl Qcow2 {
    /// Checks what every snapshot operation needs: a writable open, no external data file (QEMU refuses
    /// internal snapshots there: "Operation not supported"), no guest write in flight.
    pub(crate) fn snapshot_preconditions(&self, meta: &Metadata) -> Result<()> {
        self.writable(blk_core::Operation::Write, 0)?;
        if meta.g.data_file {
            return Err(op_error(
                ErrorKind::Unsupported,
                "Operation not supported: internal snapshots of an image with an external data file",
            ));
        }
        if !meta.in_flight.is_empty() {
            return Err(op_error(
                ErrorKind::InvalidInput,
                "snapshot operations need an image without guest I/O in progress",
            ));
        }
        Ok(())
    }
}

impl Metadata {
    /// The snapshot table, its own location checked (inside the used area, not over the header or the L1 /
    /// refcount tables), since rewriting it frees its clusters.
    pub(crate) fn read_snapshot_table(&self, file: &HostFile) -> Result<SnapshotTable> {
        let h = &self.header;
        let table = SnapshotTable::read(
            file,
            file.len()?,
            u64::from(h.nb_snapshots),
            h.snapshots_offset,
            self.g.cluster_size,
        )?;
        if table.size > 0 {
            let offset = h.snapshots_offset;
            if offset == 0
                || offset.saturating_add(table.size) > self.file_end
                || self.check_metadata_write(offset, table.size).is_err()
            {
                return Err(corrupt(
                    format!(
                        "snapshot table at {offset:#x} ({} bytes) lies outside the image or over other metadata",
                        table.size
                    ),
                    64,
                ));
            }
        }
        Ok(table)
    }

    /// Checks a snapshot's L1 table as QEMU's `qcow2_validate_table` does (at most 32 MiB, cluster-aligned)
    /// and that it lies inside the used area, not over the header or the active tables.
    pub(crate) fn check_snapshot_l1(&self, snapshot: &Snapshot) -> Result<()> {
        let offset = snapshot.l1_table_offset;
        let bad = |message: &str| {
            Err(corrupt(
                format!(
                    "Snapshot L1 table {message} (offset {offset:#x}, {} entries)",
                    snapshot.l1_size
                ),
                offset,
            ))
        };
        let bytes = snapshot.l1_size.saturating_mul(8);
        if bytes > MAX_L1_BYTES {
            return bad("too large");
        }
        if offset % self.g.cluster_size != 0 {
            return bad("offset invalid");
        }
        if bytes > 0
            && (offset == 0
                || offset.saturating_add(bytes) > self.file_end
                || self.check_metadata_write(offset, bytes).is_err())
        {
            return bad("lies outside the image or over other metadata");
        }
        Ok(())
    }

    /// A snapshot's L1 table (checked first), read from the disk.
    pub(crate) fn read_snapshot_l1(
        &self,
        file: &HostFile,
        snapshot: &Snapshot,
    ) -> Result<Vec<u64>> {
        self.check_snapshot_l1(snapshot)?;
        let bytes = read_zero_filled(
            file,
            snapshot.l1_table_offset,
            (snapshot.l1_size * 8) as usize,
        )?;
        Ok((0..snapshot.l1_size as usize)
            .map(|i| entry(&bytes, i))
            .collect())
    }

    /// Writes a whole L1 table at `offset` and syncs.
    pub(crate) fn write_l1_table(&self, file: &HostFile, offset: u64, l1: &[u64]) -> Result<()> {
        let mut bytes = vec![0u8; l1.len() * 8];
        for (i, &e) in l1.iter().enumerate() {
            set_entry(&mut bytes, i, e);
        }
        file.write_all_at(offset, &bytes)?;
        file.sync_data()
    }

    /// QEMU's `qcow2_update_snapshot_refcount`: adds `addend` (-1, 0 or 1) to the refcount of every L2 table
    /// `l1` reaches and of every cluster those tables reference (compressed data: every host cluster it
    /// spans), and sets the COPIED flag of each L2 entry (in the cache) and L1 entry (in `l1`) exactly when
    /// the refcount is then 1. Returns whether `l1` changed. L2 tables whose refcount drops to 0 are dropped
    /// from the cache (they are free). Every cluster is checked to lie inside the image before its refcount
    /// changes; an error part-way leaves at most leaked clusters (increments come first) or, for
    /// decrements, entries already released.
    pub(crate) fn update_snapshot_refcount(
        &mut self,
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
            self.check_table_location(l2_offset, "L2 table")?;
            let slot = self.l2_slot(file, l2_offset)?;
            let words: Vec<u64> = (0..self.g.l2_entries)
                .map(|i| entry(self.l2_cache.data(slot), self.g.l2_word(i)))
                .collect();
            for (i, &raw) in words.iter().enumerate() {
                let new = self.update_l2_entry(file, raw, addend)?;
                if new != raw {
                    let slot = self.l2_slot(file, l2_offset)?;
                    let word = self.g.l2_word(i as u64);
                    set_entry(self.l2_cache.data_mut(slot), word, new);
                }
            }
            let cluster = l2_offset >> self.g.cluster_bits;
            if addend != 0 {
                self.change_refcount(file, cluster, addend)?;
            }
            let refcount = self.refcount(file, cluster)?;
            if refcount == 0 {
                self.l2_cache.forget(l2_offset);
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
    fn update_l2_entry(&mut self, file: &HostFile, raw: u64, addend: i64) -> Result<u64> {
        let decoded = L2Entry::decode(raw, &self.g);
        let refcount = match decoded {
            L2Entry::Compressed { host, size } => {
                if addend != 0 {
                    self.check_release(file, decoded)?;
                    self.change_refcount_range(file, host, size, addend)?;
                }
                // Compressed clusters are never written in place.
                2
            }
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => {
                if host % self.g.cluster_size != 0 {
                    return Err(corrupt(
                        format!("cluster allocation offset {host:#x} unaligned"),
                        host,
                    ));
                }
                let cluster = host >> self.g.cluster_bits;
                if addend != 0 {
                    self.check_release(file, decoded)?;
                    self.change_refcount(file, cluster, addend)?;
                }
                self.refcount(file, cluster)?
            }
            L2Entry::Zero { host: None, .. } | L2Entry::Unallocated => 0,
        };
        Ok(if refcount == 1 {
            raw | COPIED
        } else {
            raw & !COPIED
        })
    }

    /// QEMU's `qcow2_write_snapshots`: writes `entries` as the new snapshot table in new clusters, flushes
    /// (refcounts included), points the header at it (synced), then frees the old table (`old_size` bytes at
    /// the header's current offset). With no entries the header gets offset 0 and nothing is allocated.
    pub(crate) fn write_snapshot_table(
        &mut self,
        file: &HostFile,
        entries: &[Snapshot],
        old_size: u64,
    ) -> Result<()> {
        let bytes = serialize(entries, self.g.size).ok_or_else(|| {
            op_error(
                ErrorKind::InvalidInput,
                format!("File too large: the snapshot table would exceed {MAX_TABLE_BYTES} bytes"),
            )
        })?;
        let count = u32::try_from(entries.len()).map_err(|_| {
            op_error(
                ErrorKind::InvalidInput,
                "File too large: too many snapshots",
            )
        })?;
        let cs = self.g.cluster_size;
        let new_offset = if bytes.is_empty() {
            0
        } else {
            let offset = self.allocate_clusters(file, (bytes.len() as u64).div_ceil(cs))?;
            self.flush(file)?;
            self.guard_metadata_write(file, offset, bytes.len() as u64)?;
            file.write_all_at(offset, &bytes)?;
            file.sync_data()?;
            offset
        };
        let mut field = [0u8; 12];
        field[..4].copy_from_slice(&count.to_be_bytes());
        field[4..].copy_from_slice(&new_offset.to_be_bytes());
        file.write_all_at(NB_SNAPSHOTS_FIELD, &field)?;
        file.sync_data()?;
        let old_offset = self.header.snapshots_offset;
        self.header.nb_snapshots = count;
        self.header.snapshots_offset = new_offset;
        if old_size > 0 {
            self.change_refcount_range(file, old_offset, old_size, -1)?;
        }
        Ok(())
    }
}
