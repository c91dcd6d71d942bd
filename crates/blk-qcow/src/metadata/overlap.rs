//! QEMU's overlap check (`qcow2_check_metadata_overlap`, block/qcow2-refcount.c) before every write: a write
//! that would land on metadata is prevented and, as QEMU's `qcow2_signal_corruption` does, the image is
//! marked corrupt (incompatible bit 1, v3) and every further write of this open is refused; reads go on.
//!
//! The kinds checked are QEMU's, in its order (the first hit names the error): the header (cluster 0), the
//! active L1 table, the refcount table, the snapshot table, the snapshots' L1 tables, the active L2 tables
//! (every L1 entry), the refcount blocks (every refcount-table entry), the snapshots' L2 tables (read from
//! the disk at each check, as QEMU does) and the bitmap directory. Which kinds are checked is QEMU's
//! `overlap-check` runtime option ([`OverlapCheck`]): `none`, `constant` (the kinds known without walking a
//! table), `cached` (QEMU's default: `constant` and the active L2 tables and refcount blocks, known from the
//! in-memory L1 and refcount tables) and `all` (`cached` and the snapshots' L2 tables).
//!
//! Who checks what (QEMU's `ign` argument: the kind being written is not a hit):
//!
//! | write | ignored kind |
//! |---|---|
//! | guest data (in place, allocated, copy-on-write, compressed), a cluster being freed | none |
//! | a new cluster (`allocate_clusters` hands it out unchecked; its writer checks it: an L2 table, a refcount block, the snapshot table, an L1 table of `resize` or `snapshot -c`) | none |
//! | an L2 table written back | active L2 |
//! | a refcount block written back | refcount block |
//! | an L1 entry or table | active L1 |
//! | a refcount-table entry | refcount table |
//!
//! # Cost
//!
//! The check runs under the metadata lock the mapping already holds (no lock of its own), allocates nothing
//! and reads nothing in `cached` mode: a compare against each fixed extent and each snapshot's L1 table,
//! then a binary search in a sorted index of the active L2 tables and refcount blocks (QEMU walks the L1 and
//! refcount tables instead: 2048 + 16 entries a write on an image of 1 TiB at 64 KiB clusters). The index
//! is rebuilt in place at the first check after the L1 or refcount table changed (a new L2 table or
//! refcount block: once per 512 MiB or 2 GiB of allocations at 64 KiB clusters); whoever changes either
//! table calls `l1_changed` / `refcount_table_changed`. docs/performance.md has the measurement.

use blk_core::{Error, HostFile, Result};

use crate::image::features::INCOMPAT_CORRUPT;
use crate::image::header::MAX_L1_BYTES;
use crate::image::Qcow2;
use crate::metadata::refcount::REFTABLE_OFFSET_MASK;
use crate::metadata::tables::{entry, L1_OFFSET_MASK};
use crate::metadata::{corrupt, read_zero_filled, Metadata};

/// The header (cluster 0).
pub(crate) const MAIN_HEADER: u32 = 1 << 0;
/// The active L1 table.
pub(crate) const ACTIVE_L1: u32 = 1 << 1;
/// An active L2 table.
pub(crate) const ACTIVE_L2: u32 = 1 << 2;
/// The refcount table.
pub(crate) const REFCOUNT_TABLE: u32 = 1 << 3;
/// A refcount block.
pub(crate) const REFCOUNT_BLOCK: u32 = 1 << 4;
/// The snapshot table.
pub(crate) const SNAPSHOT_TABLE: u32 = 1 << 5;
/// A snapshot's L1 table.
pub(crate) const INACTIVE_L1: u32 = 1 << 6;
/// A snapshot's L2 table.
pub(crate) const INACTIVE_L2: u32 = 1 << 7;
/// The bitmap directory.
pub(crate) const BITMAP_DIRECTORY: u32 = 1 << 8;

/// Nothing is an overlap.
pub(crate) const IGNORE_NONE: u32 = 0;

/// One kind of metadata QEMU's overlap check knows, switched on or off alone by the runtime option
/// `overlap-check.<name>` (on top of the `overlap-check` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapStructure {
    /// `main-header`: the header cluster.
    MainHeader,
    /// `active-l1`: the active L1 table.
    ActiveL1,
    /// `active-l2`: the active L2 tables.
    ActiveL2,
    /// `refcount-table`: the refcount table.
    RefcountTable,
    /// `refcount-block`: the refcount blocks.
    RefcountBlock,
    /// `snapshot-table`: the snapshot table.
    SnapshotTable,
    /// `inactive-l1`: the snapshots' L1 tables.
    InactiveL1,
    /// `inactive-l2`: the snapshots' L2 tables.
    InactiveL2,
    /// `bitmap-directory`: the persistent bitmaps' directory.
    BitmapDirectory,
}

impl OverlapStructure {
    /// Every structure, in QEMU's bit order.
    pub const ALL: [OverlapStructure; 9] = [
        OverlapStructure::MainHeader,
        OverlapStructure::ActiveL1,
        OverlapStructure::ActiveL2,
        OverlapStructure::RefcountTable,
        OverlapStructure::RefcountBlock,
        OverlapStructure::SnapshotTable,
        OverlapStructure::InactiveL1,
        OverlapStructure::InactiveL2,
        OverlapStructure::BitmapDirectory,
    ];

    /// QEMU's name (the option is `overlap-check.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            OverlapStructure::MainHeader => "main-header",
            OverlapStructure::ActiveL1 => "active-l1",
            OverlapStructure::ActiveL2 => "active-l2",
            OverlapStructure::RefcountTable => "refcount-table",
            OverlapStructure::RefcountBlock => "refcount-block",
            OverlapStructure::SnapshotTable => "snapshot-table",
            OverlapStructure::InactiveL1 => "inactive-l1",
            OverlapStructure::InactiveL2 => "inactive-l2",
            OverlapStructure::BitmapDirectory => "bitmap-directory",
        }
    }

    /// The structure named `name` (QEMU's name).
    pub fn parse(name: &str) -> Option<OverlapStructure> {
        OverlapStructure::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its bit among the kinds a check covers.
    pub(crate) fn kind(self) -> u32 {
        match self {
            OverlapStructure::MainHeader => MAIN_HEADER,
            OverlapStructure::ActiveL1 => ACTIVE_L1,
            OverlapStructure::ActiveL2 => ACTIVE_L2,
            OverlapStructure::RefcountTable => REFCOUNT_TABLE,
            OverlapStructure::RefcountBlock => REFCOUNT_BLOCK,
            OverlapStructure::SnapshotTable => SNAPSHOT_TABLE,
            OverlapStructure::InactiveL1 => INACTIVE_L1,
            OverlapStructure::InactiveL2 => INACTIVE_L2,
            OverlapStructure::BitmapDirectory => BITMAP_DIRECTORY,
        }
    }
}

/// QEMU's `overlap-check` runtime option: which metadata a write is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlapCheck {
    /// No check (QEMU's `none`).
    None,
    /// The header, the active L1 table, the refcount table, the snapshot table, the snapshots' L1 tables and
    /// the bitmap directory (QEMU's `constant`).
    Constant,
    /// `Constant` and the active L2 tables and refcount blocks (QEMU's `cached`, its default).
    #[default]
    Cached,
    /// `Cached` and the snapshots' L2 tables, read from the disk at each check (QEMU's `all`).
    All,
}

impl OverlapCheck {
    /// The kinds this mode checks.
    pub(crate) fn kinds(self) -> u32 {
        const CONSTANT: u32 = MAIN_HEADER
            | ACTIVE_L1
            | REFCOUNT_TABLE
            | SNAPSHOT_TABLE
            | INACTIVE_L1
            | BITMAP_DIRECTORY;
        match self {
            OverlapCheck::None => 0,
            OverlapCheck::Constant => CONSTANT,
            OverlapCheck::Cached => CONSTANT | ACTIVE_L2 | REFCOUNT_BLOCK,
            OverlapCheck::All => CONSTANT | ACTIVE_L2 | REFCOUNT_BLOCK | INACTIVE_L2,
        }
    }

    /// The kinds this mode checks with `switches` applied in order (each structure's check on or off, QEMU's
    /// `overlap-check.<structure>` options; the last word on a structure wins).
    pub(crate) fn kinds_with(self, switches: &[(OverlapStructure, bool)]) -> u32 {
        switches.iter().fold(self.kinds(), |kinds, &(s, on)| {
            if on {
                kinds | s.kind()
            } else {
                kinds & !s.kind()
            }
        })
    }

    /// The mode QEMU's option value `name` names (`none`, `constant`, `cached`, `all`).
    pub fn parse(name: &str) -> Option<OverlapCheck> {
        match name {
            "none" => Some(OverlapCheck::None),
            "constant" => Some(OverlapCheck::Constant),
            "cached" => Some(OverlapCheck::Cached),
            "all" => Some(OverlapCheck::All),
            _ => None,
        }
    }
}

/// QEMU's name of a kind (`metadata_ol_names`).
pub(crate) fn kind_name(kind: u32) -> &'static str {
    match kind {
        MAIN_HEADER => "qcow2_header",
        ACTIVE_L1 => "active L1 table",
        ACTIVE_L2 => "active L2 table",
        REFCOUNT_TABLE => "refcount table",
        REFCOUNT_BLOCK => "refcount block",
        SNAPSHOT_TABLE => "snapshot table",
        INACTIVE_L1 => "inactive L1 table",
        INACTIVE_L2 => "inactive L2 table",
        _ => "bitmap directory",
    }
}

/// The extents the check needs beyond the L1 and refcount tables, kept current by whoever changes them.
#[derive(Debug, Clone, Default)]
pub(crate) struct OverlapExtents {
    /// The kinds checked (`OverlapCheck::kinds`).
    pub(crate) kinds: u32,
    /// The snapshot table: offset and size in bytes (0: none).
    pub(crate) snapshot_table: (u64, u64),
    /// Each snapshot's L1 table: offset and entries.
    pub(crate) snapshot_l1s: Vec<(u64, u64)>,
    /// The bitmap directory: offset and size in bytes (0: none, or the autoclear bit clear).
    pub(crate) bitmap_directory: (u64, u64),
    /// Entries of the refcount table up to the last non-zero one (QEMU's `max_refcount_table_index` + 1):
    /// the index of refcount blocks is built from these. Only ever too large, never too small.
    pub(crate) refcount_table_used: usize,
    /// The active L2 tables and the refcount blocks (offset, kind), sorted: what QEMU finds walking the L1
    /// and refcount tables at every check, looked up by binary search. Rebuilt (in place: no allocation
    /// once its capacity suffices) at the first check after either table changed.
    clusters: Vec<(u64, u32)>,
    /// Whether `clusters` matches the L1 and refcount tables (false after `l1_changed` /
    /// `refcount_table_changed`).
    fresh: bool,
}

impl Metadata {
    /// Records the snapshot table the header names and its entries' L1 tables (after it was read or written).
    pub(crate) fn set_snapshot_extents(&mut self, table_size: u64, l1s: Vec<(u64, u64)>) {
        self.overlap.snapshot_table = (self.header.snapshots_offset, table_size);
        self.overlap.snapshot_l1s = l1s;
    }

    /// Notes that the refcount table changed (a block added or dropped, the table replaced): recomputes how
    /// much of it the check looks at, and rebuilds the index at the next check.
    pub(crate) fn refcount_table_changed(&mut self) {
        self.overlap.refcount_table_used = self
            .refcount_table
            .iter()
            .rposition(|&e| e & REFTABLE_OFFSET_MASK != 0)
            .map_or(0, |i| i + 1);
        self.overlap.fresh = false;
    }

    /// Notes that the active L1 table changed (an entry written, the table replaced or resized): the index
    /// is rebuilt at the next check.
    pub(crate) fn l1_changed(&mut self) {
        self.overlap.fresh = false;
    }

    /// Rebuilds the sorted index of active L2 tables and refcount blocks when stale.
    fn refresh_cluster_index(&mut self) {
        if self.overlap.fresh {
            return;
        }
        let mut clusters = std::mem::take(&mut self.overlap.clusters);
        clusters.clear();
        clusters.extend(
            self.l1
                .iter()
                .map(|&e| e & L1_OFFSET_MASK)
                .filter(|&at| at != 0)
                .map(|at| (at, ACTIVE_L2)),
        );
        let used = self
            .overlap
            .refcount_table_used
            .min(self.refcount_table.len());
        clusters.extend(
            self.refcount_table[..used]
                .iter()
                .map(|&e| e & REFTABLE_OFFSET_MASK)
                .filter(|&at| at != 0)
                .map(|at| (at, REFCOUNT_BLOCK)),
        );
        clusters.sort_unstable();
        self.overlap.clusters = clusters;
        self.overlap.fresh = true;
    }

    /// QEMU's `qcow2_check_metadata_overlap`: the first kind (in QEMU's order) among the checked ones but
    /// `ignore` that `offset..offset + len` overlaps, or `None`. `kinds` overrides the open's mode.
    pub(crate) fn metadata_overlap(
        &mut self,
        file: &HostFile,
        kinds: u32,
        ignore: u32,
        offset: u64,
        len: u64,
    ) -> Option<u32> {
        let chk = kinds & !ignore;
        if chk == 0 || len == 0 {
            return None;
        }
        if chk & (ACTIVE_L2 | REFCOUNT_BLOCK) != 0 {
            self.refresh_cluster_index();
        }
        if let Some(kind) = self.overlap_in_memory(chk, offset, len) {
            return Some(kind);
        }
        let cs = self.g.cluster_size;
        let start = offset / cs * cs;
        let end = offset.saturating_add(len).div_ceil(cs).saturating_mul(cs);
        let hits = |at: u64, size: u64| size != 0 && start < at.saturating_add(size) && at < end;
        if chk & INACTIVE_L2 != 0 {
            for &(at, n) in &self.overlap.snapshot_l1s {
                let bytes = n.saturating_mul(8);
                // As QEMU: a snapshot L1 table that cannot be valid is skipped (check reports it).
                if bytes > MAX_L1_BYTES || at % cs != 0 || at == 0 {
                    continue;
                }
                let Ok(table) = read_zero_filled(file, at, bytes as usize) else {
                    continue;
                };
                if (0..n as usize).any(|i| {
                    let l2 = entry(&table, i) & L1_OFFSET_MASK;
                    l2 != 0 && hits(l2, cs)
                }) {
                    return Some(INACTIVE_L2);
                }
            }
        }
        if chk & BITMAP_DIRECTORY != 0 && self.hits_bitmap_directory(offset, len) {
            return Some(BITMAP_DIRECTORY);
        }
        None
    }

    /// The guest-data write check of `guard_data_write` under the metadata lock's shared side: whether a write
    /// of `len` bytes at host `offset` may go ahead. `false` leaves the decision to the exclusive check: the
    /// cluster index is stale, the mode reads inactive L2 tables from the disk, the image was marked corrupt,
    /// or the write overlaps metadata (the exclusive check then signals the corruption).
    pub(crate) fn data_write_allowed(&self, offset: u64, len: u64) -> bool {
        if self.corruption_signaled {
            return false;
        }
        if self.g.data_file || len == 0 {
            return true;
        }
        let chk = self.overlap.kinds;
        if chk & INACTIVE_L2 != 0
            || (chk & (ACTIVE_L2 | REFCOUNT_BLOCK) != 0 && !self.overlap.fresh)
        {
            return false;
        }
        self.overlap_in_memory(chk, offset, len).is_none()
            && !(chk & BITMAP_DIRECTORY != 0 && self.hits_bitmap_directory(offset, len))
    }

    /// Whether `offset..offset + len`, widened to whole clusters, meets the bitmap directory.
    fn hits_bitmap_directory(&self, offset: u64, len: u64) -> bool {
        let cs = self.g.cluster_size;
        let start = offset / cs * cs;
        let end = offset.saturating_add(len).div_ceil(cs).saturating_mul(cs);
        let (at, size) = self.overlap.bitmap_directory;
        size != 0 && start < at.saturating_add(size) && at < end
    }

    /// The kinds of `metadata_overlap` known in memory, in QEMU's order up to the refcount blocks (the cluster
    /// index must be fresh when `chk` has active L2 tables or refcount blocks).
    fn overlap_in_memory(&self, chk: u32, offset: u64, len: u64) -> Option<u32> {
        let cs = self.g.cluster_size;
        if chk & MAIN_HEADER != 0 && offset < cs {
            return Some(MAIN_HEADER);
        }
        // As QEMU: the range is widened to whole clusters.
        let start = offset / cs * cs;
        let end = offset.saturating_add(len).div_ceil(cs).saturating_mul(cs);
        let hits = |at: u64, size: u64| size != 0 && start < at.saturating_add(size) && at < end;
        if chk & ACTIVE_L1 != 0 && hits(self.g.l1_table_offset, self.g.l1_size * 8) {
            return Some(ACTIVE_L1);
        }
        if chk & REFCOUNT_TABLE != 0
            && hits(
                self.header.refcount_table_offset,
                self.refcount_table.len() as u64 * 8,
            )
        {
            return Some(REFCOUNT_TABLE);
        }
        let (sn_offset, sn_size) = self.overlap.snapshot_table;
        if chk & SNAPSHOT_TABLE != 0 && hits(sn_offset, sn_size) {
            return Some(SNAPSHOT_TABLE);
        }
        if chk & INACTIVE_L1 != 0
            && self
                .overlap
                .snapshot_l1s
                .iter()
                .any(|&(at, n)| hits(at, n.saturating_mul(8)))
        {
            return Some(INACTIVE_L1);
        }
        if chk & (ACTIVE_L2 | REFCOUNT_BLOCK) != 0 {
            // The clusters that may reach `start..end`: from the first one ending after `start` on.
            let clusters = &self.overlap.clusters;
            let first = clusters.partition_point(|&(at, _)| at.saturating_add(cs) <= start);
            let mut found = 0;
            for &(at, kind) in clusters.get(first..).unwrap_or_default() {
                if at >= end {
                    break;
                }
                found |= kind & chk;
            }
            // QEMU's order: active L2 tables before refcount blocks.
            if found & ACTIVE_L2 != 0 {
                return Some(ACTIVE_L2);
            }
            if found & REFCOUNT_BLOCK != 0 {
                return Some(REFCOUNT_BLOCK);
            }
        }
        None
    }

    /// QEMU's `qcow2_pre_write_overlap_check` for guest data about to be written at host `offset` (nothing
    /// with an external data file, where guest data never meets metadata): an overlap marks the image
    /// corrupt and fails.
    pub(crate) fn guard_data_write(
        &mut self,
        file: &HostFile,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if self.g.data_file {
            self.refuse_after_corruption(offset)?;
            return Ok(());
        }
        self.guard_write(file, IGNORE_NONE, offset, len)
    }

    /// QEMU's `qcow2_pre_write_overlap_check` for a write of `len` bytes at `offset` of metadata of kind
    /// `ignore` (or a new cluster: [`IGNORE_NONE`]): an overlap with other metadata marks the image corrupt
    /// and fails.
    pub(crate) fn guard_write(
        &mut self,
        file: &HostFile,
        ignore: u32,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.refuse_after_corruption(offset)?;
        let kinds = self.overlap.kinds;
        match self.metadata_overlap(file, kinds, ignore, offset, len) {
            None => Ok(()),
            Some(kind) => Err(self.signal_corruption(file, offset, len, kind)),
        }
    }

    fn refuse_after_corruption(&self, offset: u64) -> Result<()> {
        if self.corruption_signaled {
            return Err(corrupt(
                "the image was marked corrupt after a prevented write over metadata; further writes are refused",
                offset,
            ));
        }
        Ok(())
    }

    /// QEMU's `qcow2_signal_corruption` (fatal): marks the image corrupt (once; best effort, as QEMU's: the
    /// write is refused whether or not the bit reaches the disk) and returns the error for the write.
    fn signal_corruption(&mut self, file: &HostFile, offset: u64, len: u64, kind: u32) -> Error {
        let name = kind_name(kind);
        self.signal_found_corruption(
            file,
            format!(
                "Preventing invalid write on metadata (overlaps with {name}) ({len} bytes at {offset:#x})"
            ),
            offset,
        )
    }

    /// QEMU's `qcow2_signal_corruption` (fatal) for corruption found in the metadata (`message`, about host
    /// offset `offset`): marks the image corrupt (v3 only, once, best effort) and refuses further writes in
    /// this open, and returns the error.
    pub(crate) fn signal_found_corruption(
        &mut self,
        file: &HostFile,
        message: String,
        offset: u64,
    ) -> Error {
        if !self.corruption_signaled {
            self.corruption_signaled = true;
            let _ = self.update_incompatible(file, INCOMPAT_CORRUPT, 0);
        }
        corrupt(format!("Marking image as corrupt: {message}"), offset)
    }
}

impl Qcow2 {
    /// The metadata (QEMU's name for it, e.g. `"active L2 table"`) that a write of `len` bytes at host offset
    /// `offset` of the image file would overlap under this open's overlap-check mode, or `None`: the check
    /// every write runs first (a hit there refuses the write and marks the image corrupt; this only asks).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use blk_core::{DenyNamedImages, HostOpenOptions};
    /// # use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("a.qcow2");
    /// # let create = Qcow2CreateOptions { size: Some(1 << 20), ..Qcow2CreateOptions::default() };
    /// # Qcow2::create(&path, &create, &DenyNamedImages).unwrap();
    /// let image = Qcow2::open(&path, &Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages)))?;
    /// assert_eq!(image.metadata_overlap(0, 512), Some("qcow2_header"));
    /// assert_eq!(image.metadata_overlap(1 << 30, 4096), None);
    /// # Ok::<(), blk_core::Error>(())
    /// ```
    pub fn metadata_overlap(&self, offset: u64, len: u64) -> Option<&'static str> {
        let mut meta = self.lock_metadata();
        let kinds = meta.overlap.kinds;
        meta.metadata_overlap(self.host_file(), kinds, IGNORE_NONE, offset, len)
            .map(kind_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_switches_apply_on_top_of_the_mode_last_word_winning() {
        use OverlapStructure as S;
        let cached = OverlapCheck::Cached.kinds();
        assert_eq!(
            OverlapCheck::Cached.kinds_with(&[(S::SnapshotTable, false)]),
            cached & !SNAPSHOT_TABLE
        );
        assert_eq!(
            OverlapCheck::None.kinds_with(&[(S::InactiveL2, true)]),
            INACTIVE_L2
        );
        assert_eq!(
            OverlapCheck::None.kinds_with(&[(S::MainHeader, true), (S::MainHeader, false)]),
            0
        );
        for s in OverlapStructure::ALL {
            assert_eq!(OverlapStructure::parse(s.name()), Some(s));
        }
        assert_eq!(OverlapStructure::parse("template"), None);
    }

    #[test]
    fn modes_are_qemus() {
        assert_eq!(OverlapCheck::default(), OverlapCheck::Cached);
        for (name, mode) in [
            ("none", OverlapCheck::None),
            ("constant", OverlapCheck::Constant),
            ("cached", OverlapCheck::Cached),
            ("all", OverlapCheck::All),
        ] {
            assert_eq!(OverlapCheck::parse(name), Some(mode));
        }
        assert_eq!(OverlapCheck::parse("some"), None);
        assert_eq!(OverlapCheck::None.kinds(), 0);
        assert_eq!(
            OverlapCheck::Constant.kinds() & (ACTIVE_L2 | REFCOUNT_BLOCK),
            0
        );
        assert_eq!(OverlapCheck::Cached.kinds() & INACTIVE_L2, 0);
        assert_eq!(OverlapCheck::All.kinds(), 0x1ff);
        assert_eq!(kind_name(ACTIVE_L2), "active L2 table");
        assert_eq!(kind_name(BITMAP_DIRECTORY), "bitmap directory");
    }
}
