//! [`Vhdx`]: opening an image (headers, log replay, regions, metadata, BAT, parent) and its shared state.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use blk_core::{
    resolve_relative_to, DiskFile, Error, ErrorKind, HostFile, HostOpenOptions, HostQueueBackend,
    LockMode, NamedImage, NamedImageRole, Operation, Result, SyncHostBackend,
};

use crate::bat::{self, Geometry};
use crate::error::{at, corrupt};
use crate::guid::Guid;
use crate::header::{Headers, HEADER_SECTION_END, MIB};
use crate::log_replay::{find_active_sequence, replay};
use crate::log_writer::LogWriter;
use crate::metadata::{read_metadata, DiskParameters, LEAVE_BLOCKS_ALLOCATED};
use crate::options::VhdxOpenOptions;
use crate::parent_locator::host_relative_path;
use crate::region::{read_regions, Region, Regions};
use crate::FORMAT_NAME;

/// A VHDX image opened for guest I/O. See the crate docs for the locking rules.
#[derive(Debug)]
pub struct Vhdx {
    /// This handle's own descriptor, for guest data.
    pub(crate) file: HostFile,
    /// What all handles share.
    pub(crate) shared: Arc<Shared>,
    /// The backend asynchronous queues make their host queues with (kept by clones).
    pub(crate) backend: Arc<dyn HostQueueBackend>,
}

/// A differencing image's parent.
#[derive(Debug)]
pub(crate) struct Parent {
    /// The open parent.
    pub disk: Box<dyn DiskFile>,
    /// The name recorded in the locator (host separators).
    pub recorded: String,
    /// The resolved path.
    pub path: PathBuf,
}

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

    /// BAT entry `index` (0 when out of range, which validated geometry never asks for).
    pub fn entry(&self, index: usize) -> u64 {
        let bat = self.bat.read().unwrap_or_else(PoisonError::into_inner);
        bat.get(index).copied().unwrap_or(0)
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

fn fixed_regions(regions: &Regions, log: Region) -> Vec<Region> {
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

impl Vhdx {
    /// Opens the VHDX image at `path`.
    ///
    /// A writable open replays a log left by a crash and updates both headers (new file write GUID); a
    /// read-only open of an image whose log needs replaying fails with [`ErrorKind::ReadOnly`], as QEMU
    /// refuses it: replaying in memory would show data no other tool sees until a writable open. A
    /// differencing image's parent is opened read-only through `options.opener` and must carry the data write
    /// GUID the child's `parent_linkage` records.
    pub fn open(path: impl AsRef<Path>, options: &VhdxOpenOptions) -> Result<Vhdx> {
        let path = path.as_ref();
        let ctx = |e: Error| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Open)
        };
        let file = HostFile::open(path, options.host).map_err(ctx)?;
        Vhdx::from_host_file(file, options).map_err(ctx)
    }

    /// Opens the image in an already open host file.
    pub fn from_host_file(file: HostFile, options: &VhdxOpenOptions) -> Result<Vhdx> {
        let path = file.path().to_path_buf();
        let read_only = file.is_read_only();
        let mut headers = Headers::read(&file)?;
        let (log_offset, log_length) = headers.log_region();
        let log_region = Region {
            offset: log_offset,
            length: log_length,
        };
        let file_len = file.len()?;
        let session_guid = Guid::random();
        let mut log_replayed = false;
        let log_guid = headers.current.log_guid();
        if !log_guid.is_zero() && log_length > 0 {
            if log_region.end() > file_len {
                return Err(corrupt(log_offset, "the log ends past the end of the file"));
            }
            let Some(sequence) = find_active_sequence(&file, log_region, log_guid)? else {
                return Err(corrupt(log_offset, format!("the header names log {log_guid:?}, but the log holds no valid sequence of its entries")));
            };
            if read_only {
                return Err(at(
                    ErrorKind::ReadOnly,
                    log_offset,
                    "the image was opened read-only, but contains a log that needs to be replayed; open it writable (e.g. 'check -r all') to replay it",
                ));
            }
            let data_guid = Guid::random();
            headers.update_both(&file, |h| {
                h.file_write_guid = session_guid.0;
                h.data_write_guid = data_guid.0;
            })?;
            replay(&file, log_region, &sequence)?;
            headers.update_both(&file, |h| h.log_guid = [0; 16])?;
            log_replayed = true;
        } else if !read_only {
            headers.update_both(&file, |h| h.file_write_guid = session_guid.0)?;
        }
        let regions = read_regions(&file, log_region)?;
        let params = read_metadata(&file, regions.metadata)?;
        let geometry = Geometry::new(&params);
        let table = bat::read_bat(&file, regions.bat, &geometry)?;
        let file_len = file.len()?;
        let problems = bat::check_entries(
            &table,
            &geometry,
            file_len,
            &fixed_regions(&regions, log_region),
        );
        if let Some(problem) = problems.first() {
            if !options.check_mode {
                return Err(corrupt(
                    regions.bat.offset + problem.index as u64 * 8,
                    problem.message.clone(),
                ));
            }
        }
        let parent = match &params.parent_locator {
            Some(_) => Some(open_parent(&path, &params, options)?),
            None => None,
        };
        let meta_file = file.try_clone()?;
        let shared = Shared {
            path,
            geometry,
            regions,
            log_region,
            read_only,
            bat: RwLock::new(table),
            meta: Mutex::new(MetaState {
                headers,
                log: LogWriter::new(log_region),
                file_end: file_len.div_ceil(MIB) * MIB,
                inflight: HashSet::new(),
            }),
            allocated: Condvar::new(),
            meta_file,
            parent,
            data_guid_written: AtomicBool::new(log_replayed),
            log_replayed,
            params,
        };
        Ok(Vhdx {
            file,
            shared: Arc::new(shared),
            backend: Arc::new(SyncHostBackend),
        })
    }

    /// Sets the backend the queues of [`create_async_io`](blk_core::AsyncDiskFile::create_async_io) do host
    /// I/O on (default: [`SyncHostBackend`]); handles cloned afterwards keep it.
    pub fn set_io_backend(&mut self, backend: Arc<dyn HostQueueBackend>) {
        self.backend = backend;
    }

    /// The backend asynchronous queues do host I/O on.
    pub fn io_backend(&self) -> &Arc<dyn HostQueueBackend> {
        &self.backend
    }

    /// The host file of this handle.
    pub fn host_file(&self) -> &HostFile {
        &self.file
    }

    /// The payload block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.shared.geometry.block_size
    }

    /// Whether this is a differencing image.
    pub fn has_parent(&self) -> bool {
        self.shared.geometry.has_parent
    }

    /// The data write GUID of the current header (what a child's `parent_linkage` records).
    pub fn data_write_guid(&self) -> String {
        self.shared
            .lock_meta()
            .headers
            .current
            .data_write_guid()
            .braced()
    }

    /// A second handle with its own descriptor, sharing the metadata.
    pub(crate) fn duplicate(&self) -> Result<Vhdx> {
        Ok(Vhdx {
            file: self.file.try_clone()?,
            shared: Arc::clone(&self.shared),
            backend: Arc::clone(&self.backend),
        })
    }

    /// Adds format, path and operation to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation) -> Error {
        err.with_format(FORMAT_NAME)
            .with_path(&self.shared.path)
            .with_operation(operation)
    }
}

/// Reads the data write GUID of the VHDX file at `path` from its header, read-only and without a lock.
pub(crate) fn read_data_write_guid(path: &Path) -> Result<Guid> {
    let host = HostFile::open(
        path,
        HostOpenOptions {
            read_only: true,
            direct: false,
            lock: LockMode::None,
        },
    )?;
    Ok(Headers::read(&host)?.current.data_write_guid())
}

/// Opens the parent named by the locator: the paths in the spec's order (relative, volume, absolute; Windows
/// paths that are not host paths are skipped), through the opener, then checks its identity.
fn open_parent(child: &Path, params: &DiskParameters, options: &VhdxOpenOptions) -> Result<Parent> {
    let Some(locator) = &params.parent_locator else {
        return Err(corrupt(0, "no parent locator"));
    };
    let mut last_error = None;
    for (key, value) in locator.paths() {
        let recorded = host_relative_path(value);
        if key != "relative_path" && !recorded.starts_with('/') {
            continue;
        }
        let path = resolve_relative_to(child, Path::new(&recorded));
        let request = NamedImage {
            path: path.clone(),
            format: Some(FORMAT_NAME.to_string()),
            role: NamedImageRole::Parent,
            read_only: true,
            depth: options.depth + 1,
        };
        let disk = match options.opener.open_named(&request) {
            Ok(disk) => disk,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                last_error = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let guid = read_data_write_guid(&path)?;
        let linked = [locator.parent_linkage(), locator.parent_linkage2()];
        if !linked.contains(&Some(guid)) {
            return Err(corrupt(
                0,
                format!("the parent {} has data write GUID {guid:?}, not the {} the child was made from", path.display(), locator.get("parent_linkage").unwrap_or("")),
            ));
        }
        if disk.topology().logical_block_size != params.logical_sector_size {
            return Err(corrupt(
                0,
                "the parent's logical sector size differs from the child's",
            ));
        }
        return Ok(Parent {
            disk,
            recorded,
            path,
        });
    }
    Err(last_error.unwrap_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "no parent path in the locator is usable on this host",
        )
    }))
}
