//! The metadata of an open image: [`Metadata`], everything that changes behind the one metadata lock (the
//! header's mutable fields, the L1 and refcount tables, both caches, the allocator state and the in-flight
//! table), and [`Geometry`], the fixed layout read without it.
//!
//! | module | what it holds |
//! |---|---|
//! | `tables` | L1 and L2 entries and their decoding |
//! | `subclusters` | extended L2 entries: the status of each subcluster from an entry and its bitmap |
//! | `refcount` | refcount reads and writes, new refcount blocks, refcount-table growth |
//! | `cache` | the L2-table and refcount-block caches (clock eviction, write-back) |
//! | `allocator` | cluster and byte (compressed) allocation; the host file grown ahead and cut back |
//! | `overlap` | the overlap guard: a prevented write over metadata marks the image corrupt |
//!
//! # Locking
//!
//! Every handle of an open image shares one `ShardedLock<Metadata>` (crossbeam's: a read-write lock per
//! shard; a reader takes its thread's shard, a writer all of them), the metadata lock. Its shared side
//! (`Qcow2::read_metadata`) serves the cache hits of the I/O path: reads, and writes that overwrite
//! allocated clusters in place (no persistent bitmap tracking writes, the overlap check decided in memory:
//! `data_write_allowed`). Under it: the L1 table, a cached L2 table, the checks of an entry and the in-flight
//! table are read; nothing is loaded, evicted, written or allocated, and no I/O happens. A hit writes no
//! shared cache line: only its shard's lock word, which other threads' hits do not touch (the cache's
//! reference bit is written only when clear, its last-hit hint is per thread, see `cache`). Everything else takes it exclusively (`Qcow2::lock_metadata`), and so does a request that finds
//! a table missing, a cluster to allocate or anything the shared side cannot decide: it starts over there.
//! The rules:
//!
//! 1. Metadata I/O (L2 tables, refcount blocks, the header) happens under the lock; guest data I/O never does
//!    (see `io` for the I/O path: mapping, the in-flight table and its condition variable, the link).
//! 2. No other disk is called under the lock (the backing file has its own locks, so no lock order between
//!    layers exists), except that clusters freed or zeroed under it are zeroed in the external data file, a
//!    leaf that never calls back (see `io`).
//! 3. One lock comes after it: `LinkSignal`'s, the counter a writer waiting for an in-flight cluster reads
//!    before it lets the metadata lock go, and on which it then waits (see `io`). Nothing is taken under
//!    `LinkSignal`'s lock.
//! 4. The offline operations (snapshots, `amend`, `change_backing_file`, `make_empty`, `check`) hold the lock
//!    for their whole run and take no other lock; no guest I/O may run at the same time (the snapshot
//!    operations refuse while a write is in flight; `check` waits for a moment without one).
//!
//! # Order
//!
//! Without lazy refcounts (below), refcount increments reach the disk before the L2 tables that use them
//! (evicting or flushing a dirty L2 table writes the refcount cache back and syncs first); a new L2 table is
//! written and synced before the L1 entry pointing to it. An L2 table shared with an internal snapshot is copied verbatim, as QEMU's
//! `l2_allocate` does: the clusters it references keep their refcounts (counted once per L1 table).
//!
//! # Lazy refcounts
//!
//! An image with the compatible feature `lazy_refcounts` opened writable (not for a check) writes its
//! refcounts lazily, as QEMU does: before the first refcount change of the open, the dirty bit (incompatible
//! bit 0) is set on disk (synced before and after); from then on L2 tables no longer wait for refcount
//! blocks, and a flush (`flush`) writes the L2 tables and syncs once, leaving the refcount blocks in their
//! cache: they reach the disk when evicted, on `flush_all` (a check, a clean close) and always before the
//! dirty bit is cleared (`update_incompatible`). As in QEMU, a sync still comes before L2 tables are written
//! when a copy-on-write copied old data into a new cluster since the last one (see `refcounts_before_l2`).
//! A crash leaves the dirty bit set, and the next writable open rebuilds the refcounts from the tables (see
//! `image::open`).
//!
//! # Validation
//!
//! An L2 table or refcount block must be cluster-aligned, end inside the used part of the file (the file
//! length at open, less a crash's unused hole tail, grown by this process's allocations: see `allocator`) and
//! not overlap the header, the L1 table or the refcount table; a data cluster must lie inside the used part
//! of the file; otherwise the request fails with `CorruptImage` and nothing is written. What an entry
//! references is checked the same way before it is freed (`check_release`), so freeing never creates
//! refcount blocks past the file. A refcount block missing for clusters inside the used part of the file (a
//! lying refcount table) makes allocations there fail rather than hand out clusters that may be in use.

pub(crate) mod allocator;
pub(crate) mod cache;
pub(crate) mod overlap;
pub(crate) mod refcount;
pub(crate) mod subclusters;
pub(crate) mod tables;

use std::collections::HashSet;

use blk_core::{Error, ErrorKind, HostFile, IoBufMut, Result};

use crate::image::features::INCOMPAT_DIRTY;
use crate::image::header::{Header, INCOMPATIBLE_OFFSET};
use crate::metadata::cache::TableCache;
use crate::metadata::overlap::{OverlapExtents, ACTIVE_L1, ACTIVE_L2, IGNORE_NONE, REFCOUNT_BLOCK};
use crate::metadata::tables::{entry, set_entry, COPIED, L1_OFFSET_MASK};

/// The image's fixed layout, readable without the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Virtual size in bytes.
    pub size: u64,
    /// Entries of the L1 table.
    pub l1_size: u64,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Refcount entries per refcount block.
    pub rb_entries: u64,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    /// Whether L2 entries are extended (128 bits: the entry and a subcluster bitmap).
    pub extended_l2: bool,
    /// log2 of the subcluster size (the cluster size without extended L2 entries).
    pub subcluster_bits: u32,
    /// Whether guest data lives in an external data file.
    pub data_file: bool,
    /// Whether the external data file is raw (guest offset == data file offset).
    pub data_file_raw: bool,
}

impl Geometry {
    /// The layout described by `h`.
    pub(crate) fn from_header(h: &Header) -> Geometry {
        let cluster_size = 1u64 << h.cluster_bits;
        let extended_l2 = h.incompatible & crate::image::features::INCOMPAT_EXTL2 != 0;
        Geometry {
            version: h.version,
            cluster_bits: h.cluster_bits,
            cluster_size,
            size: h.size,
            l1_size: u64::from(h.l1_size),
            l1_table_offset: h.l1_table_offset,
            l2_entries: cluster_size / if extended_l2 { 16 } else { 8 },
            refcount_order: h.refcount_order,
            rb_entries: (cluster_size * 8) >> h.refcount_order,
            compression_type: h.compression_type,
            extended_l2,
            // 32 subclusters per cluster (extended L2 needs clusters of at least 16 KiB).
            subcluster_bits: if extended_l2 {
                h.cluster_bits.saturating_sub(5)
            } else {
                h.cluster_bits
            },
            data_file: h.incompatible & crate::image::features::INCOMPAT_DATA_FILE != 0,
            data_file_raw: h.incompatible & crate::image::features::INCOMPAT_DATA_FILE != 0
                && h.autoclear & crate::image::features::AUTOCLEAR_DATA_FILE_RAW != 0,
        }
    }

    /// Index of the 64-bit word holding L2 entry `index` (entries are two words with extended L2).
    pub(crate) fn l2_word(&self, index: u64) -> usize {
        (if self.extended_l2 { index * 2 } else { index }) as usize
    }

    /// Subcluster size in bytes.
    pub(crate) fn subcluster_size(&self) -> u64 {
        1u64 << self.subcluster_bits
    }
}

/// The mutable metadata, behind the one metadata lock.
#[derive(Debug)]
pub struct Metadata {
    pub(crate) g: Geometry,
    pub(crate) header: Header,
    pub(crate) l1: Vec<u64>,
    pub(crate) refcount_table: Vec<u64>,
    pub(crate) l2_cache: TableCache,
    pub(crate) rb_cache: TableCache,
    /// Lowest cluster index that may be free.
    pub(crate) free_hint: u64,
    /// Cluster index ranges `[start, end)` being handed out (not free although their refcount is still 0).
    pub(crate) reserved: Vec<(u64, u64)>,
    /// Guest clusters being allocated by some writer.
    pub(crate) in_flight: HashSet<u64>,
    /// Where the next compressed cluster may be packed (host byte offset, 0: start a new cluster).
    pub(crate) compressed_tail: u64,
    /// End of the used host area: the file length at open (cluster-rounded), grown by every allocation. No
    /// table or data cluster may lie past it.
    pub(crate) file_end: u64,
    /// The file length at open (cluster-rounded; less a crash's unused tail, see `forget_unused_tail`): a
    /// refcount block missing for clusters below it means the refcount table lies, and nothing there may be
    /// handed out.
    pub(crate) open_end: u64,
    /// The host file's length as this open last saw or set it (`file_end` plus the part grown ahead of need;
    /// only a hint: the file is asked again before it is grown, so a stale value never shrinks it).
    pub(crate) host_len: u64,
    /// Whether allocations grow the host file ahead of need, and closing cuts it back to the used end (see
    /// `allocator`): a writable regular image file whose guest data is not in a raw external data file.
    pub(crate) grow_ahead: bool,
    /// Set once a write over metadata was prevented: the image is marked corrupt and refuses every further
    /// write (see `overlap`).
    pub(crate) corruption_signaled: bool,
    /// What the overlap check needs beyond the L1 and refcount tables (see `overlap`).
    pub(crate) overlap: OverlapExtents,
    /// Whether this open writes refcounts lazily (see the module docs): a writable open, not a check's, of an
    /// image with the `lazy_refcounts` compatible feature.
    pub(crate) lazy_refcounts: bool,
    /// Clusters whose refcount dropped to 0 while set (the snapshot operations set it: QEMU's
    /// `pass-discard-snapshot`, on by default), discarded from the file by `discard_freed`.
    pub(crate) freed: Option<Vec<u64>>,
    /// Whether a write may have copied old data (a backing file's, or an allocated, shared or compressed
    /// cluster's) into a new cluster since the last sync before L2 tables were written (see
    /// `refcounts_before_l2`); set by `check_release`, which every such write runs first.
    pub(crate) cow_unsynced: bool,
    /// The persistent dirty bitmaps a writable open keeps (see `bitmaps::persistent`).
    pub(crate) bitmaps: crate::bitmaps::PersistentBitmaps,
}

/// An error for inconsistent metadata at `offset`.
pub(crate) fn corrupt(message: impl Into<String>, offset: u64) -> Error {
    Error::new(ErrorKind::CorruptImage, message).with_offset(offset)
}

/// Reads `len` bytes at `offset`, zeros past the end of the file.
pub(crate) fn read_zero_filled(file: &HostFile, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let got = file.read_vectored_at(offset, &[IoBufMut::from(&mut buf[..])])?;
    if let Some(rest) = buf.get_mut(got..) {
        rest.fill(0);
    }
    Ok(buf)
}

impl Metadata {
    /// Metadata for an opened image; caches of `l2_tables` and `refcount_blocks` tables.
    pub(crate) fn new(
        header: Header,
        l1: Vec<u64>,
        refcount_table: Vec<u64>,
        l2_tables: usize,
        refcount_blocks: usize,
    ) -> Metadata {
        Metadata {
            g: Geometry::from_header(&header),
            header,
            l1,
            refcount_table,
            l2_cache: TableCache::new(l2_tables),
            rb_cache: TableCache::new(refcount_blocks),
            free_hint: 1,
            reserved: Vec::new(),
            in_flight: HashSet::new(),
            compressed_tail: 0,
            file_end: 0,
            open_end: 0,
            host_len: 0,
            grow_ahead: false,
            corruption_signaled: false,
            overlap: OverlapExtents::default(),
            lazy_refcounts: false,
            freed: None,
            cow_unsynced: false,
            bitmaps: Default::default(),
        }
    }

    /// Whether refcount blocks are being written lazily now: a lazy-refcounts open that set the dirty bit.
    /// As QEMU's `!qcow2_need_accurate_refcounts`.
    pub(crate) fn refcounts_deferred(&self) -> bool {
        self.lazy_refcounts && self.header.incompatible & INCOMPAT_DIRTY != 0
    }

    /// Before a refcount change: on a lazy-refcounts open, sets the dirty bit on disk the first time (QEMU's
    /// `qcow2_mark_dirty`), so a crash from now on gets the refcounts rebuilt.
    pub(crate) fn mark_dirty_for_lazy_refcounts(&mut self, file: &HostFile) -> Result<()> {
        if self.lazy_refcounts && self.header.incompatible & INCOMPAT_DIRTY == 0 {
            self.update_incompatible(file, INCOMPAT_DIRTY, 0)?;
        }
        Ok(())
    }

    /// Before writing an L2 table that may reference newly counted clusters: the refcount blocks written back
    /// and synced first. With refcounts deferred (lazy refcounts: the dirty bit covers them) only a sync, and
    /// only when a copy-on-write copied old data into a new cluster since the last one (`cow_unsynced`, QEMU's
    /// `qcow2_cache_depends_on_flush` after `perform_cow`): a cluster whose unwritten part is zeros needs
    /// none, as in QEMU.
    fn refcounts_before_l2(&mut self, file: &HostFile) -> Result<()> {
        if !self.refcounts_deferred() {
            return self.write_back_refcounts(file, true);
        }
        if self.cow_unsynced {
            file.sync_data()?;
            self.cow_unsynced = false;
        }
        Ok(())
    }

    /// Records the file length at open.
    pub(crate) fn set_file_len(&mut self, len: u64) {
        let end = len.div_ceil(self.g.cluster_size) * self.g.cluster_size;
        self.file_end = end;
        self.open_end = end;
        self.host_len = len;
    }

    /// Checks where a metadata table read from the image lies: aligned, inside the used area, not over the
    /// header or the L1 / refcount tables.
    pub(crate) fn check_table_location(&self, offset: u64, what: &str) -> Result<()> {
        self.check_table_offset(offset, what)?;
        if offset.saturating_add(self.g.cluster_size) > self.file_end {
            return Err(corrupt(
                format!("{what} offset {offset:#x} lies past the end of the image"),
                offset,
            ));
        }
        self.check_metadata_write(offset, self.g.cluster_size)
            .map_err(|_| {
                corrupt(
                    format!("{what} at {offset:#x} overlaps other metadata"),
                    offset,
                )
            })
    }

    /// Checks that a data cluster from an L2 entry lies inside the used area.
    pub(crate) fn check_data_location(&self, host: u64) -> Result<()> {
        if self.g.data_file {
            // In the external data file, which QEMU does not bound.
            return Ok(());
        }
        if host.saturating_add(self.g.cluster_size) > self.file_end {
            return Err(corrupt(
                format!("data cluster at {host:#x} lies past the end of the image"),
                host,
            ));
        }
        Ok(())
    }

    /// Checks that compressed data from an L2 entry (`size` bytes at byte `host`) lies inside the used area
    /// and not over the header.
    pub(crate) fn check_compressed_location(&self, host: u64, size: u64) -> Result<()> {
        if host < self.g.cluster_size || host.saturating_add(size) > self.file_end {
            return Err(corrupt(
                format!("compressed cluster at {host:#x} ({size} bytes) lies outside the image"),
                host,
            ));
        }
        Ok(())
    }

    /// The current header.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// The L1 table's raw entries.
    #[allow(dead_code)] // part of the check/repair interface (see `check`)
    pub(crate) fn l1_table(&self) -> &[u64] {
        &self.l1
    }

    /// The refcount table's raw entries.
    #[allow(dead_code)] // part of the check/repair interface (see `check`)
    pub(crate) fn refcount_table(&self) -> &[u64] {
        &self.refcount_table
    }

    /// Checks that a table offset read from metadata is cluster aligned and below 2^56.
    pub(crate) fn check_table_offset(&self, offset: u64, what: &str) -> Result<()> {
        if offset % self.g.cluster_size != 0
            || offset >= crate::image::header::MAX_HOST_OFFSET
            || offset == 0
        {
            return Err(corrupt(
                format!("{what} offset {offset:#x} is invalid"),
                offset,
            ));
        }
        Ok(())
    }

    /// The L2 cache slot of the table at `offset`, loading it (and evicting another) as needed.
    pub(crate) fn l2_slot(&mut self, file: &HostFile, offset: u64) -> Result<usize> {
        if let Some(slot) = self.l2_cache.lookup_mut(offset) {
            return Ok(slot);
        }
        self.check_table_location(offset, "L2 table")?;
        let data = read_zero_filled(file, offset, self.g.cluster_size as usize)?;
        let replace = self.make_room_l2(file)?;
        Ok(self
            .l2_cache
            .insert(offset, data.into_boxed_slice(), false, replace))
    }

    /// Frees a slot in a full L2 cache, writing the victim back (refcounts first) when dirty.
    fn make_room_l2(&mut self, file: &HostFile) -> Result<Option<usize>> {
        if !self.l2_cache.is_full() {
            return Ok(None);
        }
        let victim = self.l2_cache.victim();
        if let Some(v) = victim {
            if self.l2_cache.slot(v).is_some_and(|s| s.dirty) {
                self.refcounts_before_l2(file)?;
                self.write_back_l2_slot(file, v)?;
            }
        }
        Ok(victim)
    }

    fn write_back_l2_slot(&mut self, file: &HostFile, slot: usize) -> Result<()> {
        if let Some(offset) = self.l2_cache.slot(slot).map(|s| s.offset) {
            self.guard_write(file, ACTIVE_L2, offset, self.g.cluster_size)?;
        }
        if let Some(s) = self.l2_cache.slot(slot) {
            file.write_all_at(s.offset, &s.data)?;
        }
        self.l2_cache.mark_clean(slot);
        Ok(())
    }

    /// Writes back every dirty refcount block, syncing afterwards when `sync` and something was written.
    pub(crate) fn write_back_refcounts(&mut self, file: &HostFile, sync: bool) -> Result<()> {
        let dirty = self.rb_cache.dirty_slots();
        for &slot in &dirty {
            if let Some(offset) = self.rb_cache.slot(slot).map(|s| s.offset) {
                self.guard_write(file, REFCOUNT_BLOCK, offset, self.g.cluster_size)?;
            }
            if let Some(s) = self.rb_cache.slot(slot) {
                file.write_all_at(s.offset, &s.data)?;
            }
            self.rb_cache.mark_clean(slot);
        }
        if sync && !dirty.is_empty() {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable, as a guest flush needs: both caches written back in
    /// dependency order (refcounts, sync, L2 tables) and synced. With refcounts deferred (lazy refcounts,
    /// QEMU's `qcow2_write_caches`) the refcount blocks stay cached: the L2 tables (after a sync when a
    /// copy-on-write needs one, see `refcounts_before_l2`), then a sync.
    pub(crate) fn flush(&mut self, file: &HostFile) -> Result<()> {
        if !self.refcounts_deferred() {
            return self.flush_all(file);
        }
        let dirty = self.l2_cache.dirty_slots();
        if !dirty.is_empty() {
            self.refcounts_before_l2(file)?;
        }
        for slot in dirty {
            self.write_back_l2_slot(file, slot)?;
        }
        file.sync_data()
    }

    /// Writes back both caches in dependency order (refcounts, sync, L2 tables), refcount blocks included even
    /// when deferred, and syncs: what a check or a clean close needs.
    pub(crate) fn flush_all(&mut self, file: &HostFile) -> Result<()> {
        self.write_back_refcounts(file, self.l2_cache.has_dirty())?;
        for slot in self.l2_cache.dirty_slots() {
            self.write_back_l2_slot(file, slot)?;
        }
        file.sync_data()
    }

    /// Drops every cached table (flush first: dirty tables are lost).
    pub(crate) fn invalidate_caches(&mut self) {
        self.l2_cache.clear();
        self.rb_cache.clear();
    }

    /// Forgets the allocator's free-space hint (after refcounts were rewritten).
    pub(crate) fn reset_allocator(&mut self) {
        self.free_hint = 1;
        self.compressed_tail = 0;
    }

    /// An L2 table's raw entries (host byte order).
    #[allow(dead_code)] // part of the check/repair interface (see `check`)
    pub(crate) fn read_l2_table(&mut self, file: &HostFile, l2_offset: u64) -> Result<Vec<u64>> {
        let slot = self.l2_slot(file, l2_offset)?;
        let data = self.l2_cache.data(slot);
        Ok((0..self.g.l2_entries)
            .map(|i| entry(data, self.g.l2_word(i)))
            .collect())
    }

    /// The raw L2 entry of guest cluster `gc` (0 when its L2 table is not allocated).
    pub(crate) fn l2_entry(&mut self, file: &HostFile, gc: u64) -> Result<u64> {
        let l1_index = gc / self.g.l2_entries;
        let l2_offset = self.l1.get(l1_index as usize).copied().unwrap_or(0) & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(0);
        }
        let slot = self.l2_slot(file, l2_offset)?;
        Ok(entry(
            self.l2_cache.data(slot),
            self.g.l2_word(gc % self.g.l2_entries),
        ))
    }

    /// The raw L2 entry and subcluster bitmap of guest cluster `gc` if its L2 table is cached (or not
    /// allocated: then both are 0), without loading or evicting anything: the cache hit of the read path,
    /// under the metadata lock's shared side. `None` when the table must be loaded.
    pub(crate) fn cached_l2_entry_and_bitmap(&self, gc: u64) -> Option<(u64, u64)> {
        let l1_index = gc / self.g.l2_entries;
        let l2_offset = self.l1.get(l1_index as usize).copied().unwrap_or(0) & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Some((0, 0));
        }
        let data = self.l2_cache.data(self.l2_cache.lookup(l2_offset)?);
        let word = self.g.l2_word(gc % self.g.l2_entries);
        let bitmap = if self.g.extended_l2 {
            entry(data, word + 1)
        } else {
            0
        };
        Some((entry(data, word), bitmap))
    }

    /// The raw L2 entry and subcluster bitmap of guest cluster `gc` (both 0 when its L2 table is not
    /// allocated; the bitmap is 0 without extended L2 entries).
    pub(crate) fn l2_entry_and_bitmap(&mut self, file: &HostFile, gc: u64) -> Result<(u64, u64)> {
        let l1_index = gc / self.g.l2_entries;
        let l2_offset = self.l1.get(l1_index as usize).copied().unwrap_or(0) & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((0, 0));
        }
        let slot = self.l2_slot(file, l2_offset)?;
        let data = self.l2_cache.data(slot);
        let word = self.g.l2_word(gc % self.g.l2_entries);
        let bitmap = if self.g.extended_l2 {
            entry(data, word + 1)
        } else {
            0
        };
        Ok((entry(data, word), bitmap))
    }

    /// Writes L1 entry `index` to the disk and memory.
    pub(crate) fn write_l1_entry(
        &mut self,
        file: &HostFile,
        index: usize,
        value: u64,
    ) -> Result<()> {
        let at = self.g.l1_table_offset + index as u64 * 8;
        self.guard_write(file, ACTIVE_L1, at, 8)?;
        file.write_all_at(at, &value.to_be_bytes())?;
        if let Some(e) = self.l1.get_mut(index) {
            *e = value;
        }
        self.l1_changed();
        Ok(())
    }

    /// The host offset of guest cluster `gc`'s L2 table, made writable first: allocated when missing, copied
    /// when shared with a snapshot.
    pub(crate) fn writable_l2_table(&mut self, file: &HostFile, gc: u64) -> Result<u64> {
        let l1_index = (gc / self.g.l2_entries) as usize;
        let l1_entry = *self.l1.get(l1_index).ok_or_else(|| {
            corrupt(
                "guest cluster beyond the L1 table",
                gc << self.g.cluster_bits,
            )
        })?;
        if l1_entry & COPIED != 0 && l1_entry & L1_OFFSET_MASK != 0 {
            Ok(l1_entry & L1_OFFSET_MASK)
        } else {
            self.new_l2_table(file, l1_index, l1_entry & L1_OFFSET_MASK)
        }
    }

    /// Sets the raw L2 entry of guest cluster `gc` in the cache (written back later), first giving the guest
    /// cluster a writable L2 table.
    pub(crate) fn set_l2_entry(&mut self, file: &HostFile, gc: u64, value: u64) -> Result<()> {
        let l2_offset = self.writable_l2_table(file, gc)?;
        let slot = self.l2_slot(file, l2_offset)?;
        let word = self.g.l2_word(gc % self.g.l2_entries);
        set_entry(self.l2_cache.data_mut(slot), word, value);
        Ok(())
    }

    /// Sets the subcluster bitmap of guest cluster `gc` (extended L2 entries only), like `set_l2_entry`.
    pub(crate) fn set_l2_bitmap(&mut self, file: &HostFile, gc: u64, bitmap: u64) -> Result<()> {
        let l2_offset = self.writable_l2_table(file, gc)?;
        let slot = self.l2_slot(file, l2_offset)?;
        let word = self.g.l2_word(gc % self.g.l2_entries);
        set_entry(self.l2_cache.data_mut(slot), word + 1, bitmap);
        Ok(())
    }

    /// Gives L1 entry `l1_index` a new L2 table: zeros, or a copy of the shared table at `old` (0: none), which
    /// then loses the active L1 table's reference. The refcounts reach the disk before the table, the table
    /// before the L1 entry.
    fn new_l2_table(&mut self, file: &HostFile, l1_index: usize, old: u64) -> Result<u64> {
        let cs = self.g.cluster_size;
        let mut data = vec![0u8; cs as usize];
        if old != 0 {
            // Copy through the cache (it may hold newer entries), then drop the shared table from it.
            let slot = self.l2_slot(file, old)?;
            data.copy_from_slice(self.l2_cache.data(slot));
            if self.l2_cache.slot(slot).is_some_and(|s| s.dirty) {
                self.refcounts_before_l2(file)?;
                self.write_back_l2_slot(file, slot)?;
            }
            // As QEMU's l2_allocate: the copy is verbatim and the clusters it references keep their refcounts
            // (a snapshot already counted them once per L1 table reaching them).
        }
        let new = self.allocate_clusters(file, 1)?;
        self.refcounts_before_l2(file)?;
        self.guard_write(file, IGNORE_NONE, new, cs)?;
        file.write_all_at(new, &data)?;
        file.sync_data()?;
        self.write_l1_entry(file, l1_index, new | COPIED)?;
        let replace = self.make_room_l2(file)?;
        self.l2_cache
            .insert(new, data.into_boxed_slice(), false, replace);
        if old != 0 {
            file.sync_data()?;
            self.l2_cache.forget(old);
            self.change_refcount(file, old >> self.g.cluster_bits, -1)?;
        }
        Ok(new)
    }

    /// Checks that `len` bytes at `offset` do not hit the header or the L1 / refcount tables: where a table
    /// read from the image may lie (the full check before writes is `overlap`'s `guard_write`).
    pub(crate) fn check_metadata_write(&self, offset: u64, len: u64) -> Result<()> {
        let overlaps = |start: u64, size: u64| {
            offset < start.saturating_add(size) && start < offset.saturating_add(len)
        };
        let cs = self.g.cluster_size;
        if overlaps(0, cs)
            || overlaps(self.g.l1_table_offset, self.g.l1_size * 8)
            || overlaps(
                self.header.refcount_table_offset,
                u64::from(self.header.refcount_table_clusters) * cs,
            )
        {
            return Err(corrupt(
                format!("refusing to overwrite the header or a table at {offset:#x}"),
                offset,
            ));
        }
        Ok(())
    }

    /// Sets the bits `set` and clears the bits `clear` of the incompatible features, on disk (synced). Clearing
    /// the dirty bit writes the refcount blocks back first (deferred ones included: QEMU's `qcow2_mark_clean`).
    pub(crate) fn update_incompatible(
        &mut self,
        file: &HostFile,
        set: u64,
        clear: u64,
    ) -> Result<()> {
        if self.header.version < 3 {
            return Ok(());
        }
        let value = (self.header.incompatible | set) & !clear;
        if value != self.header.incompatible {
            if self.header.incompatible & !value & INCOMPAT_DIRTY != 0 {
                self.write_back_refcounts(file, false)?;
            }
            file.sync_data()?;
            file.write_all_at(INCOMPATIBLE_OFFSET, &value.to_be_bytes())?;
            file.sync_data()?;
            self.header.incompatible = value;
        }
        Ok(())
    }
}
