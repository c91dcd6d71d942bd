//! [`resize`]: changing the virtual size of an image that is not in use, as `qemu-img resize` does (QEMU's
//! `qcow2_co_truncate` with preallocation off).
//!
//! Growing writes a larger L1 table when the new size needs more entries (new clusters, written and synced,
//! then the header's `l1_size` / `l1_table_offset` in one synced write, then the old table freed) and then
//! the header's size. Shrinking (only with [`Qcow2ResizeOptions::shrink`]) discards every guest cluster past
//! the new end (L2 entries cleared and synced before the refcounts drop), clears the L1 entries past the new
//! end on disk and frees their L2 tables (the header's `l1_size` stays, as QEMU keeps it), drops refcount
//! blocks that describe nothing but themselves from the refcount table, truncates the file after its last
//! used cluster and writes the header's size. A crash at any point leaves at most leaked clusters.
//!
//! Differences from QEMU: refcount blocks that count only free clusters are dropped only past the last used
//! cluster (this crate never allocates inside the file where no refcount block describes the space, so
//! dropping them there would make that space unusable); the discard of the tail does not allocate an empty
//! L2 table where QEMU's does. The file may therefore end earlier than QEMU's. Contents, `check` and virtual size
//! are the same.
//!
//! # Limits
//!
//! The new L1 table is at most 32 MiB (QEMU's cap, checked before anything is allocated); the refcount table
//! rewritten by a shrink is at most 8 MiB (the cap checked at open); refcount blocks and L2 tables are read
//! one cluster (<= 2 MiB) at a time, each checked to lie inside the used part of the file first.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    Error, ErrorKind, HostFile, HostOpenOptions, ImageOpener, NamedImage, Operation, Result,
};

use crate::bitmaps::dirty_bits::DirtyBits;
use crate::bitmaps::persistent::MAX_BITMAP_MEMORY;
use crate::image::header::{Header, MAX_L1_BYTES};
use crate::image::options::{Preallocation, Qcow2OpenOptions};
use crate::image::Qcow2;
use crate::io::discard::{holds_reference, Freed};
use crate::metadata::overlap::{ACTIVE_L1, REFCOUNT_TABLE};
use crate::metadata::refcount::{block_set, REFTABLE_OFFSET_MASK};
use crate::metadata::subclusters::ALL_ALLOCATED;
use crate::metadata::tables::{set_entry, L2Entry, L1_OFFSET_MASK, ZERO};
use crate::metadata::{read_zero_filled, Metadata};
use crate::FORMAT_NAME;

/// Byte offset of the header's size field.
const SIZE_FIELD: u64 = 24;

/// Options of [`resize`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Qcow2ResizeOptions {
    /// How to open the image file (must be writable; the lock mode as the user asked).
    pub host: HostOpenOptions,
    /// Allow a size smaller than the current one (`qemu-img resize --shrink`).
    pub shrink: bool,
}

/// An opener for `resize`: the backing file is never asked for (`skips_backing`), anything else is refused.
#[derive(Debug)]
struct NoNamedImages;

impl ImageOpener for NoNamedImages {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn blk_core::DiskFile>> {
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "resize does not open files named inside the image ({:?} requested)",
                image.role
            ),
        )
        .with_path(&image.path))
    }

    fn skips_backing(&self) -> bool {
        true
    }
}

/// Changes the virtual size of the QCOW2 image at `path` to `new_size` bytes, as `qemu-img resize` does.
///
/// The image must not be in use. Files named inside it (the backing file) are not opened. Refused as QEMU
/// refuses: a size of 0 (as qemu-img), a size that is not a multiple of 512 or needs an L1 table over 32 MiB (`InvalidInput`), a
/// smaller size without `shrink` (`InvalidInput`, "Use the --shrink option to perform a shrink operation."),
/// a v2 image with internal snapshots (`UnsupportedFeature`), a persistent bitmap found in use
/// (`InvalidInput`, "Bitmap 'NAME' is inconsistent and cannot be used"); refused where this crate differs:
/// images with an external data file (`UnsupportedFeature`; encrypted images are refused at open), bitmaps
/// that would need more than 512 MiB of memory at the new size (`InvalidInput`). Persistent bitmaps follow
/// the new size, as QEMU's: grown with clear bits, cut at the new end.
///
/// Growing a v3 image with a backing file makes the new area read as zeros (zero flags), as QEMU does when
/// the backing file is longer than the old size (this function does not open the backing file to know; the
/// guest sees the same data either way). Not done, unlike QEMU: zeros in the part of the old last cluster
/// past the old end when that cluster is unallocated or compressed (it would need the backing file's data
/// to copy on write), and v2 images are grown without zeroing (QEMU fails the resize when their backing
/// file is longer than the old size, as v2 has no zero flag).
///
/// Limits: the new L1 table at most 32 MiB (QEMU's cap); metadata read one cluster at a time, each checked
/// to lie inside the used part of the file. A hostile image fails with `CorruptImage` before anything of the
/// bad entry is changed.
///
/// ```
/// use blk_core::{DenyNamedImages, HostOpenOptions, Mapper};
/// use blk_qcow::{resize, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions, Qcow2ResizeOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// let create = Qcow2CreateOptions::from_key_values(Some(1 << 20), &[])?;
/// Qcow2::create(&path, &create, &DenyNamedImages)?;
///
/// let options = Qcow2ResizeOptions { host: HostOpenOptions::default(), shrink: false };
/// resize(&path, 1 << 30, &options)?;
/// // Shrinking needs `shrink`.
/// assert!(resize(&path, 1 << 20, &options).is_err());
/// resize(&path, 1 << 20, &Qcow2ResizeOptions { shrink: true, ..options })?;
///
/// let open = Qcow2OpenOptions::new(HostOpenOptions::default(), std::sync::Arc::new(DenyNamedImages));
/// assert_eq!(Qcow2::open(&path, &open)?.logical_size(), 1 << 20);
/// # Ok(())
/// # }
/// ```
pub fn resize(path: impl AsRef<Path>, new_size: u64, options: &Qcow2ResizeOptions) -> Result<()> {
    resize_preallocated(path.as_ref(), new_size, options, Preallocation::Off)
}

/// [`resize`] with qemu's `--preallocation` for the grown area (QEMU's `preallocate_co` from the old size):
/// `metadata` allocates its clusters (L2 entries and refcounts; the file grows sparse), `falloc` also
/// reserves the file's blocks, `full` also writes zeros. The clusters start at the first whole cluster past
/// the old size (a partial last cluster is left as it was). A shrink with preallocation is refused, as QEMU
/// refuses it.
pub(crate) fn resize_preallocated(
    path: &Path,
    new_size: u64,
    options: &Qcow2ResizeOptions,
    preallocation: Preallocation,
) -> Result<()> {
    resize_inner(path, new_size, options, preallocation).map_err(|e| {
        e.with_format(FORMAT_NAME)
            .with_path(path)
            .with_operation(Operation::Resize)
    })
}

fn resize_inner(
    path: &Path,
    new_size: u64,
    options: &Qcow2ResizeOptions,
    preallocation: Preallocation,
) -> Result<()> {
    if new_size % 512 != 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "The new size must be a multiple of 512",
        ));
    }
    if new_size == 0 {
        // qemu-img's check (its block layer would shrink to 0).
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "New image size must be positive",
        ));
    }
    if options.host.read_only {
        return Err(blk_core::read_only_error(Operation::Resize));
    }
    let file = HostFile::open(path, options.host)?;
    // The header is checked before the image is opened (which changes it: the bitmaps marked in use).
    let file_len = file.len()?;
    let head = read_zero_filled(&file, 0, file_len.min(2 << 20) as usize)?;
    let header = Header::parse(&head, file_len)?;
    check_supported(&header)?;
    let cluster_size = 1u64 << header.cluster_bits;
    let extended_l2 = header.incompatible & crate::image::features::INCOMPAT_EXTL2 != 0;
    let l2_entries = cluster_size / if extended_l2 { 16 } else { 8 };
    let new_l1_size = new_size.div_ceil(cluster_size).div_ceil(l2_entries);
    if new_l1_size * 8 > MAX_L1_BYTES {
        // qcow2_grow_l1_table's EFBIG.
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Failed to grow the L1 table: File too large",
        ));
    }
    if new_size < header.size && !options.shrink {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Use the --shrink option to perform a shrink operation.",
        ));
    }
    if new_size < header.size && preallocation != Preallocation::Off {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Preallocation can only be used for growing images",
        ));
    }
    let open_options = Qcow2OpenOptions::new(options.host, Arc::new(NoNamedImages));
    let image = Qcow2::open_file(file, &open_options)?;
    let mut meta = image.lock_metadata();
    check_bitmaps(&meta, new_size)?;
    let old_size = meta.g.size;
    if new_size < old_size {
        shrink(&image, &mut meta, new_size, new_l1_size)?;
    } else if new_size > old_size {
        if new_l1_size > meta.g.l1_size {
            crate::snapshots::l1::grow_active(&mut meta, image.host_file(), new_l1_size)?;
        }
        let has_backing = meta
            .header
            .backing_file
            .as_ref()
            .is_some_and(|n| !n.is_empty());
        if has_backing && meta.g.version >= 3 {
            zero_new_area(&image, &mut meta, old_size, new_size)?;
        }
    }
    meta.flush(image.host_file())?;
    write_size(&image, &mut meta, new_size)?;
    // The persistent bitmaps at the new size (QEMU's truncate resizes them and stores them on close): grown
    // with clear bits, cut at the new end. The enabled ones are marked in use on disk since the open, so a
    // crash before this leaves them inconsistent, never wrong.
    meta.store_bitmaps(image.host_file())?;
    let first_new_cluster = old_size.div_ceil(meta.g.cluster_size);
    drop(meta);
    drop(image);
    if preallocation != Preallocation::Off && new_size > old_size {
        crate::offline::create::preallocate(
            path,
            preallocation,
            false,
            first_new_cluster,
            Arc::new(NoNamedImages),
        )?;
    }
    Ok(())
}

/// Refuses what QEMU refuses and what this crate does not do.
fn check_supported(header: &Header) -> Result<()> {
    if header.nb_snapshots > 0 && header.version < 3 {
        return Err(Error::new(
            ErrorKind::UnsupportedFeature,
            "Can't resize a v2 image which has snapshots",
        ));
    }
    if header.incompatible & crate::image::features::INCOMPAT_DATA_FILE != 0 {
        // QEMU truncates the data file too; opening it needs an opener this function does not take.
        return Err(Error::new(
            ErrorKind::UnsupportedFeature,
            "resizing a qcow2 image with an external data file is not supported",
        ));
    }
    Ok(())
}

/// Refuses a resize the persistent bitmaps cannot follow: a bitmap found in use (inconsistent), as QEMU's
/// `qcow2_truncate_bitmaps_check` refuses it, and bitmaps that would need more memory at the new size than a
/// writable open keeps ([`MAX_BITMAP_MEMORY`]).
fn check_bitmaps(meta: &Metadata, new_size: u64) -> Result<()> {
    let cs = meta.g.cluster_size;
    let mut memory = 0u64;
    for k in &meta.bitmaps.kept {
        if k.bits.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "Bitmap '{}' is inconsistent and cannot be used",
                    k.entry.name
                ),
            ));
        }
        let granularity_bits = k.entry.granularity_bits();
        let table_entries = new_size
            .div_ceil(1u64 << granularity_bits)
            .div_ceil(8)
            .div_ceil(cs);
        memory = memory
            .saturating_add(DirtyBits::memory_for(new_size, granularity_bits))
            .saturating_add(table_entries.saturating_mul(8));
    }
    if memory > MAX_BITMAP_MEMORY {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "at the new size the persistent bitmaps would need {memory} bytes of memory, more than the \
                 {MAX_BITMAP_MEMORY} a writable open keeps; remove bitmaps with qemu-img bitmap first"
            ),
        ));
    }
    Ok(())
}

/// Writes the new virtual size into the header (synced), as the last step.
fn write_size(image: &Qcow2, meta: &mut Metadata, new_size: u64) -> Result<()> {
    let file = image.host_file();
    file.write_all_at(SIZE_FIELD, &new_size.to_be_bytes())?;
    file.sync_data()?;
    meta.header.size = new_size;
    meta.g.size = new_size;
    Ok(())
}

/// Makes the grown area `[old_size, new_size)` read as zeros rather than as the backing file (QEMU's
/// `BDRV_REQ_ZERO_WRITE` on truncate): zero flags (or zero subcluster bits) from the first subcluster
/// boundary, explicit zeros in an allocated cluster before it. Allocated clusters keep their allocation, as
/// QEMU's zeroize without unmap; compressed ones are freed after their L2 table reached the disk.
fn zero_new_area(image: &Qcow2, meta: &mut Metadata, old_size: u64, new_size: u64) -> Result<()> {
    let file = image.host_file();
    let g = meta.g.clone();
    let cs = g.cluster_size;
    let sc = g.subcluster_size();
    let zero_start = old_size.div_ceil(sc) * sc;
    // The unaligned head, inside the subcluster holding the old end: zeros written into an allocated cluster.
    // Unallocated there, the backing file would be needed to copy on write; left as is.
    if zero_start > old_size {
        let gc = old_size / cs;
        let (_, bitmap) = meta.l2_entry_and_bitmap(file, gc)?;
        let entry = image.lookup_for_update(meta, gc)?;
        let sc_index = (old_size % cs) / sc;
        let allocated = !g.extended_l2 || bitmap & (1 << sc_index) != 0;
        if let (L2Entry::Data { host, .. }, true) = (entry, allocated) {
            let len = zero_start.min(new_size) - old_size;
            meta.guard_data_write(file, host + old_size % cs, len)?;
            file.write_all_at(host + old_size % cs, &vec![0u8; len as usize])?;
        }
    }
    let mut released = Vec::new();
    let mut zero = |meta: &mut Metadata| -> Result<()> {
        let mut pos = zero_start;
        while pos < new_size {
            let gc = pos / cs;
            let entry = image.lookup_for_update(meta, gc)?;
            if g.extended_l2 {
                let (raw, bitmap) = meta.l2_entry_and_bitmap(file, gc)?;
                let first_sc = (pos % cs) / sc;
                // Subclusters first_sc..32: zero bits set, allocated bits cleared.
                let range = ALL_ALLOCATED & !((1u64 << first_sc) - 1);
                let mut new_bitmap = (bitmap | (range << 32)) & !range;
                let mut new_raw = raw;
                if let L2Entry::Compressed { .. } = entry {
                    // A compressed cluster has no subclusters: it goes, the whole cluster reads as zeros.
                    released.push(entry);
                    new_raw = 0;
                    new_bitmap = ALL_ALLOCATED << 32;
                }
                meta.set_l2_entry(file, gc, new_raw)?;
                meta.set_l2_bitmap(file, gc, new_bitmap)?;
            } else {
                let raw = meta.l2_entry(file, gc)?;
                let new_raw = match entry {
                    L2Entry::Zero { .. } => raw,
                    L2Entry::Data { .. } => raw | ZERO,
                    L2Entry::Compressed { .. } => {
                        released.push(entry);
                        ZERO
                    }
                    L2Entry::Unallocated => ZERO,
                };
                if new_raw != raw {
                    meta.set_l2_entry(file, gc, new_raw)?;
                }
            }
            pos = (gc + 1) * cs;
        }
        Ok(())
    };
    let result = zero(meta);
    // QEMU zeroes the grown area with its guest write-zeroes path (`QCOW2_DISCARD_REQUEST`).
    image.release_all(meta, released, Freed::Request)?;
    result
}

/// Shrinks the image to `new_size` (QEMU's shrink path of `qcow2_co_truncate`).
fn shrink(image: &Qcow2, meta: &mut Metadata, new_size: u64, new_l1_size: u64) -> Result<()> {
    discard_tail(image, meta, new_size)?;
    shrink_l1_table(image, meta, new_l1_size)?;
    shrink_refcount_table(image, meta)?;
    truncate_file(image, meta)
}

/// Unmaps every guest cluster from the first cluster boundary at or after `new_size` to the end of the L1
/// table's reach (QEMU's full discard: entries cleared, not zero-flagged), one L2 table at a time: the
/// cleared table reaches the disk before the references are dropped.
pub(crate) fn discard_tail(image: &Qcow2, meta: &mut Metadata, new_size: u64) -> Result<()> {
    let file = image.host_file();
    let g = meta.g.clone();
    let first = new_size.div_ceil(g.cluster_size);
    let first_table = first / g.l2_entries;
    for l1_index in first_table..g.l1_size {
        let l1_entry = meta.l1.get(l1_index as usize).copied().unwrap_or(0);
        if l1_entry & L1_OFFSET_MASK == 0 {
            continue;
        }
        let start = (l1_index * g.l2_entries).max(first);
        let end = (l1_index + 1) * g.l2_entries;
        let mut released = Vec::new();
        let mut clear = |meta: &mut Metadata| -> Result<()> {
            for gc in start..end {
                let (raw, bitmap) = meta.l2_entry_and_bitmap(file, gc)?;
                if raw == 0 && bitmap == 0 {
                    continue;
                }
                let entry = image.lookup_for_update(meta, gc)?;
                meta.set_l2_entry(file, gc, 0)?;
                if g.extended_l2 {
                    meta.set_l2_bitmap(file, gc, 0)?;
                }
                if holds_reference(entry) {
                    released.push(entry);
                }
            }
            Ok(())
        };
        // A bad entry stops the discard there; what was cleared before it is still released.
        let result = clear(meta);
        image.release_all(meta, released, Freed::Always)?;
        result?;
    }
    Ok(())
}

/// Clears the L1 entries from `new_l1_size` on (on disk, synced) and then frees their L2 tables (QEMU's
/// `qcow2_shrink_l1_table`; the L1 size in the header is kept).
fn shrink_l1_table(image: &Qcow2, meta: &mut Metadata, new_l1_size: u64) -> Result<()> {
    let file = image.host_file();
    let old_l1_size = meta.g.l1_size;
    if new_l1_size >= old_l1_size {
        return Ok(());
    }
    meta.flush(file)?;
    let zeros = vec![0u8; ((old_l1_size - new_l1_size) * 8) as usize];
    let at = meta.g.l1_table_offset + new_l1_size * 8;
    meta.guard_write(file, ACTIVE_L1, at, zeros.len() as u64)?;
    file.write_all_at(at, &zeros)?;
    file.sync_data()?;
    let cs = meta.g.cluster_size;
    for index in (new_l1_size..old_l1_size).rev() {
        let Some(e) = meta.l1.get_mut(index as usize) else {
            continue;
        };
        let l2_offset = *e & L1_OFFSET_MASK;
        *e = 0;
        meta.l1_changed();
        if l2_offset == 0 {
            continue;
        }
        meta.l2_cache.forget(l2_offset);
        let cluster = l2_offset >> meta.g.cluster_bits;
        meta.change_refcount(file, cluster, -1)?;
        if meta.refcount(file, cluster)? == 0 {
            // QCOW2_DISCARD_ALWAYS: the freed table's space is punched.
            let _ = file.punch_hole(l2_offset, cs);
        }
    }
    Ok(())
}

/// Drops from the refcount table every refcount block that counts no cluster but (possibly) itself, as
/// QEMU's `qcow2_shrink_reftable`: the table is rewritten (synced) first, then the blocks are freed.
fn shrink_refcount_table(image: &Qcow2, meta: &mut Metadata) -> Result<()> {
    let file = image.host_file();
    meta.flush(file)?;
    let cs = meta.g.cluster_size;
    let rb_entries = meta.g.rb_entries;
    let order = meta.g.refcount_order;
    // Blocks counting nothing but (possibly) themselves, with their table index.
    let mut candidates = Vec::new();
    for (index, &e) in meta.refcount_table.iter().enumerate() {
        let offset = e & REFTABLE_OFFSET_MASK;
        if offset == 0 {
            continue;
        }
        meta.check_table_location(offset, "refcount block")?;
        let mut block = read_zero_filled(file, offset, cs as usize)?;
        let own = offset >> meta.g.cluster_bits;
        if own / rb_entries == index as u64 {
            // The block's count of itself does not keep it.
            block_set(&mut block, own % rb_entries, order, 0);
        }
        if block.iter().all(|&b| b == 0) {
            candidates.push((index, offset));
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    // The end of the used area, not counting the candidates themselves. Unlike QEMU, blocks describing free
    // clusters below it are kept: this crate never hands out clusters inside the file that no refcount
    // block describes (see `metadata`), so dropping them would leave that space unusable.
    let ignored: Vec<u64> = candidates
        .iter()
        .map(|&(_, offset)| offset >> meta.g.cluster_bits)
        .collect();
    let used_end = used_end(meta, file, &ignored)?;
    let mut kept = meta.refcount_table.clone();
    let mut dropped = Vec::new();
    for (index, offset) in candidates {
        if index as u64 * rb_entries >= used_end {
            if let Some(e) = kept.get_mut(index) {
                *e = 0;
            }
            dropped.push(offset);
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    let mut table =
        vec![0u8; u64::from(meta.header.refcount_table_clusters) as usize * cs as usize];
    for (i, &e) in kept.iter().enumerate() {
        set_entry(&mut table, i, e);
    }
    let at = meta.header.refcount_table_offset;
    meta.guard_write(file, REFCOUNT_TABLE, at, table.len() as u64)?;
    file.write_all_at(at, &table)?;
    file.sync_data()?;
    meta.refcount_table = kept;
    meta.refcount_table_changed();
    for offset in dropped {
        meta.rb_cache.forget(offset);
        let own = offset >> meta.g.cluster_bits;
        // A block counted by another (kept) block loses that count; a self-describing one is gone with its
        // table entry.
        let describing = meta
            .refcount_table
            .get((own / rb_entries) as usize)
            .copied()
            .unwrap_or(0);
        if describing & REFTABLE_OFFSET_MASK != 0 && meta.refcount(file, own)? > 0 {
            meta.change_refcount(file, own, -1)?;
        }
        let _ = file.punch_hole(offset, cs);
    }
    meta.reset_allocator();
    meta.flush(file)
}

/// Cuts the file after its last cluster with a non-zero refcount (QEMU's `qcow2_get_last_cluster`), when
/// that is before the end of the file.
fn truncate_file(image: &Qcow2, meta: &mut Metadata) -> Result<()> {
    let file = image.host_file();
    meta.flush(file)?;
    let cs = meta.g.cluster_size;
    let file_len = file.len()?;
    let end = used_end(meta, file, &[])? * cs;
    if end < file_len {
        file.set_len(end)?;
        meta.file_end = meta.file_end.min(end);
        meta.reset_allocator();
    }
    Ok(())
}

/// One past the last cluster of the file with a non-zero refcount, not counting the clusters in `ignored`
/// (QEMU's `qcow2_get_last_cluster`). Ranges without a refcount block are skipped whole.
fn used_end(meta: &mut Metadata, file: &HostFile, ignored: &[u64]) -> Result<u64> {
    let rb_entries = meta.g.rb_entries;
    let mut end = file.len()?.div_ceil(meta.g.cluster_size);
    while end > 0 {
        let c = end - 1;
        let block = meta
            .refcount_table
            .get((c / rb_entries) as usize)
            .copied()
            .unwrap_or(0);
        if block & REFTABLE_OFFSET_MASK == 0 {
            end = c / rb_entries * rb_entries;
            continue;
        }
        if !ignored.contains(&c) && meta.refcount(file, c)? != 0 {
            break;
        }
        end = c;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::refcount::block_get;

    #[test]
    fn refcount_block_helpers_agree() {
        // The self-count rule of shrink_refcount_table relies on block_set / block_get round trips.
        let mut block = vec![0u8; 512];
        block_set(&mut block, 3, 4, 1);
        assert_eq!(block_get(&block, 3, 4), 1);
        block_set(&mut block, 3, 4, 0);
        assert!(block.iter().all(|&b| b == 0));
    }
}
