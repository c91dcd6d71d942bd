//! Opening an image: the header checked against QEMU's caps, the tables read, the backing and data files
//! opened through the caller's [`ImageOpener`](blk_core::ImageOpener), and on a writable open the repair of a
//! dirty image, the refusal of a corrupt one, the persistent bitmaps loaded and the autoclear bits this crate
//! does not maintain cleared.
//!
//! A dirty image opened writable is repaired first: as QEMU, a repair that fails or reports check errors
//! fails the open ("Could not repair dirty image"), while corruptions it leaves do not. Persistent bitmaps
//! are loaded and the enabled ones marked in use (see `bitmaps::persistent`; a directory that cannot be kept
//! fails the open). Every other autoclear bit but `data_file_raw` is one this crate does not maintain: a
//! writable open clears them, as QEMU does for bits it does not know. A snapshot is opened instead of the
//! current disk only read-only (QEMU's `bdrv_snapshot_load_tmp`).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crossbeam_utils::sync::ShardedLock;

use blk_core::{CheckReport, Error, ErrorKind, HostFile, Operation, RepairMode, Result};

use crate::bitmaps::{BitmapDirectory, AUTOCLEAR_BITMAPS};
use crate::image::features::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
};
use crate::image::header::{Header, MAX_L1_BYTES, MAX_REFTABLE_BYTES};
use crate::image::options::Qcow2OpenOptions;
use crate::image::{backing, data_file, LinkSignal, Qcow2, Shared};
use crate::metadata::tables::entry;
use crate::metadata::{read_zero_filled, Geometry, Metadata};
use crate::snapshots::table::SnapshotTable;
use crate::FORMAT_NAME;

impl Qcow2 {
    /// Opens the image at `path`: validates the header against QEMU's caps, opens the backing file through
    /// `options.opener`, and on a writable open repairs a dirty image, refuses a corrupt one (unless
    /// `check_mode`) and clears unknown autoclear bits.
    pub fn open(path: impl AsRef<Path>, options: &Qcow2OpenOptions) -> Result<Qcow2> {
        let path = path.as_ref();
        let ctx = |e: Error| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Open)
        };
        let file = HostFile::open(path, options.host).map_err(ctx)?;
        Qcow2::open_file(file, options).map_err(ctx)
    }

    /// Opens an already open host file (a memfd in a fuzz target, a descriptor passed in) as a qcow2 image;
    /// `options.host` is not used.
    pub fn open_file(file: HostFile, options: &Qcow2OpenOptions) -> Result<Qcow2> {
        Qcow2::open_inner(file, options, true)
    }

    /// Opens the image at `path` without its external data file, for metadata-only work (creating): guest
    /// data I/O then goes to the image file and must not happen.
    pub(crate) fn open_without_data_file(path: &Path, options: &Qcow2OpenOptions) -> Result<Qcow2> {
        let file = HostFile::open(path, options.host)?;
        Qcow2::open_inner(file, options, false)
    }

    fn open_inner(
        file: HostFile,
        options: &Qcow2OpenOptions,
        with_data_file: bool,
    ) -> Result<Qcow2> {
        let path = file.path().to_path_buf();
        let file_len = file.len()?;
        let head = read_zero_filled(&file, 0, file_len.min(2 << 20) as usize)?;
        let header = Header::parse(&head, file_len)?;
        let read_only = file.is_read_only();
        if !read_only && header.incompatible & INCOMPAT_CORRUPT != 0 && !options.check_mode {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        let mut g = Geometry::from_header(&header);
        let encryption = crate::encryption::open_for(&file, file_len, &header, options, read_only)?;
        if let Some(selector) = &options.snapshot {
            // QEMU's `bdrv_snapshot_load_tmp`: only on a read-only open.
            if !read_only {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "an internal snapshot can only be opened read-only",
                ));
            }
            let snapshot = crate::snapshots::open::find(&file, file_len, &header, selector)?;
            crate::snapshots::open::apply(&mut g, &snapshot, file_len)?;
        }
        let l1_bytes = read_zero_filled(
            &file,
            g.l1_table_offset,
            (g.l1_size * 8).min(MAX_L1_BYTES) as usize,
        )?;
        let l1 = (0..g.l1_size as usize)
            .map(|i| entry(&l1_bytes, i))
            .collect();
        let rt_len =
            (u64::from(header.refcount_table_clusters) * g.cluster_size).min(MAX_REFTABLE_BYTES);
        let rt_bytes = read_zero_filled(&file, header.refcount_table_offset, rt_len as usize)?;
        let refcount_table = (0..(rt_len / 8) as usize)
            .map(|i| entry(&rt_bytes, i))
            .collect();
        let l2_tables = (options.l2_cache_size / g.cluster_size).max(2) as usize;
        let rb_tables = (l2_tables / 4).max(4);
        let backing_name = header.backing_file.clone();
        let backing_format = options
            .backing_format
            .clone()
            .or_else(|| header.extensions.backing_format.clone());
        let backing = match &backing_name {
            Some(name) if !name.is_empty() && !options.opener.skips_backing() => {
                Some(backing::open(
                    options.opener.as_ref(),
                    &path,
                    name,
                    backing_format.clone(),
                    options.depth + 1,
                )?)
            }
            _ => None,
        };
        let data_file = match &header.extensions.data_file_name {
            Some(name) if g.data_file && with_data_file => Some(data_file::open(
                options.opener.as_ref(),
                &path,
                name,
                read_only,
            )?),
            _ => None,
        };
        // QEMU's `lazy-refcounts` runtime option overrides the compatible bit (qcow2_update_options_prepare).
        let lazy = match options.lazy_refcounts {
            Some(true) if header.version < 3 => return Err(Error::new(
                ErrorKind::InvalidInput,
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
            )
            .with_format(FORMAT_NAME)
            .with_operation(Operation::Open)
            .with_path(&path)),
            Some(on) => on,
            None => header.compatible & COMPAT_LAZY_REFCOUNTS != 0,
        };
        let dirty = header.incompatible & INCOMPAT_DIRTY != 0;
        let autoclear = header.autoclear;
        // As QEMU's `qcow2_do_open`: the snapshot table is read (and refused when it breaks QEMU's caps) on
        // every open but a check's, which reads it itself (and `check -r all` repairs it); the overlap check
        // needs its extent and the snapshots' L1 tables.
        let snapshots = if options.check_mode {
            SnapshotTable::default()
        } else {
            SnapshotTable::read(
                &file,
                file_len,
                u64::from(header.nb_snapshots),
                header.snapshots_offset,
                g.cluster_size,
            )?
        };
        let bitmap_directory = match BitmapDirectory::from_header(&file, file_len, &header) {
            Ok(Some(dir)) => (dir.offset, dir.size),
            _ => (0, 0),
        };
        let mut meta = Metadata::new(header, l1, refcount_table, l2_tables, rb_tables);
        meta.overlap.kinds = options
            .overlap_check
            .kinds_with(&options.overlap_check_switches);
        meta.overlap.bitmap_directory = bitmap_directory;
        meta.set_snapshot_extents(
            snapshots.size,
            snapshots
                .entries
                .iter()
                .map(|s| (s.l1_table_offset, s.l1_size))
                .collect(),
        );
        meta.refcount_table_changed();
        meta.set_file_len(file_len);
        // Growing the file ahead of allocation (see `allocator`): not for `create`'s metadata-only opens
        // (their preallocation reserves up to the file's length), block devices, or a raw data file.
        meta.grow_ahead =
            !read_only && with_data_file && !file.is_block_device() && !g.data_file_raw;
        let meta_file = file.try_clone()?;
        // A data file that is a host file byte for byte (raw) is served as this image's second host file.
        let mut files = vec![file];
        if let Some(host) = data_file.as_ref().and_then(|d| d.disk.identity_file()) {
            files.push(host.try_clone()?);
        }
        let image = Qcow2 {
            shared: Arc::new(Shared {
                geometry: g,
                file: meta_file,
                meta: ShardedLock::new(meta),
                linked: LinkSignal::default(),
                backing,
                data_file,
                backing_name,
                backing_format,
                read_only,
                set_dirty: !read_only && lazy && !options.check_mode,
                pass_discard_request: options.pass_discard_request,
                metadata_preallocated: OnceLock::new(),
                open_repair: OnceLock::new(),
                encryption,
            }),
            files,
        };
        if !read_only && !options.check_mode {
            if dirty {
                // As QEMU: a repair that fails or leaves check errors fails the open; corruptions it could
                // not repair do not (qemu-io opens such an image and clears the dirty bit when it closes).
                let report = crate::check::run(&image, RepairMode::All).map_err(|e| {
                    let offset = e.offset();
                    let wrapped =
                        Error::new(e.kind(), "Could not repair dirty image").with_source(e);
                    match offset {
                        Some(at) => wrapped.with_offset(at),
                        None => wrapped,
                    }
                })?;
                dirty_repair_outcome(&report)?;
                // Set once: this is the only place, and it runs once per open.
                let _ = image.shared.open_repair.set(report);
                let mut meta = image.lock_metadata();
                meta.flush(&image.shared.file)?;
                meta.update_incompatible(&image.shared.file, 0, INCOMPAT_DIRTY)?;
            }
            let mut meta = image.lock_metadata();
            let bitmaps = meta.open_bitmaps(&image.shared.file, file_len)?;
            // Every autoclear bit but `data_file_raw` (kept true: guest writes go to the data file at their
            // guest offsets) and the bitmaps' (when kept) is one this crate does not maintain.
            let keep =
                autoclear & (AUTOCLEAR_DATA_FILE_RAW | if bitmaps { AUTOCLEAR_BITMAPS } else { 0 });
            if autoclear != keep {
                image.shared.file.write_all_at(88, &keep.to_be_bytes())?;
                image.shared.file.sync_data()?;
                meta.header.autoclear = keep;
                // QEMU checks the bitmap directory only while the bitmaps bit is set.
                if keep & AUTOCLEAR_BITMAPS == 0 {
                    meta.overlap.bitmap_directory = (0, 0);
                }
            }
            // Lazy refcounts (after the repair, which needs them written): the dirty bit is set before the
            // first refcount change, not here, so an open that allocates nothing leaves the image clean.
            meta.lazy_refcounts = lazy;
            // A tail a crash left while the file was grown ahead (after the repair: refcounts are right).
            meta.forget_unused_tail(&image.shared.file);
        }
        Ok(image)
    }
}

/// Whether the repair of a dirty image on open may go on: as QEMU's `qcow2_do_open`, check errors (parts of
/// the check that could not run) fail the open ("Could not repair dirty image"); corruptions left are
/// tolerated.
fn dirty_repair_outcome(report: &CheckReport) -> Result<()> {
    if report.check_errors > 0 {
        return Err(Error::new(
            ErrorKind::CorruptImage,
            format!(
                "Could not repair dirty image: {} check errors",
                report.check_errors
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_repair_with_check_errors_fails_the_open() {
        let report = CheckReport {
            check_errors: 1,
            ..CheckReport::default()
        };
        let e = dirty_repair_outcome(&report).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
        assert!(e.message().contains("Could not repair dirty image"));
        let report = CheckReport {
            corruptions: 2,
            ..CheckReport::default()
        };
        assert!(dirty_repair_outcome(&report).is_ok());
    }
}
