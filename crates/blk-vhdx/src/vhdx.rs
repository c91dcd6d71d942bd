//! [`Vhdx`]: opening an image (headers, log replay, regions, metadata, BAT, parent).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use blk_core::{Error, ErrorKind, HostFile, Operation, Result};

use crate::bat::{self, Geometry};
use crate::error::{at, corrupt};
use crate::guid::Guid;
use crate::header::{Headers, MIB};
use crate::log_replay::{find_active_sequence, replay};
use crate::log_writer::LogWriter;
use crate::metadata::read_metadata;
use crate::options::VhdxOpenOptions;
use crate::parent::open_parent;
use crate::region::{read_regions, Region};
use crate::shared::{fixed_regions, MetaState, Shared};
use crate::FORMAT_NAME;

/// An open VHDX image: the format's [`Mapper`](blk_core::Mapper) (serve it with
/// [`MappedDisk`](blk_core::MappedDisk)) and [`ImageAdmin`](blk_core::ImageAdmin). See the crate docs for the
/// locking rules.
#[derive(Debug)]
pub struct Vhdx {
    /// This handle's own descriptor, for guest data.
    pub(crate) file: HostFile,
    /// What all handles share.
    pub(crate) shared: Arc<Shared>,
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
            bat: table.into_iter().map(AtomicU64::new).collect(),
            meta: Mutex::new(MetaState {
                headers,
                log: LogWriter::new(log_region),
                file_end: file_len.div_ceil(MIB) * MIB,
                host_len: file_len,
                unlogged: BTreeSet::new(),
                inflight: HashSet::new(),
            }),
            allocated: Condvar::new(),
            meta_file,
            parent,
            data_guid_written: AtomicBool::new(log_replayed),
            log_replayed,
            params,
            bitmaps: RwLock::default(),
        };
        Ok(Vhdx {
            file,
            shared: Arc::new(shared),
        })
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

    /// Adds format, path and operation to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation) -> Error {
        err.with_format(FORMAT_NAME)
            .with_path(&self.shared.path)
            .with_operation(operation)
    }
}
