//! [`MappedDisk`]: a format's [`Mapper`] served as a [`DiskFile`] and an [`AsyncDiskFile`].
//!
//! The synchronous methods run blk-core's synchronous engine ([`mapped_io`](crate::mapped_io)) on the calling
//! thread; [`AsyncDiskFile::create_async_io`] makes a [`MappedQueue`] on the disk's backend. Both ask the same
//! mapper the same question, so a format translates guest offsets in one place.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::async_io::AsyncIo;
use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::disk_file::{check_range, read_only_error, AsyncDiskFile, DiskFile};
use crate::error::{Error, Operation, Result};
use crate::extent::Extent;
use crate::host_file::HostFile;
use crate::host_queue::HostQueueBackend;
use crate::mapped_io::{context, read_mapped_len, write_mapped_len};
use crate::mapped_queue::MappedQueue;
use crate::mapper::Mapper;
use crate::properties::DiskProperties;
use crate::sync_host_queue::SyncHostBackend;
use crate::topology::DiskTopology;

/// An open image served for guest I/O: the format's [`Mapper`] (shared: every clone and queue of the disk
/// maps through a handle of the same open image) and the backend its queues do host I/O on.
///
/// `MappedDisk<Qcow2>` dereferences to the format's image type, so its own operations (snapshots, `check`,
/// ...) stay at hand; `MappedDisk` (of `dyn Mapper`) is what [`try_clone`](DiskFile::try_clone) returns.
///
/// ```
/// use std::sync::Arc;
/// use blk_core::{DiskFile, HostFile, HostOpenOptions, Mapper, MappedDisk, ReadMapping, Result};
///
/// /// A format that shows the second half of its file.
/// #[derive(Debug)]
/// struct SecondHalf { file: [HostFile; 1], size: u64 }
///
/// impl Mapper for SecondHalf {
///     fn format_name(&self) -> &'static str { "second-half" }
///     fn logical_size(&self) -> u64 { self.size }
///     fn host_files(&self) -> &[HostFile] { &self.file }
///     fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
///         Ok(Arc::new(SecondHalf { file: [self.file[0].try_clone()?], size: self.size }))
///     }
///     fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
///         out.push(ReadMapping::Host { file: 0, offset: self.size + offset, len });
///         Ok(())
///     }
/// }
///
/// # fn main() -> Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let file = HostFile::create(dir.path().join("x"), HostOpenOptions::default())?;
/// file.write_all_at(0, b"abcdefgh")?;
/// let disk = MappedDisk::new(SecondHalf { file: [file], size: 4 });
/// let mut back = [0u8; 4];
/// disk.read_exact_at(0, &mut back)?;
/// assert_eq!(&back, b"efgh");
/// assert!(disk.write_all_at(0, b"x").is_err()); // the default mapping refuses writes
/// # Ok(())
/// # }
/// ```
pub struct MappedDisk<M: Mapper + ?Sized = dyn Mapper> {
    mapper: Arc<M>,
    backend: Arc<dyn HostQueueBackend>,
}

impl<M: Mapper> MappedDisk<M> {
    /// Serves `image`, with queues on [`SyncHostBackend`] until [`set_io_backend`](MappedDisk::set_io_backend).
    pub fn new(image: M) -> MappedDisk<M> {
        MappedDisk::from_arc(Arc::new(image), Arc::new(SyncHostBackend))
    }
}

impl<M: Mapper + ?Sized> MappedDisk<M> {
    /// Serves the shared `image`, with queues on `backend`.
    pub fn from_arc(image: Arc<M>, backend: Arc<dyn HostQueueBackend>) -> MappedDisk<M> {
        MappedDisk {
            mapper: image,
            backend,
        }
    }

    /// Sets the backend the queues of [`create_async_io`](AsyncDiskFile::create_async_io) do their host I/O
    /// on; clones made afterwards keep it.
    pub fn set_io_backend(&mut self, backend: Arc<dyn HostQueueBackend>) {
        self.backend = backend;
    }

    /// The image (shared with every clone).
    pub fn image(&self) -> &Arc<M> {
        &self.mapper
    }

    /// The backend of this disk's queues.
    pub fn io_backend(&self) -> &Arc<dyn HostQueueBackend> {
        &self.backend
    }

    /// A disk over a new handle of the same image (its own descriptors).
    fn duplicate(&self) -> Result<MappedDisk> {
        let mapper = self
            .mapper
            .duplicate()
            .map_err(|e| context(&*self.mapper, e, Operation::Open, None))?;
        Ok(MappedDisk::from_arc(mapper, Arc::clone(&self.backend)))
    }

    fn ctx(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        context(&*self.mapper, err, operation, offset)
    }

    /// Refuses a modifying request on a read-only disk, and one outside the disk.
    fn check_write(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        if self.mapper.is_read_only() {
            return Err(self.ctx(read_only_error(operation), operation, Some(offset)));
        }
        check_range(offset, len, self.mapper.logical_size())
            .map_err(|e| self.ctx(e, operation, Some(offset)))
    }
}

impl<M: Mapper + ?Sized> Deref for MappedDisk<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.mapper
    }
}

impl<M: Mapper + ?Sized> fmt::Debug for MappedDisk<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedDisk")
            .field("image", &&*self.mapper)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl<M: Mapper + ?Sized> DiskFile for MappedDisk<M> {
    fn logical_size(&self) -> u64 {
        self.mapper.logical_size()
    }

    fn identity_file(&self) -> Option<&HostFile> {
        self.mapper.identity_file()
    }

    fn physical_size(&self) -> Result<u64> {
        self.mapper
            .physical_size()
            .map_err(|e| self.ctx(e, Operation::Info, None))
    }

    fn topology(&self) -> DiskTopology {
        self.mapper.topology()
    }

    fn is_read_only(&self) -> bool {
        self.mapper.is_read_only()
    }

    fn properties(&self) -> DiskProperties {
        DiskProperties::new(
            self.mapper.logical_size(),
            self.mapper.is_read_only(),
            self.mapper.topology(),
            self.mapper.direct_io_alignment(),
        )
    }

    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }

    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        check_range(offset, len, self.mapper.logical_size())
            .and_then(|()| read_mapped_len(&*self.mapper, offset, len, bufs))
            .map_err(|e| self.ctx(e, Operation::Read, Some(offset)))
    }

    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        self.check_write(offset, len, Operation::Write)?;
        write_mapped_len(&*self.mapper, offset, len, bufs)
            .map_err(|e| self.ctx(e, Operation::Write, Some(offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_write(offset, len, Operation::WriteZeroes)?;
        self.mapper
            .write_zeroes(offset, len, may_unmap)
            .map_err(|e| self.ctx(e, Operation::WriteZeroes, Some(offset)))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len, Operation::Discard)?;
        self.mapper
            .discard(offset, len)
            .map_err(|e| self.ctx(e, Operation::Discard, Some(offset)))
    }

    fn flush(&self) -> Result<()> {
        self.mapper
            .flush()
            .map_err(|e| self.ctx(e, Operation::Flush, None))
    }

    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range(offset, len, self.mapper.logical_size())
            .and_then(|()| self.mapper.block_status(offset, len))
            .map_err(|e| self.ctx(e, Operation::Map, Some(offset)))
    }
}

impl<M: Mapper + ?Sized> AsyncDiskFile for MappedDisk<M> {
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>> {
        let mapper = self
            .mapper
            .duplicate()
            .map_err(|e| self.ctx(e, Operation::Open, None))?;
        let queue = MappedQueue::new(mapper, &*self.backend, ring_depth)
            .map_err(|e| self.ctx(e, Operation::Open, None))?;
        Ok(Box::new(queue))
    }

    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }

    fn backend(&self) -> &'static str {
        self.backend.name()
    }
}
