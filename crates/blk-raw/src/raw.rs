//! [`Raw`]: a raw image, where guest offset `x` is host offset `x` of a regular file or block device.

use std::path::Path;
use std::sync::Arc;

use blk_core::buffer::{total_len, total_len_mut};
use blk_core::{
    check_range, read_only_error, AsyncDiskFile, AsyncIo, DiskFile, DiskTopology, Error, ErrorKind,
    Extent, HostFile, HostOpenOptions, HostQueueBackend, ImageInfo, IoBuf, IoBufMut, Operation,
    Result, SyncHostBackend,
};

use crate::FORMAT_NAME;

/// The unit of the guest-visible size.
const SECTOR: u64 = 512;

/// A raw image opened for guest I/O.
///
/// The guest-visible size is the file's length (a block device's size) when it was opened, rounded up to whole
/// 512-byte sectors as QEMU does; requests past it
/// fail with [`ErrorKind::OutOfBounds`]. Reads and writes go straight to the [`HostFile`] (O_DIRECT alignment
/// included), write-zeroes and discard become `fallocate` (or the block-device ioctls), and [`DiskFile::map`]
/// reports holes from `SEEK_DATA`/`SEEK_HOLE`.
///
/// Every method takes `&self` and no lock is held in the crate: handles from [`DiskFile::try_clone`] each own a
/// descriptor and share the file's advisory lock.
///
/// Queues from [`AsyncDiskFile::create_async_io`] are [`RawAsync`](crate::RawAsync)s doing their host I/O on
/// the backend set with [`Raw::set_io_backend`] (default: blk-core's [`SyncHostBackend`]).
#[derive(Debug)]
pub struct Raw {
    file: HostFile,
    size: u64,
    backend: Arc<dyn HostQueueBackend>,
}

impl Raw {
    /// Opens the raw image at `path` (a regular file or block device) as `options` say.
    ///
    /// Fails with [`ErrorKind::NotFound`] for a missing file, [`ErrorKind::InvalidInput`] for a directory or
    /// other non-image file, and [`ErrorKind::Locked`] when another open conflicts with the advisory lock.
    pub fn open(path: impl AsRef<Path>, options: HostOpenOptions) -> Result<Raw> {
        let path = path.as_ref();
        let file = HostFile::open(path, options).map_err(|e| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Open)
        })?;
        Raw::from_host_file(file)
    }

    /// Serves an already open host file (a memfd, a descriptor passed in by a management layer, ...) as a raw
    /// image. Its current length becomes the guest-visible size.
    pub fn from_host_file(file: HostFile) -> Result<Raw> {
        let len = file.len().map_err(|e| {
            e.with_format(FORMAT_NAME)
                .with_path(file.path())
                .with_operation(Operation::Open)
        })?;
        // Guests see whole sectors, as with QEMU: a file whose length is not a multiple of 512 gets a
        // zero-filled partial last sector (reads past the end of the file are zero-filled; a write there
        // extends the file).
        let size = len.div_ceil(SECTOR) * SECTOR;
        Ok(Raw {
            file,
            size,
            backend: Arc::new(SyncHostBackend),
        })
    }

    /// Sets the backend the queues of [`AsyncDiskFile::create_async_io`] do their host I/O on (io_uring, AIO,
    /// or the default [`SyncHostBackend`]); handles cloned afterwards keep it.
    pub fn set_io_backend(&mut self, backend: Arc<dyn HostQueueBackend>) {
        self.backend = backend;
    }

    /// The backend the queues of [`AsyncDiskFile::create_async_io`] use.
    pub fn io_backend(&self) -> &dyn HostQueueBackend {
        &*self.backend
    }

    /// The host file the image is stored in.
    pub fn host_file(&self) -> &HostFile {
        &self.file
    }

    /// Adds the format, path, operation and (guest = host) offset to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        let err = err
            .with_format(FORMAT_NAME)
            .with_path(self.file.path())
            .with_operation(operation);
        match offset {
            Some(offset) => err.with_offset(offset),
            None => err,
        }
    }

    /// Checks that `len` bytes at `offset` lie within the disk.
    fn check(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        check_range(offset, len, self.size).map_err(|e| self.context(e, operation, Some(offset)))
    }

    /// Fails with [`ErrorKind::ReadOnly`] when the image was opened read-only.
    fn writable(&self, operation: Operation, offset: u64) -> Result<()> {
        if self.file.is_read_only() {
            return Err(self.context(read_only_error(operation), operation, Some(offset)));
        }
        Ok(())
    }

    /// A second handle on the same image, with its own descriptor.
    pub(crate) fn duplicate(&self) -> Result<Raw> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| self.context(e, Operation::Open, None))?;
        Ok(Raw {
            file,
            size: self.size,
            backend: self.backend.clone(),
        })
    }
}

/// Fills `bufs` with zeros from byte `skip` (counted across all buffers) to their end.
fn zero_fill_from(bufs: &[IoBufMut<'_>], mut skip: u64) {
    for buf in bufs {
        let len = buf.len() as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        // `skip < len`, and `len` came from a usize, so the cast is lossless.
        buf.fill_zero_from(skip as usize);
        skip = 0;
    }
}

/// Whether an errno says the host lacks an operation (rather than that the operation failed).
pub(crate) fn is_unsupported(err: &Error) -> bool {
    matches!(
        err.errno(),
        libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS
    )
}

impl DiskFile for Raw {
    fn logical_size(&self) -> u64 {
        self.size
    }

    fn physical_size(&self) -> Result<u64> {
        self.file
            .allocated_size()
            .map_err(|e| self.context(e, Operation::Open, None))
    }

    fn topology(&self) -> DiskTopology {
        self.file.topology()
    }

    fn has_zero_init(&self) -> bool {
        // A new regular file is one hole; a block device keeps whatever it held.
        !self.file.is_block_device()
    }

    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }

    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }

    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        self.check(offset, len, Operation::Read)?;
        let got = self
            .file
            .read_vectored_at(offset, bufs)
            .map_err(|e| self.context(e, Operation::Read, Some(offset)))? as u64;
        if got < len {
            if self.file.is_block_device() {
                let err = Error::new(
                    ErrorKind::Io,
                    format!(
                        "unexpected end of the device: wanted {len} bytes, the device ends after {got}"
                    ),
                );
                return Err(self.context(err, Operation::Read, Some(offset)));
            }
            // The file was truncated under us: what is gone reads as zeros, as a hole would.
            zero_fill_from(bufs, got);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.writable(Operation::Write, offset)?;
        let len = total_len(bufs);
        self.check(offset, len, Operation::Write)?;
        if len == 0 {
            // HostFile takes a write of only empty buffers for a short write (pwritev returns 0).
            return Ok(());
        }
        self.file
            .write_vectored_at(offset, bufs)
            .map_err(|e| self.context(e, Operation::Write, Some(offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.writable(Operation::WriteZeroes, offset)?;
        self.check(offset, len, Operation::WriteZeroes)?;
        self.file
            .zero_range(offset, len, !may_unmap, false)
            .map_err(|e| self.context(e, Operation::WriteZeroes, Some(offset)))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(Operation::Discard, offset)?;
        self.check(offset, len, Operation::Discard)?;
        match self.file.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            // On a block device discard is a hint the device may not take.
            Err(e) if self.file.is_block_device() && is_unsupported(&e) => Ok(()),
            // A file system without punch hole: still make the range read as zeros, as promised for raw files.
            Err(e) if is_unsupported(&e) => self
                .file
                .zero_range(offset, len, false, false)
                .map_err(|e| self.context(e, Operation::Discard, Some(offset))),
            Err(e) => Err(self.context(e, Operation::Discard, Some(offset))),
        }
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| self.context(e, Operation::Flush, None))
    }

    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        self.check(offset, len, Operation::Map)?;
        crate::map::first_extent(&self.file, offset, len)
            .map_err(|e| self.context(e, Operation::Map, Some(offset)))
    }

    fn image_info(&self) -> Result<ImageInfo> {
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.file.path().to_path_buf(),
            virtual_size: self.size,
            actual_size: self.physical_size()?,
            cluster_size: None,
            dirty: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            format_specific: None,
        })
    }
}

impl AsyncDiskFile for Raw {
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>> {
        Ok(Box::new(crate::RawAsync::new(
            self,
            &*self.backend,
            ring_depth,
        )?))
    }

    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }
}
