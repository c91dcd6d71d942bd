//! The bitmaps a writable open keeps (QEMU's `qcow2_load_dirty_bitmaps` and
//! `qcow2_store_persistent_dirty_bitmaps`), held in the metadata (behind the metadata lock, which every
//! guest write, write-zeroes and discard already takes).
//!
//! - Open: every bitmap not found in use is loaded; the enabled (`auto`) ones are marked in use on disk
//!   (the directory rewritten in place, synced) before any guest write. A bitmap found in use is
//!   inconsistent: it is not loaded and is kept in the directory as it is (`check -r` removes it).
//! - Writes: [`Metadata::track_write`] sets the bits of every enabled bitmap; a word whose bits are set
//!   already is only read. When a bit changes while the bitmaps are not marked in use on disk (after a store),
//!   they are marked first.
//! - Flush and close: [`Metadata::store_bitmaps`] writes each changed bitmap to fresh clusters and a fresh
//!   table, flushes the refcounts, rewrites the directory with the new tables and `in_use` clear, and frees
//!   the old tables and clusters.

use blk_core::{Error, ErrorKind, HostFile, Result};

use crate::bitmaps::directory::{
    self, Bitmap, BitmapDirectory, AUTOCLEAR_BITMAPS, EXT_BITMAPS, FLAG_IN_USE,
};
use crate::bitmaps::dirty_bits::DirtyBits;
use crate::metadata::overlap::{BITMAP_DIRECTORY, IGNORE_NONE};
use crate::metadata::Metadata;

/// The memory all bitmaps of one open may take (bytes of bits and of table entries): a writable open of an
/// image whose bitmaps need more is refused rather than leave them stale.
pub(crate) const MAX_BITMAP_MEMORY: u64 = 512 << 20;

/// One bitmap of the directory, as this open keeps it.
#[derive(Debug, Clone)]
pub(crate) struct KeptBitmap {
    /// The directory entry as it is on disk.
    pub(crate) entry: Bitmap,
    /// Its bits (None: found in use on open, inconsistent, kept as it is).
    pub(crate) bits: Option<DirtyBits>,
    /// The entries of its table on disk (empty for a bitmap not stored yet).
    pub(crate) table: Vec<u64>,
    /// Whether the bits differ from the stored ones.
    pub(crate) changed: bool,
}

impl KeptBitmap {
    /// Whether the bitmap tracks guest writes.
    fn tracks(&self) -> bool {
        self.entry.auto() && self.bits.is_some()
    }
}

/// The persistent bitmaps of a writable open (empty otherwise).
#[derive(Debug, Clone, Default)]
pub(crate) struct PersistentBitmaps {
    /// The directory, in order.
    pub(crate) kept: Vec<KeptBitmap>,
    /// Whether this open maintains the bitmaps (a writable open that loaded them).
    pub(crate) active: bool,
    /// Whether some bitmap tracks guest writes: the only test on a write when none does.
    pub(crate) tracking: bool,
    /// Whether the tracking bitmaps are marked in use on disk.
    pub(crate) in_use_on_disk: bool,
    /// Whether the directory changed (bitmaps added or removed, flags changed) since it was written.
    pub(crate) directory_changed: bool,
    /// Removed bitmaps whose clusters are freed once the directory no longer names them.
    pub(crate) removed: Vec<KeptBitmap>,
}

impl PersistentBitmaps {
    /// Recomputes `tracking` after the set changed.
    pub(crate) fn refresh(&mut self) {
        self.tracking = self.active && self.kept.iter().any(KeptBitmap::tracks);
    }

    /// The bitmap named `name`.
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.kept.iter().position(|k| k.entry.name == name)
    }
}

impl Metadata {
    /// Loads the bitmaps for a writable open of an image of `file_len` bytes and marks the enabled ones in
    /// use on disk. Returns whether the image has bitmaps this open keeps (the autoclear bit stays set). A
    /// directory QEMU would refuse, a bitmap table with bad entries or bitmaps over [`MAX_BITMAP_MEMORY`]
    /// fail the open (the bitmaps are never silently invalidated).
    pub(crate) fn open_bitmaps(&mut self, file: &HostFile, file_len: u64) -> Result<bool> {
        let header = self.header.clone();
        // Bitmaps can be added to any v3 image (QEMU refuses v2: "Cannot store dirty bitmaps in qcow2 v2
        // files").
        self.bitmaps.active = header.version >= 3;
        let Some(dir) = BitmapDirectory::from_header(file, file_len, &header)? else {
            return Ok(false);
        };
        let size = self.g.size;
        let entries = dir.read(file, self.g.cluster_size, size)?;
        // The bits and the tables' entries kept in memory.
        let memory: u64 = entries
            .iter()
            .filter(|b| !b.in_use())
            .map(|b| {
                DirtyBits::memory_for(size, b.granularity_bits()) + u64::from(b.table_size) * 8
            })
            .sum();
        if memory > MAX_BITMAP_MEMORY {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!(
                    "the persistent bitmaps need {memory} bytes of memory, more than the {MAX_BITMAP_MEMORY} \
                     a writable open keeps; open the image read-only or remove bitmaps with qemu-img bitmap"
                ),
            ));
        }
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries {
            let (bits, table) = if entry.in_use() {
                (None, Vec::new())
            } else {
                let (bits, table) = self.load_bitmap(file, &entry, size)?;
                (Some(bits), table)
            };
            kept.push(KeptBitmap {
                entry,
                bits,
                table,
                changed: false,
            });
        }
        self.bitmaps = PersistentBitmaps {
            kept,
            active: true,
            ..PersistentBitmaps::default()
        };
        self.bitmaps.refresh();
        if self.bitmaps.tracking {
            self.mark_bitmaps_in_use(file)?;
        }
        Ok(true)
    }

    /// Whether guest writes set bits in persistent bitmaps (`track_write` has work to do).
    pub(crate) fn tracks_writes(&self) -> bool {
        self.bitmaps.tracking
    }

    /// Sets the bits `offset..offset + len` touches in every enabled bitmap, marking them in use on disk
    /// first when a bit changes while they are not.
    #[inline]
    pub(crate) fn track_write(&mut self, file: &HostFile, offset: u64, len: u64) -> Result<()> {
        if !self.bitmaps.tracking {
            return Ok(());
        }
        let mut changed = false;
        for k in &mut self.bitmaps.kept {
            if !k.entry.auto() {
                continue;
            }
            if let Some(bits) = &mut k.bits {
                if bits.set_range(offset, len) {
                    k.changed = true;
                    changed = true;
                }
            }
        }
        if changed && !self.bitmaps.in_use_on_disk {
            self.mark_bitmaps_in_use(file)?;
        }
        Ok(())
    }

    /// Marks the tracking bitmaps in use on disk (the directory rewritten, synced).
    pub(crate) fn mark_bitmaps_in_use(&mut self, file: &HostFile) -> Result<()> {
        for k in &mut self.bitmaps.kept {
            if k.tracks() {
                k.entry.flags |= FLAG_IN_USE;
            }
        }
        self.write_bitmap_directory(file)?;
        self.bitmaps.in_use_on_disk = true;
        Ok(())
    }

    /// Stores every changed bitmap and clears `in_use` of the loaded ones (flush and close): fresh clusters
    /// and tables, the refcounts flushed, the directory rewritten, the old tables freed.
    pub(crate) fn store_bitmaps(&mut self, file: &HostFile) -> Result<()> {
        if !self.bitmaps.active {
            return Ok(());
        }
        let mut any = false;
        for k in &mut self.bitmaps.kept {
            if let Some(bits) = &mut k.bits {
                if bits.size() != self.header.size {
                    bits.resize(self.header.size);
                    k.changed = true;
                }
                any |= k.changed || k.entry.in_use();
            }
        }
        if !any && !self.bitmaps.directory_changed {
            return Ok(());
        }
        let mut old_tables = Vec::new();
        for i in 0..self.bitmaps.kept.len() {
            let Some(k) = self.bitmaps.kept.get(i) else {
                break;
            };
            let Some(bits) = k.bits.as_ref().filter(|_| k.changed || k.table.is_empty()) else {
                continue;
            };
            let bits = bits.clone();
            let (offset, table) = self.store_bitmap(file, &bits)?;
            if let Some(k) = self.bitmaps.kept.get_mut(i) {
                let old = std::mem::replace(&mut k.table, table);
                if !old.is_empty() {
                    old_tables.push((k.entry.table_offset, old));
                }
                k.entry.table_offset = offset;
                k.entry.table_size = k.table.len() as u32;
                k.changed = false;
            }
        }
        for k in &mut self.bitmaps.kept {
            if k.bits.is_some() {
                k.entry.flags &= !FLAG_IN_USE;
            }
        }
        // The new clusters' refcounts reach the disk before the directory points to them.
        self.flush(file)?;
        self.write_bitmap_directory(file)?;
        self.bitmaps.in_use_on_disk = false;
        self.bitmaps.directory_changed = false;
        for (offset, table) in old_tables {
            self.free_bitmap_table(file, offset, &table)?;
        }
        for k in std::mem::take(&mut self.bitmaps.removed) {
            // A bitmap never stored has no clusters; one found in use has its table read now (a table that
            // cannot be read leaves its clusters leaked, which `check -r` frees, rather than free wrong ones).
            let table = if k.table.is_empty() && k.entry.table_offset != 0 {
                match self.read_bitmap_table(file, &k.entry) {
                    Ok(table) => table,
                    Err(_) => continue,
                }
            } else {
                k.table
            };
            if !table.is_empty() {
                self.free_bitmap_table(file, k.entry.table_offset, &table)?;
            }
        }
        Ok(())
    }

    /// Writes the directory of the kept bitmaps (synced): in place when its size is unchanged, else to fresh
    /// clusters with the header extension updated and the old directory freed; with no bitmap left, the
    /// extension is removed and the autoclear bit cleared (QEMU's `update_ext_header_and_dir`).
    pub(crate) fn write_bitmap_directory(&mut self, file: &HostFile) -> Result<()> {
        let entries: Vec<Bitmap> = self.bitmaps.kept.iter().map(|k| k.entry.clone()).collect();
        let bytes = directory::serialize(&entries);
        let (old_offset, old_size) = self.overlap.bitmap_directory;
        if old_size != 0 && bytes.len() as u64 == old_size {
            self.guard_write(file, BITMAP_DIRECTORY, old_offset, old_size)?;
            file.write_all_at(old_offset, &bytes)?;
            return file.sync_data();
        }
        let cs = self.g.cluster_size;
        let mut header = self.header.clone();
        // QEMU writes the bitmaps extension right after the feature table, before unknown extensions.
        let position = header
            .extensions
            .other
            .iter()
            .position(|(kind, _)| *kind == EXT_BITMAPS)
            .unwrap_or(0);
        header
            .extensions
            .other
            .retain(|(kind, _)| *kind != EXT_BITMAPS);
        let mut new_dir = (0, 0);
        if entries.is_empty() {
            header.autoclear &= !AUTOCLEAR_BITMAPS;
        } else {
            let len = bytes.len() as u64;
            let at = self.allocate_clusters(file, len.div_ceil(cs))?;
            self.guard_write(file, IGNORE_NONE, at, len)?;
            file.write_all_at(at, &bytes)?;
            header.autoclear |= AUTOCLEAR_BITMAPS;
            let payload = directory::extension_payload(entries.len() as u32, len, at);
            let position = position.min(header.extensions.other.len());
            header
                .extensions
                .other
                .insert(position, (EXT_BITMAPS, payload));
            new_dir = (at, len);
        }
        self.write_header_cluster(file, header)?;
        self.overlap.bitmap_directory = new_dir;
        if old_size != 0 {
            self.change_refcount_range(file, old_offset, old_size, -1)?;
        }
        Ok(())
    }

    /// Writes `header` over cluster 0 after the caches reached the disk, synced (as `header_update`).
    fn write_header_cluster(
        &mut self,
        file: &HostFile,
        header: crate::image::header::Header,
    ) -> Result<()> {
        let cs = self.g.cluster_size;
        let mut cluster0 = header.serialize();
        if cluster0.len() as u64 > cs {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the bitmaps extension does not fit in the header cluster",
            ));
        }
        self.flush(file)?;
        cluster0.resize(cs as usize, 0);
        file.write_all_at(0, &cluster0)?;
        file.sync_data()?;
        self.header = header;
        Ok(())
    }
}
