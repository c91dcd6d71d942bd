//! The format's one translation: [`Vhdx`] as a [`Mapper`], answering where a guest range lives from the
//! cached BAT, per payload block by its state ([`PayloadBlock`]):
//!
//! | state | read | write |
//! |---|---|---|
//! | FULLY_PRESENT | host range (adjacent blocks merged) | host range, in place |
//! | PARTIALLY_PRESENT | per run of sectors of its sector bitmap: host range, or the parent | slow (promotion) |
//! | NOT_PRESENT with a parent | the parent (zeros past its end) | slow (allocation, copy from the parent) |
//! | NOT_PRESENT without, ZERO, UNDEFINED, UNMAPPED (both codes) | zeros | slow (allocation) |
//! | any other | `CorruptImage` | slow (allocation) |
//!
//! Writes are slow whole until the session's first guest-visible change has rewritten the data write GUID.
//! Slow pieces run [`Mapper::write_slow`] (the `slow_write` module), the only writer of metadata, so the
//! crash-safety order and the lock order stay there; the mapper allocates nothing. The BAT's read lock is taken
//! once per request (once more after each partially present block, whose bitmap is read without it) and never
//! held across I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blk_core::buffer::total_len;
use blk_core::{
    check_range, push_disk_read, read_only_error, DiskFile, DiskTopology, Error, Extent,
    ExtentKind, HostFile, IoBuf, Mapper, Operation, ReadMapping, Result, WriteMapping,
};

use crate::bat::{self, BlockPart, PayloadBlock, SB_PRESENT};
use crate::error::corrupt;
use crate::vhdx::Vhdx;
use crate::FORMAT_NAME;

/// The image file's index in [`Mapper::host_files`].
const IMAGE_FILE: usize = 0;
/// The differencing parent's index for [`Mapper::disk`].
const PARENT: usize = 0;

impl Vhdx {
    /// The error for payload BAT entry `index` in the state `st`, which no reader knows.
    fn invalid_state(&self, index: usize, st: u64) -> Error {
        corrupt(
            self.shared.regions.bat.offset + index as u64 * 8,
            format!("BAT entry {index} has the invalid state {st}"),
        )
    }

    /// Refuses a request outside the disk.
    fn check_request(&self, offset: u64, len: u64, operation: Operation) -> Result<()> {
        check_range(offset, len, self.shared.geometry.virtual_size)
            .map_err(|e| self.context(e, operation))
    }

    /// Pushes the parent's piece of a read of `len` bytes at guest `offset` (zeros past the parent's end, or
    /// without a parent).
    fn push_parent(&self, out: &mut Vec<ReadMapping>, start: usize, offset: u64, len: u64) {
        match &self.shared.parent {
            Some(parent) => {
                push_disk_read(out, start, PARENT, parent.disk.logical_size(), offset, len);
            }
            None => ReadMapping::Zero { len }.push_onto(out, start),
        }
    }

    /// Maps a read of the checked range `offset..offset + len`; pieces go to `out` after index `start`.
    fn map_read_blocks(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadMapping>,
        start: usize,
    ) -> Result<()> {
        let shared = &*self.shared;
        let has_parent = shared.parent.is_some();
        let mut parts = shared.geometry.parts(offset, len);
        loop {
            // Host ranges, parents and zeros under one read lock, up to a partially present block.
            let partial = {
                let table = shared.bat_read();
                let mut partial = None;
                for part in parts.by_ref() {
                    // 0 (not present) past the table; validated geometry never asks.
                    let entry = table.get(part.index).copied().unwrap_or(0);
                    match PayloadBlock::of(entry, has_parent) {
                        PayloadBlock::Present { host } => ReadMapping::Host {
                            file: IMAGE_FILE,
                            offset: host + part.in_block,
                            len: part.len,
                        }
                        .push_onto(out, start),
                        PayloadBlock::Parent => self.push_parent(out, start, part.guest, part.len),
                        PayloadBlock::Unallocated | PayloadBlock::Zero => {
                            ReadMapping::Zero { len: part.len }.push_onto(out, start);
                        }
                        PayloadBlock::Partial { host } => {
                            let g = &shared.geometry;
                            let sb_index = g.bitmap_index(part.block / g.chunk_ratio);
                            let sb = table.get(sb_index).copied().unwrap_or(0);
                            partial = Some((part, host, sb_index, sb));
                            break;
                        }
                        PayloadBlock::Invalid(st) => {
                            let err = self.invalid_state(part.index, st);
                            return Err(self.context(err, Operation::Read));
                        }
                    }
                }
                partial
            };
            match partial {
                Some((part, host, sb_index, sb)) => {
                    self.map_partial(part, host, (sb_index, sb), out, start)?;
                }
                None => return Ok(()),
            }
        }
    }

    /// Maps `part` of a partially present block at `host`: runs of sectors whose bit is set in the sector
    /// bitmap (BAT entry `sb`) are this file's, the others the parent's (2.4).
    fn map_partial(
        &self,
        part: BlockPart,
        host: u64,
        (sb_index, sb): (usize, u64),
        out: &mut Vec<ReadMapping>,
        start: usize,
    ) -> Result<()> {
        let g = &self.shared.geometry;
        if bat::state(sb) != SB_PRESENT {
            return Err(corrupt(
                self.shared.regions.bat.offset + sb_index as u64 * 8,
                format!(
                    "block {} is partially present but its sector bitmap block is not",
                    part.block
                ),
            ));
        }
        let ss = g.sector_size;
        let (in_off, len) = (part.in_block, part.len);
        let first = in_off / ss;
        let last = (in_off + len).div_ceil(ss);
        let chunk_sector = (part.block % g.chunk_ratio) * (g.block_size / ss);
        let byte0 = (chunk_sector + first) / 8;
        // At most block size / sector size / 8 bytes: 64 KiB.
        let mut bits = vec![0u8; ((chunk_sector + last).div_ceil(8) - byte0) as usize];
        self.file
            .read_exact_at(bat::file_offset(sb) + byte0, &mut bits)?;
        let present = |sector: u64| {
            let bit = chunk_sector + sector - byte0 * 8;
            bits.get((bit / 8) as usize)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
        };
        let mut sector = first;
        while sector < last {
            let here = present(sector);
            let mut end = sector + 1;
            while end < last && present(end) == here {
                end += 1;
            }
            let start_byte = (sector * ss).max(in_off);
            let n = (end * ss).min(in_off + len) - start_byte;
            if here {
                ReadMapping::Host {
                    file: IMAGE_FILE,
                    offset: host + start_byte,
                    len: n,
                }
                .push_onto(out, start);
            } else {
                self.push_parent(out, start, part.block * g.block_size + start_byte, n);
            }
            sector = end;
        }
        Ok(())
    }

    /// The allocation status of the run starting at `offset` (at most `len` bytes) in this layer: data
    /// (with its host offset) for present blocks, zero for zero/unmapped/undefined blocks, unallocated for
    /// not-present blocks (whose data comes from the parent, at depth 1, in a differencing image). Partially
    /// present blocks show as data.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        let g = self.shared.geometry;
        check_range(offset, len, g.virtual_size)?;
        let status = |pos: u64| match self.shared.block(g.payload_index(pos / g.block_size)) {
            PayloadBlock::Present { host } | PayloadBlock::Partial { host } => {
                (ExtentKind::Data, 0, Some(host + pos % g.block_size))
            }
            PayloadBlock::Parent => (ExtentKind::Data, 1, None),
            PayloadBlock::Unallocated => (ExtentKind::Unallocated, 0, None),
            PayloadBlock::Zero | PayloadBlock::Invalid(_) => (ExtentKind::Zero, 0, None),
        };
        let (kind, depth, host) = status(offset);
        let mut end = offset;
        loop {
            let next = ((end / g.block_size) + 1) * g.block_size;
            end = next.min(offset + len);
            if end >= offset + len {
                break;
            }
            let (k, d, h) = status(end);
            let contiguous = match (host, h) {
                (Some(a), Some(b)) => b == a + (end - offset),
                (None, None) => true,
                _ => false,
            };
            if k != kind || d != depth || !contiguous {
                break;
            }
        }
        Ok(Extent {
            offset,
            length: end - offset,
            kind,
            depth,
            host_offset: host,
            compressed: false,
        })
    }
}

impl Mapper for Vhdx {
    fn format_name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn logical_size(&self) -> u64 {
        self.shared.geometry.virtual_size
    }

    fn host_files(&self) -> &[HostFile] {
        std::slice::from_ref(&self.file)
    }

    /// A second handle with its own descriptor, sharing the metadata.
    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        Ok(Arc::new(Vhdx {
            file: self.file.try_clone()?,
            shared: Arc::clone(&self.shared),
        }))
    }

    /// Refuses a range outside the disk ([`ErrorKind::OutOfBounds`](blk_core::ErrorKind::OutOfBounds)) and
    /// a block in an unknown state (`CorruptImage`), naming the image and the operation.
    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        self.check_request(offset, len, Operation::Read)?;
        let start = out.len();
        let mapped = self.map_read_blocks(offset, len, out, start);
        if mapped.is_err() {
            out.truncate(start);
        }
        mapped
    }

    /// Refuses a read-only image and a range outside the disk.
    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        let shared = &*self.shared;
        if shared.read_only {
            let err = read_only_error(Operation::Write).with_offset(offset);
            return Err(self.context(err, Operation::Write));
        }
        self.check_request(offset, len, Operation::Write)?;
        let start = out.len();
        if len == 0 {
            return Ok(());
        }
        if !shared.data_guid_written.load(Ordering::Acquire) {
            // The first guest-visible change of the session updates the headers first.
            WriteMapping::Slow { len }.push_onto(out, start);
            return Ok(());
        }
        let has_parent = shared.parent.is_some();
        let table = shared.bat_read();
        for part in shared.geometry.parts(offset, len) {
            let entry = table.get(part.index).copied().unwrap_or(0);
            match PayloadBlock::of(entry, has_parent) {
                PayloadBlock::Present { host } => WriteMapping::Host {
                    file: IMAGE_FILE,
                    offset: host + part.in_block,
                    len: part.len,
                },
                _ => WriteMapping::Slow { len: part.len },
            }
            .push_onto(out, start);
        }
        Ok(())
    }

    /// Writes block by block (in place, or allocating: the `slow_write` module), after the session's data write
    /// GUID.
    fn write_slow(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.user_visible_write()?;
        for part in self.shared.geometry.parts(offset, total_len(bufs)) {
            let data = blk_core::buffer::range(bufs, part.guest - offset, part.len);
            self.write_in_block(part, Some(&data))?;
        }
        Ok(())
    }

    /// The parent of a differencing image.
    fn disk(&self, index: usize) -> Option<&dyn DiskFile> {
        match (index, &self.shared.parent) {
            (PARENT, Some(parent)) => Some(parent.disk.as_ref()),
            _ => None,
        }
    }

    fn is_read_only(&self) -> bool {
        self.shared.read_only
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

    /// QEMU's vhdx driver reports no block status, so `qemu-img map` shows the whole disk as data at depth 0
    /// without offsets; this mirrors it. [`Vhdx::allocation`] gives the real per-block status.
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        Ok(Extent::data(offset, len, None))
    }

    /// Whole blocks become ZERO (whether or not `may_unmap`); partial ones get zeros.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let _ = may_unmap;
        self.zero_range(offset, len, false)
    }

    /// Whole blocks become UNMAPPED (ZERO in a differencing image); partial ones get zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len, true)
    }
}
