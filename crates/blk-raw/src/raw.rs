//! [`Raw`]: a raw image, where guest offset `x` is host offset `x` of a regular file or block device. Its
//! one translation ([`Mapper`]) is the identity; its administration ([`ImageAdmin`]) is `info`.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    Error, Extent, HostFile, HostOpenOptions, ImageAdmin, ImageInfo, Mapper, Operation,
    ReadMapping, Result, WriteMapping,
};

use crate::FORMAT_NAME;

/// The unit of the guest-visible size.
const SECTOR: u64 = 512;

/// A raw image opened for guest I/O: serve it with [`MappedDisk`](blk_core::MappedDisk).
///
/// The guest-visible size is the file's length (a block device's size) when it was opened, rounded up to whole
/// 512-byte sectors as QEMU does; requests past it fail with [`ErrorKind::OutOfBounds`](blk_core::ErrorKind).
/// Every read and write maps to one range of the [`HostFile`] at the same offset (bytes past the end of the
/// file read as zeros), write-zeroes and discard become `fallocate` (or the block-device ioctls), and
/// [`Mapper::block_status`] reports holes from `SEEK_DATA`/`SEEK_HOLE`.
///
/// No lock is held in the crate: handles from [`Mapper::duplicate`] each own a descriptor and share the file's
/// advisory lock.
#[derive(Debug)]
pub struct Raw {
    file: HostFile,
    size: u64,
}

impl Raw {
    /// Opens the raw image at `path` (a regular file or block device) as `options` say.
    ///
    /// Fails with [`ErrorKind::NotFound`](blk_core::ErrorKind) for a missing file,
    /// [`ErrorKind::InvalidInput`](blk_core::ErrorKind) for a directory or other non-image file, and
    /// [`ErrorKind::Locked`](blk_core::ErrorKind) when another open conflicts with the advisory lock.
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
        let len = file.len().map_err(|e| context(&file, e, Operation::Open))?;
        // Guests see whole sectors, as with QEMU: a file whose length is not a multiple of 512 gets a
        // zero-filled partial last sector (reads past the end of the file are zero-filled; a write there
        // extends the file).
        let size = len.div_ceil(SECTOR) * SECTOR;
        Ok(Raw { file, size })
    }

    /// The host file the image is stored in.
    pub fn host_file(&self) -> &HostFile {
        &self.file
    }
}

/// Adds the format, the path of `file` and the operation to an error.
pub(crate) fn context(file: &HostFile, err: Error, operation: Operation) -> Error {
    err.with_format(FORMAT_NAME)
        .with_path(file.path())
        .with_operation(operation)
}

/// Whether an errno says the host lacks an operation (rather than that the operation failed).
pub(crate) fn is_unsupported(err: &Error) -> bool {
    matches!(
        err.errno(),
        libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS
    )
}

/// The identity: guest range = host range. [`MappedDisk`](blk_core::MappedDisk) checks ranges and write
/// access and adds the format, path, operation and offset to errors.
impl Mapper for Raw {
    #[inline]
    fn format_name(&self) -> &'static str {
        FORMAT_NAME
    }

    #[inline]
    fn logical_size(&self) -> u64 {
        self.size
    }

    #[inline]
    fn host_files(&self) -> &[HostFile] {
        std::slice::from_ref(&self.file)
    }

    /// The file itself: raw is the identity.
    fn identity_file(&self) -> Option<&HostFile> {
        Some(&self.file)
    }

    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        Ok(Arc::new(Raw {
            file: self.file.try_clone()?,
            size: self.size,
        }))
    }

    #[inline]
    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        out.push(ReadMapping::Host {
            file: 0,
            offset,
            len,
        });
        Ok(())
    }

    #[inline]
    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        out.push(WriteMapping::Host {
            file: 0,
            offset,
            len,
        });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.file.zero_range(offset, len, !may_unmap, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        match self.file.punch_hole(offset, len) {
            // On a block device discard is a hint the device may not take.
            Err(e) if self.file.is_block_device() && is_unsupported(&e) => Ok(()),
            // A file system without punch hole: still make the range read as zeros, as promised for raw files.
            Err(e) if is_unsupported(&e) => self.file.zero_range(offset, len, false, false),
            result => result,
        }
    }

    /// Syncs the file, also when it is open read-only.
    fn flush(&self) -> Result<()> {
        self.file.sync_data()
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        crate::map::first_extent(&self.file, offset, len)
    }
}

impl ImageAdmin for Raw {
    fn image_info(&self) -> Result<ImageInfo> {
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.file.path().to_path_buf(),
            virtual_size: self.size,
            actual_size: self
                .physical_size()
                .map_err(|e| context(&self.file, e, Operation::Info))?,
            cluster_size: None,
            dirty: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            format_specific: None,
        })
    }

    fn has_zero_init(&self) -> bool {
        // A new regular file is one hole; a block device keeps whatever it held.
        !self.file.is_block_device()
    }
}
