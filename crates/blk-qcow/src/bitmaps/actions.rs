//! `impl DirtyBitmaps for Qcow2`: listing the bitmaps, their dirty extents, and changing them (qemu-img
//! bitmap's actions) all or none under the metadata lock, so a rotation is atomic with respect to guest
//! writes, which set bits under the same lock.

use blk_core::{BitmapAction, DirtyBitmapInfo, DirtyBitmaps, Error, ErrorKind, Operation, Result};

use crate::bitmaps::directory::{
    Bitmap, BitmapDirectory, FLAG_AUTO, FLAG_IN_USE, GRANULARITY_BITS, MAX_BITMAPS,
    MAX_DIRECTORY_BYTES, MAX_NAME_BYTES, MAX_PHYS_BYTES,
};
use crate::bitmaps::dirty_bits::DirtyBits;
use crate::bitmaps::persistent::{KeptBitmap, PersistentBitmaps, MAX_BITMAP_MEMORY};
use crate::image::Qcow2;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Dirty bitmap '{name}' not found"),
    )
}

fn inconsistent(name: &str) -> Error {
    invalid(format!(
        "Bitmap '{name}' is inconsistent and cannot be used"
    ))
}

/// The default granularity of a new bitmap (QEMU's `bdrv_get_default_bitmap_granularity`): the cluster size,
/// at least 4 KiB.
pub(crate) fn default_granularity(cluster_size: u64) -> u64 {
    cluster_size.max(4096)
}

impl PersistentBitmaps {
    /// The index of bitmap `name`, refusing an inconsistent one when `usable`.
    fn index(&self, name: &str, usable: bool) -> Result<usize> {
        let i = self.find(name).ok_or_else(|| not_found(name))?;
        if usable && self.kept.get(i).is_some_and(|k| k.bits.is_none()) {
            return Err(inconsistent(name));
        }
        Ok(i)
    }

    /// Applies one action for a disk of `size` bytes with `cluster_size`-byte clusters.
    fn apply_one(&mut self, action: &BitmapAction, size: u64, cluster_size: u64) -> Result<()> {
        match action {
            BitmapAction::Add {
                name,
                granularity,
                enabled,
            } => {
                if self.find(name).is_some() {
                    return Err(invalid(format!("Bitmap already exists: {name}")));
                }
                let granularity = granularity.unwrap_or(default_granularity(cluster_size));
                let bits = granularity.trailing_zeros() as u8;
                if !granularity.is_power_of_two() || !GRANULARITY_BITS.contains(&bits) {
                    return Err(invalid("Granularity must be power of 2 and at least 512"));
                }
                let persistent =
                    |why: &str| invalid(format!("Can't make bitmap '{name}' persistent: {why}"));
                if name.len() > usize::from(MAX_NAME_BYTES) {
                    return Err(persistent("Name length exceeds maximum (1023 characters)"));
                }
                if self.kept.len() >= MAX_BITMAPS as usize {
                    return Err(persistent(
                        "Maximum number of persistent bitmaps is already reached",
                    ));
                }
                let entry = Bitmap {
                    name: name.clone(),
                    raw_name: name.as_bytes().to_vec(),
                    granularity,
                    flags: if *enabled { FLAG_AUTO } else { 0 },
                    table_offset: 0,
                    table_size: 0,
                };
                let dir_bytes: usize = self
                    .kept
                    .iter()
                    .map(|k| (24 + k.entry.raw_name.len()).next_multiple_of(8))
                    .sum::<usize>()
                    + (24 + name.len()).next_multiple_of(8);
                if dir_bytes as u64 > MAX_DIRECTORY_BYTES {
                    return Err(persistent("Not enough space in the bitmap directory"));
                }
                let data = DirtyBits::memory_for(size, bits);
                if data.next_multiple_of(cluster_size) > MAX_PHYS_BYTES {
                    return Err(persistent(
                        "Too much space will be occupied by the bitmap. Use larger granularity",
                    ));
                }
                let memory: u64 = self
                    .kept
                    .iter()
                    .filter_map(|k| k.bits.as_ref())
                    .map(|b| b.byte_len())
                    .sum::<u64>()
                    + data;
                if memory > MAX_BITMAP_MEMORY {
                    return Err(persistent(&format!(
                        "the bitmaps would need {memory} bytes of memory, more than {MAX_BITMAP_MEMORY}"
                    )));
                }
                self.kept.push(KeptBitmap {
                    entry,
                    bits: Some(DirtyBits::new(size, bits)),
                    table: Vec::new(),
                    changed: true,
                });
                self.directory_changed = true;
            }
            BitmapAction::Remove { name } => {
                let i = self.index(name, false)?;
                let k = self.kept.remove(i);
                self.removed.push(k);
                self.directory_changed = true;
            }
            BitmapAction::Clear { name } => {
                let i = self.index(name, true)?;
                if let Some(k) = self.kept.get_mut(i) {
                    if let Some(bits) = &mut k.bits {
                        bits.clear();
                    }
                    k.changed = true;
                }
            }
            BitmapAction::Enable { name } | BitmapAction::Disable { name } => {
                let i = self.index(name, true)?;
                let enable = matches!(action, BitmapAction::Enable { .. });
                if let Some(k) = self.kept.get_mut(i) {
                    let flags = if enable {
                        k.entry.flags | FLAG_AUTO
                    } else {
                        k.entry.flags & !(FLAG_AUTO | FLAG_IN_USE)
                    };
                    if flags != k.entry.flags {
                        k.entry.flags = flags;
                        self.directory_changed = true;
                    }
                }
            }
            BitmapAction::Merge { source, target } => {
                let t = self.index(target, true)?;
                let s = self.index(source, true)?;
                let extents: Vec<(u64, u64)> = self
                    .kept
                    .get(s)
                    .and_then(|k| k.bits.as_ref())
                    .map(|b| b.extents().collect())
                    .unwrap_or_default();
                self.mark(t, &extents);
            }
            BitmapAction::MarkDirty { name, extents } => {
                let t = self.index(name, true)?;
                self.mark(t, extents);
            }
        }
        Ok(())
    }

    /// Sets the granules `extents` touch in bitmap `index`.
    fn mark(&mut self, index: usize, extents: &[(u64, u64)]) {
        if let Some(k) = self.kept.get_mut(index) {
            if let Some(bits) = &mut k.bits {
                for &(offset, len) in extents {
                    k.changed |= bits.set_range(offset, len);
                }
            }
        }
    }
}

/// A VMM's view of the persistent dirty bitmaps of an open image:
///
/// ```
/// use std::sync::Arc;
/// use blk_core::{BitmapAction, DenyNamedImages, DirtyBitmaps, DiskFile, HostOpenOptions, MappedDisk};
/// use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// Qcow2::create(&path, &Qcow2CreateOptions::from_key_values(Some(16 << 20), &[])?, &DenyNamedImages)?;
/// let options = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
/// let disk = MappedDisk::new(Qcow2::open(&path, &options)?);
/// disk.apply(&[BitmapAction::Add { name: "full".into(), granularity: Some(65536), enabled: true }])?;
/// disk.write_all_at(70_000, b"hello")?;
/// assert_eq!(disk.dirty_extents("full")?, vec![(65536, 65536)]);
/// // Rotation for an incremental backup: "full" stops, "inc" starts, in one step.
/// disk.rotate("full", "inc")?;
/// disk.write_all_at(1 << 20, b"more")?;
/// assert_eq!(disk.dirty_extents("full")?, vec![(65536, 65536)]);
/// assert_eq!(disk.dirty_extents("inc")?, vec![(1 << 20, 65536)]);
/// # Ok(())
/// # }
/// ```
impl DirtyBitmaps for Qcow2 {
    fn bitmaps(&self) -> Result<Vec<DirtyBitmapInfo>> {
        self.list_bitmaps()
            .map_err(|e| self.context(e, Operation::Info, None))
    }

    fn dirty_extents(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        self.bitmap_extents(name)
            .map_err(|e| self.context(e, Operation::Read, None))
    }

    fn apply(&self, actions: &[BitmapAction]) -> Result<()> {
        self.writable(Operation::Write, 0)?;
        self.apply_bitmap_actions(actions)
            .map_err(|e| self.context(e, Operation::Write, None))
    }
}

impl Qcow2 {
    /// [`DirtyBitmaps::bitmaps`] without the error context.
    fn list_bitmaps(&self) -> Result<Vec<DirtyBitmapInfo>> {
        let meta = self.lock_metadata();
        let entries: Vec<(Bitmap, bool)> = if meta.bitmaps.active {
            meta.bitmaps
                .kept
                .iter()
                .map(|k| (k.entry.clone(), k.bits.is_none()))
                .collect()
        } else {
            let file = self.host_file();
            let file_len = file.len()?;
            match BitmapDirectory::from_header(file, file_len, &meta.header)? {
                Some(dir) => dir
                    .read(file, self.geometry().cluster_size, meta.header.size)?
                    .into_iter()
                    .map(|b| {
                        let in_use = b.in_use();
                        (b, in_use)
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        Ok(entries
            .into_iter()
            .map(|(b, inconsistent)| DirtyBitmapInfo {
                enabled: b.auto(),
                name: b.name,
                granularity: b.granularity,
                inconsistent,
            })
            .collect())
    }

    /// [`DirtyBitmaps::dirty_extents`] without the error context.
    fn bitmap_extents(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        let meta = self.lock_metadata();
        if meta.bitmaps.active {
            let i = meta.bitmaps.index(name, true)?;
            return Ok(meta
                .bitmaps
                .kept
                .get(i)
                .and_then(|k| k.bits.as_ref())
                .map(|b| b.extents().collect())
                .unwrap_or_default());
        }
        // A read-only open: the bitmap read from the image.
        let file = self.host_file();
        let file_len = file.len()?;
        let dir = BitmapDirectory::from_header(file, file_len, &meta.header)?
            .ok_or_else(|| not_found(name))?;
        let entries = dir.read(file, self.geometry().cluster_size, meta.header.size)?;
        let entry = entries
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| not_found(name))?;
        if entry.in_use() {
            return Err(inconsistent(name));
        }
        let (bits, _) = meta.load_bitmap(file, entry, meta.header.size)?;
        Ok(bits.extents().collect())
    }

    /// [`DirtyBitmaps::apply`] on a writable open, without the error context.
    fn apply_bitmap_actions(&self, actions: &[BitmapAction]) -> Result<()> {
        let file = self.host_file();
        let mut meta = self.lock_metadata();
        if !meta.bitmaps.active {
            if actions
                .iter()
                .any(|a| matches!(a, BitmapAction::Add { .. }))
            {
                return Err(invalid("Cannot store dirty bitmaps in qcow2 v2 files"));
            }
            return match actions.first() {
                None => Ok(()),
                Some(
                    BitmapAction::Remove { name }
                    | BitmapAction::Clear { name }
                    | BitmapAction::Enable { name }
                    | BitmapAction::Disable { name }
                    | BitmapAction::MarkDirty { name, .. }
                    | BitmapAction::Add { name, .. },
                ) => Err(not_found(name)),
                Some(BitmapAction::Merge { target, .. }) => Err(not_found(target)),
            };
        }
        let mut next = meta.bitmaps.clone();
        let size = meta.header.size;
        let cs = self.geometry().cluster_size;
        for action in actions {
            next.apply_one(action, size, cs)?;
        }
        next.refresh();
        meta.bitmaps = next;
        meta.store_bitmaps(file)?;
        meta.flush(file)
    }
}
