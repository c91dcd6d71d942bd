//! [`Qcow2`]: opening an image and serving it as a [`DiskFile`] / [`AsyncDiskFile`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use blk_core::{
    AsyncDiskFile, AsyncIo, CheckReport, DiskFile, DiskTopology, Error, ErrorKind, Extent,
    HostFile, HostQueueBackend, ImageInfo, InfoValue, IoBuf, IoBufMut, Operation, RepairMode,
    Result, SyncHostBackend,
};

use crate::backing::{self, Backing};
use crate::bitmaps::{self, BitmapDirectory};
use crate::data_file::{self, DataFile};
use crate::features::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
};
use crate::header::{Header, MAX_L1_BYTES, MAX_REFTABLE_BYTES};
use crate::metadata::{read_zero_filled, Geometry, Metadata};
use crate::options::Qcow2OpenOptions;
use crate::qcow2_async::Qcow2Async;
use crate::snapshot_table::{Snapshot, SnapshotTable};
use crate::tables::entry;
use crate::FORMAT_NAME;

/// State shared by every clone of one open image.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) geometry: Geometry,
    /// The metadata file handle (metadata I/O and the final flush).
    pub(crate) file: HostFile,
    pub(crate) meta: Mutex<Metadata>,
    /// Signalled when an in-flight cluster is linked.
    pub(crate) linked: Condvar,
    pub(crate) backing: Option<Backing>,
    /// The external data file, when the image has one.
    pub(crate) data_file: Option<DataFile>,
    pub(crate) backing_name: Option<String>,
    pub(crate) backing_format: Option<String>,
    pub(crate) read_only: bool,
    /// Whether this open set the dirty bit (lazy refcounts) and must clear it on close.
    pub(crate) set_dirty: bool,
    /// Whether the image looks metadata-preallocated (decided on the first `map`, as QEMU does).
    pub(crate) metadata_preallocated: OnceLock<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        if meta.flush(&self.file).is_ok() {
            if self.set_dirty {
                let _ = meta.update_incompatible(&self.file, 0, INCOMPAT_DIRTY);
            }
            // The part grown ahead of need (see `allocator`): nothing past the used end is referenced.
            let _ = meta.cut_to_used_end(&self.file);
        }
    }
}

/// A QCOW2 image opened for guest I/O.
///
/// Clones from [`DiskFile::try_clone`] share the metadata (one `Arc`) and each own a descriptor. See the crate
/// docs for locking and write ordering.
#[derive(Debug)]
pub struct Qcow2 {
    pub(crate) shared: Arc<Shared>,
    pub(crate) file: HostFile,
    /// The backend of the queues from [`AsyncDiskFile::create_async_io`] (kept by clones).
    backend: Arc<dyn HostQueueBackend>,
}

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
        if let Some(selector) = &options.snapshot {
            // QEMU's `bdrv_snapshot_load_tmp`: only on a read-only open.
            if !read_only {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "an internal snapshot can only be opened read-only",
                ));
            }
            let snapshot = crate::snapshot_open::find(&file, file_len, &header, selector)?;
            crate::snapshot_open::apply(&mut g, &snapshot, file_len)?;
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
        let lazy = header.compatible & COMPAT_LAZY_REFCOUNTS != 0;
        let dirty = header.incompatible & INCOMPAT_DIRTY != 0;
        let autoclear = header.autoclear;
        let mut meta = Metadata::new(header, l1, refcount_table, l2_tables, rb_tables);
        meta.set_file_len(file_len);
        // Growing the file ahead of allocation (see `allocator`): not for `create`'s metadata-only opens
        // (their preallocation reserves up to the file's length), block devices, or a raw data file.
        meta.grow_ahead =
            !read_only && with_data_file && !file.is_block_device() && !g.data_file_raw;
        let meta_file = file.try_clone()?;
        let image = Qcow2 {
            shared: Arc::new(Shared {
                geometry: g,
                file: meta_file,
                meta: Mutex::new(meta),
                linked: Condvar::new(),
                backing,
                data_file,
                backing_name,
                backing_format,
                read_only,
                set_dirty: !read_only && lazy && !options.check_mode,
                metadata_preallocated: OnceLock::new(),
            }),
            file,
            backend: Arc::new(SyncHostBackend),
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
                let mut meta = image.lock_metadata();
                meta.flush(&image.shared.file)?;
                meta.update_incompatible(&image.shared.file, 0, INCOMPAT_DIRTY)?;
            }
            let mut meta = image.lock_metadata();
            // Every autoclear bit but `data_file_raw` (kept true: guest writes go to the data file at their
            // guest offsets) is one this crate does not maintain (bitmaps included).
            let keep = autoclear & AUTOCLEAR_DATA_FILE_RAW;
            if autoclear != keep {
                image.shared.file.write_all_at(88, &keep.to_be_bytes())?;
                image.shared.file.sync_data()?;
                meta.header.autoclear = keep;
            }
            if lazy {
                meta.update_incompatible(&image.shared.file, INCOMPAT_DIRTY, 0)?;
            }
            // A tail a crash left while the file was grown ahead (after the repair: refcounts are right).
            meta.forget_unused_tail(&image.shared.file);
        }
        Ok(image)
    }

    /// The image's host file.
    pub(crate) fn host_file(&self) -> &HostFile {
        &self.shared.file
    }

    /// The image's fixed layout.
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.shared.geometry
    }

    /// Takes the metadata lock.
    pub(crate) fn lock_metadata(&self) -> MutexGuard<'_, Metadata> {
        self.shared.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of the image file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Adds format, path, operation and offset to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        let err = err
            .with_format(FORMAT_NAME)
            .with_path(self.file.path())
            .with_operation(operation);
        match offset {
            Some(o) => err.with_offset(o),
            None => err,
        }
    }

    pub(crate) fn writable(&self, operation: Operation, offset: u64) -> Result<()> {
        if self.shared.read_only {
            return Err(self.context(
                blk_core::read_only_error(operation),
                operation,
                Some(offset),
            ));
        }
        Ok(())
    }

    /// Another handle: its own descriptor, the same metadata and backend.
    pub(crate) fn duplicate(&self) -> Result<Qcow2> {
        Ok(Qcow2 {
            shared: Arc::clone(&self.shared),
            file: self
                .file
                .try_clone()
                .map_err(|e| self.context(e, Operation::Open, None))?,
            backend: Arc::clone(&self.backend),
        })
    }

    /// Sets the backend the queues of [`AsyncDiskFile::create_async_io`] do their host I/O on (default
    /// [`SyncHostBackend`]); clones made afterwards keep it.
    pub fn set_io_backend(&mut self, backend: Arc<dyn HostQueueBackend>) {
        self.backend = backend;
    }

    fn full_backing_filename(&self) -> Option<PathBuf> {
        self.shared
            .backing_name
            .as_ref()
            .map(|n| backing::backing_path(self.file.path(), n))
    }
}

impl DiskFile for Qcow2 {
    fn logical_size(&self) -> u64 {
        self.shared.geometry.size
    }

    fn physical_size(&self) -> Result<u64> {
        self.file
            .allocated_size()
            .map_err(|e| self.context(e, Operation::Open, None))
    }

    fn topology(&self) -> DiskTopology {
        self.file.topology()
    }

    fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }

    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        self.read_impl(offset, bufs)
            .map_err(|e| self.context(e, Operation::Read, Some(offset)))
    }

    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.writable(Operation::Write, offset)?;
        self.write_impl(offset, bufs)
            .map_err(|e| self.context(e, Operation::Write, Some(offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.writable(Operation::WriteZeroes, offset)?;
        self.write_zeroes_impl(offset, len, may_unmap)
            .map_err(|e| self.context(e, Operation::WriteZeroes, Some(offset)))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(Operation::Discard, offset)?;
        self.discard_impl(offset, len)
            .map_err(|e| self.context(e, Operation::Discard, Some(offset)))
    }

    fn flush(&self) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        // Guest data in the data file first, then the metadata pointing to it.
        if let Some(data) = &self.shared.data_file {
            data.disk
                .flush()
                .map_err(|e| self.context(e, Operation::Flush, None))?;
        }
        let mut meta = self.lock_metadata();
        meta.flush(&self.shared.file)
            .map_err(|e| self.context(e, Operation::Flush, None))
    }

    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        self.map_impl(offset, len)
            .map_err(|e| self.context(e, Operation::Map, Some(offset)))
    }

    fn image_info(&self) -> Result<ImageInfo> {
        let meta = self.lock_metadata();
        let h = meta.header().clone();
        drop(meta);
        let info_err = |e: Error| self.context(e, Operation::Open, None);
        let file_len = self.file.len().map_err(info_err)?;
        let cluster_size = self.shared.geometry.cluster_size;
        let snapshots = SnapshotTable::read(
            &self.file,
            file_len,
            u64::from(h.nb_snapshots),
            h.snapshots_offset,
            cluster_size,
        )
        .map_err(info_err)?
        .entries
        .iter()
        .map(Snapshot::info)
        .collect();
        let bitmaps =
            match BitmapDirectory::from_header(&self.file, file_len, &h).map_err(info_err)? {
                Some(dir) => dir
                    .read(&self.file, cluster_size, self.shared.geometry.size)
                    .map_err(info_err)?,
                None => Vec::new(),
            };
        let mut data = vec![
            (
                "compat".to_string(),
                InfoValue::String(if h.version >= 3 { "1.1" } else { "0.10" }.to_string()),
            ),
            (
                "compression-type".to_string(),
                InfoValue::String(
                    if h.compression_type == 1 {
                        "zstd"
                    } else {
                        "zlib"
                    }
                    .to_string(),
                ),
            ),
        ];
        if h.version >= 3 {
            data.push((
                "lazy-refcounts".to_string(),
                InfoValue::Bool(h.compatible & COMPAT_LAZY_REFCOUNTS != 0),
            ));
        }
        data.push((
            "refcount-bits".to_string(),
            InfoValue::U64(1 << h.refcount_order),
        ));
        if let Some(file) = &self.shared.data_file {
            data.push((
                "data-file".to_string(),
                InfoValue::String(file.name.clone()),
            ));
            data.push((
                "data-file-raw".to_string(),
                InfoValue::Bool(self.shared.geometry.data_file_raw),
            ));
        }
        if h.version >= 3 {
            data.push((
                "corrupt".to_string(),
                InfoValue::Bool(h.incompatible & INCOMPAT_CORRUPT != 0),
            ));
            data.push((
                "extended-l2".to_string(),
                InfoValue::Bool(self.shared.geometry.extended_l2),
            ));
        }
        if !bitmaps.is_empty() {
            data.push(("bitmaps".to_string(), bitmaps::info_value(&bitmaps)));
        }
        let dirty = h.incompatible & INCOMPAT_DIRTY != 0 && !self.shared.set_dirty;
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.file.path().to_path_buf(),
            virtual_size: self.shared.geometry.size,
            actual_size: self.physical_size()?,
            cluster_size: Some(cluster_size),
            dirty,
            backing_filename: self.shared.backing_name.clone(),
            full_backing_filename: self.full_backing_filename(),
            backing_format: self.shared.backing_format.clone(),
            snapshots,
            format_specific: Some(("qcow2".to_string(), data)),
        })
    }

    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        crate::check::run(self, repair).map_err(|e| self.context(e, Operation::Check, None))
    }

    fn compressed_write_size(&self) -> Option<u64> {
        Some(self.shared.geometry.cluster_size)
    }

    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.writable(Operation::Write, offset)?;
        self.write_compressed_impl(offset, buf)
            .map_err(|e| self.context(e, Operation::Write, Some(offset)))
    }

    fn make_empty(&self) -> Result<()> {
        self.writable(Operation::Discard, 0)?;
        self.make_empty_impl()
            .map_err(|e| self.context(e, Operation::Discard, None))
    }

    fn has_zero_init(&self) -> bool {
        // A raw data file may hold anything.
        self.shared.backing.is_none() && !self.shared.geometry.data_file_raw
    }
}

impl AsyncDiskFile for Qcow2 {
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>> {
        Ok(Box::new(Qcow2Async::new(
            self,
            self.backend.as_ref(),
            ring_depth,
        )?))
    }

    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>> {
        Ok(Box::new(self.duplicate()?))
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
