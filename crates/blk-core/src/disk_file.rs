//! The traits a VMM holds a disk by: [`DiskFile`] (synchronous, `&self`, cloneable per queue) and
//! [`AsyncDiskFile`] (hands out one [`AsyncIo`] queue per virtio queue). They are the data plane only: nothing
//! here changes an image's metadata outside guest I/O. What `qemu-img` does to an image (info, check, snapshots,
//! compressed writes, ...) is [`ImageAdmin`](crate::ImageAdmin), a separate handle.

use std::fmt::Debug;

use crate::async_io::AsyncIo;
use crate::buffer::{IoBuf, IoBufMut};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::extent::Extent;
use crate::host_file::HostFile;
use crate::properties::DiskProperties;
use crate::topology::DiskTopology;

/// A disk image opened for guest I/O.
///
/// Every method takes `&self`: one `DiskFile` may serve several threads at once, and implementations keep
/// their metadata behind their own fine-grained locks (never one lock held across data I/O). Offsets and
/// lengths are guest bytes; a request must lie within [`logical_size`](DiskFile::logical_size), or it fails
/// with [`ErrorKind::OutOfBounds`]. Data requests transfer everything or fail.
///
/// The trait is object-safe: VMMs hold `Box<dyn DiskFile>`. It holds the guest's data plane only (I/O, size,
/// topology, allocation map, flush, clone): no method changes the image's metadata except as guest I/O does.
/// Formats implement it through [`MappedDisk`](crate::MappedDisk), from their [`Mapper`](crate::Mapper).
pub trait DiskFile: Send + Sync + Debug {
    /// The guest-visible size in bytes.
    fn logical_size(&self) -> u64;

    /// Host bytes allocated to the image (for a sparse file, less than its length).
    fn physical_size(&self) -> Result<u64>;

    /// The block geometry to show the guest.
    fn topology(&self) -> DiskTopology;

    /// Whether the disk was opened read-only.
    fn is_read_only(&self) -> bool;

    /// Everything a front end shows the guest: capacity, geometry, alignments, limits, discard support. The
    /// default builds it from [`logical_size`](DiskFile::logical_size), [`topology`](DiskFile::topology) and
    /// [`is_read_only`](DiskFile::is_read_only), without O_DIRECT alignment.
    fn properties(&self) -> DiskProperties {
        DiskProperties::new(
            self.logical_size(),
            self.is_read_only(),
            self.topology(),
            None,
        )
    }

    /// An independent handle with its own file descriptor(s), sharing metadata caches safely with `self`:
    /// how each virtio queue or worker thread gets its own handle.
    fn try_clone(&self) -> Result<Box<dyn DiskFile>>;

    /// Reads `sum(bufs.len)` guest bytes starting at `offset` into `bufs`, in order.
    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()>;

    /// Writes `sum(bufs.len)` guest bytes starting at `offset` from `bufs`, in order.
    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()>;

    /// Makes `len` bytes at `offset` read as zeros; with `may_unmap`, the range may be deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;

    /// Tells the disk that `len` bytes at `offset` are no longer needed. What they read as afterwards is
    /// format-defined (zeros for raw files and QCOW2 without backing file).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// The host file this disk is, byte for byte, when it is one (see [`Mapper::identity_file`](crate::Mapper::identity_file)): a format
    /// that opened this disk as a file its image names may put its I/O on its own host queue. The default:
    /// none.
    fn identity_file(&self) -> Option<&HostFile> {
        None
    }

    /// Where the guest range starting at `offset` (at most `len` bytes) lives: the first run of equal status.
    ///
    /// The default says "all data", which is always correct, only not sparse.
    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        check_range(offset, len, self.logical_size())?;
        Ok(Extent::data(offset, len, None))
    }

    /// Reads `buf.len()` guest bytes at `offset`: [`read_at`](DiskFile::read_at) for one plain buffer.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, &[IoBufMut::from(buf)])
    }

    /// Writes `buf` at guest `offset`: [`write_at`](DiskFile::write_at) for one plain buffer.
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_at(offset, &[IoBuf::from(buf)])
    }
}

/// A [`DiskFile`] that can serve asynchronous queues.
pub trait AsyncDiskFile: DiskFile {
    /// A new queue of at most `ring_depth` requests in flight, with its own completion eventfd. Call once per
    /// virtio queue; queues of one disk share its metadata.
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>>;

    /// Like [`DiskFile::try_clone`], keeping the async capability.
    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>>;

    /// The backend the queues of [`create_async_io`](AsyncDiskFile::create_async_io) do their I/O on:
    /// `io_uring`, `aio` or `sync`.
    fn backend(&self) -> &'static str {
        "sync"
    }
}

/// Checks that `len` bytes at `offset` lie within a disk of `size` bytes.
#[inline]
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::out_of_bounds(offset, len, size)),
    }
}

/// The error for a modifying request on a read-only disk.
pub fn read_only_error(operation: Operation) -> Error {
    Error::new(ErrorKind::ReadOnly, "the disk is opened read-only").with_operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        let e = check_range(8, 4, 10).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert_eq!(e.offset(), Some(8));
        assert!(check_range(u64::MAX, 2, 10).is_err());
    }

    #[test]
    fn traits_are_object_safe() {
        fn takes(_: Option<Box<dyn DiskFile>>, _: Option<Box<dyn AsyncDiskFile>>) {}
        takes(None, None);
    }
}
