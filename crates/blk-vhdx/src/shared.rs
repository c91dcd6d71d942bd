//! [`Shared`]: the state every handle of one open image shares, and the metadata updates made through it (the
//! data write GUID, BAT entries through the log, blocks reserved at the end of the file).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use blk_core::{HostFile, Result};

use crate::bat::{Geometry, PayloadBlock};
use crate::guid::Guid;
use crate::header::{Headers, HEADER_SECTION_END};
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
    /// The BAT (payload and sector bitmap entries). Lock order: `meta` before `bat`.
    pub bat: RwLock<Vec<u64>>,
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
}

/// What `meta` protects.
#[derive(Debug)]
pub(crate) struct MetaState {
    pub headers: Headers,
    pub log: LogWriter,
    /// Where the next block is allocated (1 MiB aligned, past everything in the file).
    pub file_end: u64,
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

    /// The BAT, for reading (held only to copy entries, never across I/O).
    pub fn bat_read(&self) -> RwLockReadGuard<'_, Vec<u64>> {
        self.bat.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// BAT entry `index` (0 when out of range, which validated geometry never asks for).
    pub fn entry(&self, index: usize) -> u64 {
        self.bat_read().get(index).copied().unwrap_or(0)
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

    /// Sets BAT entries through the log: the 4 KiB BAT pages holding them are logged, applied, then the
    /// in-memory table is updated.
    pub fn commit(&self, meta: &mut MetaState, changes: &[(usize, u64)]) -> Result<()> {
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(index, value) in changes {
            let byte = index as u64 * 8;
            let page_offset = self.regions.bat.offset + byte / 4096 * 4096;
            let slot = match pages.iter().position(|(o, _)| *o == page_offset) {
                Some(slot) => slot,
                None => {
                    let mut page = vec![0u8; 4096];
                    self.meta_file.read_exact_at(page_offset, &mut page)?;
                    pages.push((page_offset, page));
                    pages.len() - 1
                }
            };
            let within = (byte % 4096) as usize;
            pages[slot].1[within..within + 8].copy_from_slice(&value.to_le_bytes());
        }
        meta.log.write(&self.meta_file, &mut meta.headers, &pages)?;
        let mut bat = self.bat.write().unwrap_or_else(PoisonError::into_inner);
        for &(index, value) in changes {
            if let Some(slot) = bat.get_mut(index) {
                *slot = value;
            }
        }
        Ok(())
    }

    /// Reserves a new block at the end of the file and grows the file over it.
    pub fn reserve_block(&self, meta: &mut MetaState) -> Result<u64> {
        let offset = meta.file_end;
        let end = offset + self.geometry.block_size;
        self.meta_file.set_len(end)?;
        meta.file_end = end;
        Ok(offset)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let meta = self.meta.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Everything logged is applied and flushed: mark the log empty, so other tools open the image without a
        // replay. A failure here leaves a log that replays harmlessly.
        let _ = meta.log.close(&self.meta_file, &mut meta.headers);
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
