//! [`Shared`]: the state every handle of one open image shares, and the metadata updates made through it (the
//! data write GUID, BAT entries through the log, blocks reserved at the end of the file, sector bitmaps cached).
//!
//! # Growing ahead
//!
//! Writes that extend a file are serialized by the kernel (ext4 makes extending `O_DIRECT` writes synchronous;
//! io_uring hands them to one worker per inode), writes into a hole below the end of the file are not. So when
//! a block reserved at the used end (`MetaState::file_end`) reaches past the host file's length, the file is
//! extended with `ftruncate` (a hole: nothing is written, it reads as zeros) to
//! `round_up(needed + max(clamp(needed / 8, 32 MiB, 256 MiB), 2 blocks), 1 MiB)` (a logarithmic number of
//! steps: each may wait for the data writes in flight). Should the file system
//! refuse that length, the file grows to exactly the need. A clean close cuts the file back to the used end
//! after the log is marked empty (a log entry names the file length it was written at; replaying it against a
//! shorter file would be refused as a truncation). A crash leaves the grown tail, which a later open keeps
//! (blocks are allocated past it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use blk_core::{HostFile, Result};

use crate::bat::{Geometry, PayloadBlock};
use crate::guid::Guid;
use crate::header::{Headers, HEADER_SECTION_END, MIB};
use crate::log_writer::LogWriter;
use crate::metadata::{DiskParameters, LEAVE_BLOCKS_ALLOCATED};
use crate::parent::Parent;
use crate::region::{Region, Regions};

/// The state all handles of one image share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub path: PathBuf,
    pub geometry: Geometry,
    pub params: DiskParameters,
    pub regions: Regions,
    pub log_region: Region,
    pub read_only: bool,
    /// The BAT (payload and sector bitmap entries), one atomic per entry: lookups load entries without a lock
    /// and write nothing shared; entries are stored only under `meta`.
    pub bat: Box<[AtomicU64]>,
    /// Metadata updates, allocation, headers and the log.
    pub meta: Mutex<MetaState>,
    /// Signalled when an allocation in flight completes.
    pub allocated: Condvar,
    /// The descriptor metadata is written through (under `meta`).
    pub meta_file: HostFile,
    pub parent: Option<Parent>,
    /// Whether the data write GUID was changed in this session.
    pub data_guid_written: AtomicBool,
    /// Whether open replayed a log.
    pub log_replayed: bool,
    /// Sector bitmaps of partially present blocks read so far (see [`BitmapCache`]).
    pub bitmaps: RwLock<BitmapCache>,
}

/// Least growth of the host file ahead of need (bytes).
const GROW_MIN: u64 = 32 << 20;
/// Most growth of the host file ahead of need (bytes), unless two blocks are larger.
const GROW_MAX: u64 = 256 << 20;
/// Most bytes of sector bitmaps cached; past it the cache starts over.
pub(crate) const BITMAP_CACHE_BYTES: usize = 32 << 20;
/// Most BAT pages (4 KiB) one log entry carries when unlogged entries are logged: well inside the smallest
/// log (1 MiB).
const PAGES_PER_ENTRY: usize = 64;

/// The length the host file grows to when a block of `block_size` bytes must end at `needed`.
pub(crate) fn grow_target(needed: u64, block_size: u64) -> u64 {
    let ahead = (needed / 8)
        .clamp(GROW_MIN, GROW_MAX)
        .max(block_size.saturating_mul(2));
    needed
        .saturating_add(ahead)
        .div_ceil(MIB)
        .saturating_mul(MIB)
}

/// The sector bitmaps of partially present blocks, by payload block: each the block's bits (block size /
/// sector size / 8 bytes, at most 64 KiB), read once from its sector bitmap block. Only this crate's readers
/// use them and nothing in a session changes them (writes promote a partially present block to fully present,
/// and no state change makes a block partially present), so an entry never goes stale. Bounded by
/// [`BITMAP_CACHE_BYTES`]: when an insertion would pass it, the cache is emptied first.
#[derive(Debug, Default)]
pub(crate) struct BitmapCache {
    pub blocks: HashMap<u64, Box<[u8]>>,
    pub bytes: usize,
}

impl BitmapCache {
    /// Caches `bits` for payload block `block`.
    pub fn insert(&mut self, block: u64, bits: Box<[u8]>) {
        if let Some(old) = self.blocks.remove(&block) {
            self.bytes -= old.len();
        }
        if self.bytes + bits.len() > BITMAP_CACHE_BYTES {
            self.blocks.clear();
            self.bytes = 0;
        }
        self.bytes += bits.len();
        self.blocks.insert(block, bits);
    }
}

/// What `meta` protects.
#[derive(Debug)]
pub(crate) struct MetaState {
    pub headers: Headers,
    pub log: LogWriter,
    /// Where the next block is allocated (1 MiB aligned, past everything in the file when opened): the used
    /// end.
    pub file_end: u64,
    /// The host file's length as this session left it (grown ahead of `file_end`, see the module docs).
    pub host_len: u64,
    /// BAT entries changed in memory only (blocks the mapping allocated, see [`Shared::link`]), logged by the
    /// next flush, the next logged update of their BAT page, or close.
    pub unlogged: BTreeSet<usize>,
    /// Payload blocks being allocated or promoted right now.
    pub inflight: HashSet<u64>,
}

impl Shared {
    /// Locks the metadata state (a panic elsewhere does not make the state unusable: every update is logged).
    pub fn lock_meta(&self) -> MutexGuard<'_, MetaState> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until an allocation in flight completes.
    pub fn wait_allocated<'a>(&self, meta: MutexGuard<'a, MetaState>) -> MutexGuard<'a, MetaState> {
        self.allocated
            .wait(meta)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// BAT entry `index` (0 when out of range, which validated geometry never asks for).
    #[inline]
    pub fn entry(&self, index: usize) -> u64 {
        self.bat.get(index).map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Every BAT entry as it is now.
    pub fn bat_snapshot(&self) -> Vec<u64> {
        self.bat.iter().map(|e| e.load(Ordering::Acquire)).collect()
    }

    /// Stores BAT entry `index` (under `meta`); returns whether the index is in the table.
    fn store(&self, index: usize, value: u64) -> bool {
        self.bat
            .get(index)
            .map(|e| e.store(value, Ordering::Release))
            .is_some()
    }

    /// What payload BAT entry `index` says its block is.
    pub fn block(&self, index: usize) -> PayloadBlock {
        PayloadBlock::of(self.entry(index), self.parent.is_some())
    }

    /// Whether blocks must stay allocated (a fixed image).
    pub fn leave_allocated(&self) -> bool {
        self.params.file_flags & LEAVE_BLOCKS_ALLOCATED != 0 && !self.geometry.has_parent
    }

    /// The metadata areas blocks may not overlap.
    pub fn fixed_regions(&self) -> Vec<Region> {
        fixed_regions(&self.regions, self.log_region)
    }

    /// Changes the data write GUID before the session's first user-visible change (2.2.2).
    pub fn ensure_data_guid(&self, meta: &mut MetaState) -> Result<()> {
        if self.data_guid_written.load(Ordering::Acquire) {
            return Ok(());
        }
        let guid = Guid::random();
        meta.headers
            .update_both(&self.meta_file, |h| h.data_write_guid = guid.0)?;
        self.data_guid_written.store(true, Ordering::Release);
        Ok(())
    }

    /// Sets BAT entries through the log: the 4 KiB BAT pages holding them (with every entry of those pages as
    /// the in-memory table has it, so unlogged entries there are logged too) are logged, applied, then the
    /// in-memory table is updated.
    pub fn commit(&self, meta: &mut MetaState, changes: &[(usize, u64)]) -> Result<()> {
        let bat_offset = self.regions.bat.offset;
        let page_of = |index: usize| bat_offset + index as u64 * 8 / 4096 * 4096;
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(index, _) in changes {
            let page_offset = page_of(index);
            if !pages.iter().any(|(o, _)| *o == page_offset) {
                let mut page = vec![0u8; 4096];
                self.meta_file.read_exact_at(page_offset, &mut page)?;
                pages.push((page_offset, page));
            }
        }
        for (page_offset, page) in &mut pages {
            let first = ((*page_offset - bat_offset) / 8) as usize;
            for (i, bytes) in page.chunks_exact_mut(8).enumerate() {
                if let Some(value) = self.bat.get(first + i) {
                    bytes.copy_from_slice(&value.load(Ordering::Acquire).to_le_bytes());
                }
            }
        }
        for &(index, value) in changes {
            let byte = index as u64 * 8;
            if let Some((_, page)) = pages.iter_mut().find(|(o, _)| *o == page_of(index)) {
                let within = (byte % 4096) as usize;
                page[within..within + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        meta.log.write(&self.meta_file, &mut meta.headers, &pages)?;
        for &(index, value) in changes {
            self.store(index, value);
        }
        meta.unlogged
            .retain(|&index| !pages.iter().any(|(o, _)| *o == page_of(index)));
        Ok(())
    }

    /// Links payload BAT entry `index` to `value` in memory only (a block the mapping allocated: readers and
    /// writers use it at once); it is logged later (see [`MetaState::unlogged`]). Only for blocks whose old
    /// state reads as zeros: the new block is a hole that reads as zeros too, so a crash, or a read racing its
    /// first write, sees the old content wherever the new data is not yet.
    pub fn link(&self, meta: &mut MetaState, index: usize, value: u64) {
        if self.store(index, value) {
            meta.unlogged.insert(index);
        }
    }

    /// Logs the entries linked in memory only (the caller flushed the data first): at most
    /// [`PAGES_PER_ENTRY`] BAT pages per log entry.
    pub fn log_unlogged(&self, meta: &mut MetaState) -> Result<()> {
        while !meta.unlogged.is_empty() {
            let mut changes = Vec::new();
            let mut page = None;
            let mut pages = 0;
            for &index in &meta.unlogged {
                let p = index / 512;
                if page != Some(p) {
                    if pages == PAGES_PER_ENTRY {
                        break;
                    }
                    pages += 1;
                    page = Some(p);
                }
                changes.push((index, self.entry(index)));
            }
            self.commit(meta, &changes)?;
        }
        Ok(())
    }

    /// Reserves a new block at the used end of the file, growing the file ahead of it (see the module docs):
    /// the block reads as zeros (a hole past everything the file held when opened).
    pub fn reserve_block(&self, meta: &mut MetaState) -> Result<u64> {
        let offset = meta.file_end;
        let block_size = self.geometry.block_size;
        let end = offset + block_size;
        if end > meta.host_len {
            let target = grow_target(end, block_size);
            meta.host_len = match self.meta_file.set_len(target) {
                Ok(()) => target,
                Err(_) => {
                    self.meta_file.set_len(end)?;
                    end
                }
            };
        }
        meta.file_end = end;
        Ok(offset)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let mut meta = self.lock_meta();
        // Blocks linked in memory only: their data first, then their BAT entries through the log.
        let logged = meta.unlogged.is_empty()
            || (self.meta_file.sync_data().is_ok() && self.log_unlogged(&mut meta).is_ok());
        // Everything logged is applied and flushed: mark the log empty, so other tools open the image without a
        // replay. A failure here leaves a log that replays harmlessly.
        let meta = &mut *meta;
        let closed = logged && meta.log.close(&self.meta_file, &mut meta.headers).is_ok();
        // Only with the log empty may the file get shorter than a logged entry says it was.
        if closed && meta.host_len > meta.file_end && self.meta_file.set_len(meta.file_end).is_ok()
        {
            let _ = self.meta_file.sync_data();
        }
    }
}

/// The metadata areas of an image with these regions: header section, log, BAT, metadata region.
pub(crate) fn fixed_regions(regions: &Regions, log: Region) -> Vec<Region> {
    vec![
        Region {
            offset: 0,
            length: HEADER_SECTION_END,
        },
        log,
        regions.bat,
        regions.metadata,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_proportional_bounded_aligned_and_covers_two_blocks() {
        let block = 8 * MIB;
        // Small files: at least GROW_MIN ahead.
        assert_eq!(grow_target(12 * MIB, block), 44 * MIB);
        // Proportional in between.
        assert_eq!(grow_target(1 << 30, block), (1 << 30) + 128 * MIB);
        // At most GROW_MAX ahead, unless two blocks are more.
        assert_eq!(grow_target(16 << 30, block), (16 << 30) + GROW_MAX);
        assert_eq!(grow_target(16 << 30, 256 * MIB), (16 << 30) + 512 * MIB);
        for needed in [1, MIB + 1, 3 * MIB + 5, 100 * MIB + 7] {
            let t = grow_target(needed, MIB);
            assert_eq!(t % MIB, 0);
            assert!(t >= needed + GROW_MIN);
        }
        assert!(grow_target(u64::MAX - 1, block) > 0);
    }

    #[test]
    fn the_bitmap_cache_is_bounded() {
        let mut cache = BitmapCache::default();
        let each = 64 << 10;
        let fit = BITMAP_CACHE_BYTES / each;
        for block in 0..fit as u64 {
            cache.insert(block, vec![1u8; each].into_boxed_slice());
        }
        assert_eq!(cache.blocks.len(), fit);
        assert_eq!(cache.bytes, BITMAP_CACHE_BYTES);
        // Replacing an entry keeps the count; one more starts over.
        cache.insert(0, vec![2u8; each].into_boxed_slice());
        assert_eq!(cache.bytes, BITMAP_CACHE_BYTES);
        cache.insert(fit as u64, vec![3u8; each].into_boxed_slice());
        assert_eq!(cache.blocks.len(), 1);
        assert_eq!(cache.bytes, each);
    }
}
