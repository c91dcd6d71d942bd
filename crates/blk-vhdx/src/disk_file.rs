//! [`DiskFile`] and [`AsyncDiskFile`] (queues are [`VhdxAsync`]) for [`Vhdx`].

use blk_core::buffer::{total_len, total_len_mut};
use blk_core::{
    check_range, read_only_error, AsyncDiskFile, AsyncIo, CheckReport, DiskFile, DiskTopology,
    Extent, ImageInfo, IoBuf, IoBufMut, Operation, RepairMode, Result,
};

use crate::bat::{self, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT};
use crate::io::Source;
use crate::vhdx::Vhdx;
use crate::vhdx_async::VhdxAsync;

impl Vhdx {
    fn guard(&self, offset: u64, len: u64, operation: Operation, write: bool) -> Result<()> {
        if write && self.shared.read_only {
            return Err(self.context(read_only_error(operation).with_offset(offset), operation));
        }
        check_range(offset, len, self.shared.geometry.virtual_size)
            .map_err(|e| self.context(e, operation))
    }
}

impl DiskFile for Vhdx {
    fn logical_size(&self) -> u64 {
        self.shared.geometry.virtual_size
    }

    fn physical_size(&self) -> Result<u64> {
        self.file
            .allocated_size()
            .map_err(|e| self.context(e, Operation::Open))
    }

    fn topology(&self) -> DiskTopology {
        let p = &self.shared.params;
        DiskTopology {
            logical_block_size: p.logical_sector_size,
            physical_block_size: p.physical_sector_size,
            minimum_io_size: p.physical_sector_size,
            optimal_io_size: 0,
            discard_granularity: p.block_size,
        }
    }

    fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(
            self.duplicate()
                .map_err(|e| self.context(e, Operation::Open))?,
        ))
    }

    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        self.guard(offset, len, Operation::Read, false)?;
        self.read_range(offset, len, bufs)
            .map_err(|e| self.context(e, Operation::Read))
    }

    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        self.guard(offset, len, Operation::Write, true)?;
        if len == 0 {
            return Ok(());
        }
        self.write_range(offset, len, Source::Data(bufs))
            .map_err(|e| self.context(e, Operation::Write))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.guard(offset, len, Operation::WriteZeroes, true)?;
        let _ = may_unmap; // whole blocks become ZERO either way; partial ones get zeros
        self.zero_range(offset, len, false)
            .map_err(|e| self.context(e, Operation::WriteZeroes))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.guard(offset, len, Operation::Discard, true)?;
        self.zero_range(offset, len, true)
            .map_err(|e| self.context(e, Operation::Discard))
    }

    fn flush(&self) -> Result<()> {
        // Metadata is logged, applied and flushed as it changes; only guest data may be in the page cache.
        self.file
            .sync_data()
            .map_err(|e| self.context(e, Operation::Flush))
    }

    /// QEMU's vhdx driver reports no block status, so `qemu-img map` shows the whole disk as data at depth 0
    /// without offsets; this mirrors it. [`Vhdx::allocation`] gives the real per-block status.
    fn map(&self, offset: u64, len: u64) -> Result<Extent> {
        self.guard(offset, len, Operation::Map, false)?;
        Ok(Extent::data(offset, len, None))
    }

    fn image_info(&self) -> Result<ImageInfo> {
        self.info().map_err(|e| self.context(e, Operation::Open))
    }

    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        self.check_image(repair)
            .map_err(|e| self.context(e, Operation::Check))
    }

    fn has_zero_init(&self) -> bool {
        if self.shared.parent.is_some() {
            return false;
        }
        let bat = self
            .shared
            .bat
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !bat.iter().any(|&e| {
            matches!(
                bat::state(e),
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
            )
        })
    }
}

impl AsyncDiskFile for Vhdx {
    /// A [`VhdxAsync`] queue doing host I/O on the backend set with [`Vhdx::set_io_backend`].
    fn create_async_io(&self, ring_depth: u32) -> Result<Box<dyn AsyncIo>> {
        Ok(Box::new(VhdxAsync::new(
            self,
            self.backend.as_ref(),
            ring_depth,
        )?))
    }

    fn try_clone_async(&self) -> Result<Box<dyn AsyncDiskFile>> {
        Ok(Box::new(
            self.duplicate()
                .map_err(|e| self.context(e, Operation::Open))?,
        ))
    }
}
