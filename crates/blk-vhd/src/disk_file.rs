//! [`DiskFile`] and [`AsyncDiskFile`] (queues are [`VhdAsync`]) for [`Vhd`], and `image_info` as `qemu-img info -f vpc` shows it.

use blk_core::buffer::{total_len, total_len_mut};
use blk_core::{
    check_range, read_only_error, AsyncDiskFile, AsyncIo, CheckReport, DiskFile, DiskTopology,
    Extent, ImageInfo, IoBuf, IoBufMut, Operation, RepairMode, Result,
};

use crate::footer::DiskType;
use crate::vhd::Vhd;
use crate::vhd_async::VhdAsync;
use crate::FORMAT_NAME;

impl Vhd {
    fn check_request(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        check_range(offset, len, self.shared.size)
            .map_err(|e| self.context(e, operation, Some(offset)))
    }

    fn check_writable(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        if self.file.is_read_only() {
            return Err(self.context(read_only_error(operation), operation, Some(offset)));
        }
        self.check_request(offset, len, operation)
    }
}

impl DiskFile for Vhd {
    fn logical_size(&self) -> u64 {
        self.shared.size
    }

    fn physical_size(&self) -> Result<u64> {
        self.file
            .allocated_size()
            .map_err(|e| self.context(e, Operation::Open, None))
    }

    fn topology(&self) -> DiskTopology {
        DiskTopology::default()
    }

    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }

    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }

    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        self.check_request(offset, len, Operation::Read)?;
        if len == 0 {
            return Ok(());
        }
        self.read_guest(offset, bufs)
            .map_err(|e| self.context(e, Operation::Read, Some(offset)))
    }

    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        self.check_writable(offset, len, Operation::Write)?;
        if len == 0 {
            return Ok(());
        }
        self.write_guest(offset, bufs)
            .map_err(|e| self.context(e, Operation::Write, Some(offset)))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_writable(offset, len, Operation::WriteZeroes)?;
        if len == 0 {
            return Ok(());
        }
        self.write_zeroes_guest(offset, len, may_unmap)
            .map_err(|e| self.context(e, Operation::WriteZeroes, Some(offset)))
    }

    /// A no-op, as in QEMU (the vpc driver has no discard): the data stays.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable(offset, len, Operation::Discard)
    }

    fn flush(&self) -> Result<()> {
        if self.file.is_read_only() {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.context(e, Operation::Flush, None))
    }

    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        self.check_request(offset, len, Operation::Map)?;
        if len == 0 {
            return Ok(Extent::data(offset, 0, None));
        }
        self.map_guest(offset, len)
            .map_err(|e| self.context(e, Operation::Map, Some(offset)))
    }

    fn image_info(&self) -> Result<ImageInfo> {
        let parent = self.shared.parent.as_ref();
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.file.path().to_path_buf(),
            virtual_size: self.shared.size,
            actual_size: self.physical_size()?,
            cluster_size: self.block_size(),
            dirty: false,
            backing_filename: parent.map(|p| p.recorded.clone()),
            full_backing_filename: parent.map(|p| p.path.clone()),
            backing_format: parent.map(|_| FORMAT_NAME.to_string()),
            snapshots: Vec::new(),
            format_specific: None,
        })
    }

    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        self.check_image(repair)
            .map_err(|e| self.context(e, Operation::Check, None))
    }

    /// Dynamic disks read unallocated blocks as zeros; fixed ones are as zero as their file (a new one is a
    /// hole); differencing ones show their parent.
    fn has_zero_init(&self) -> bool {
        match self.shared.disk_type {
            DiskType::Dynamic => true,
            DiskType::Fixed => !self.file.is_block_device(),
            DiskType::Differencing => false,
        }
    }
}

impl AsyncDiskFile for Vhd {
    /// A [`VhdAsync`] queue doing host I/O on the backend set with [`Vhd::set_io_backend`].
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>> {
        Ok(Box::new(VhdAsync::new(
            self,
            self.backend.as_ref(),
            ring_depth,
        )?))
    }

    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>> {
        Ok(Box::new(self.duplicate()?))
    }
}
