//! The format's one translation: [`Vhdx`] as a [`Mapper`], answering where a guest range lives from the
//! cached BAT, per payload block by its state ([`PayloadBlock`]):
//!
//! | state | read | write |
//! |---|---|---|
//! | FULLY_PRESENT | host range (adjacent blocks merged) | host range, in place |
//! | PARTIALLY_PRESENT | per run of sectors of its sector bitmap (cached): host range, or the parent | slow (promotion) |
//! | NOT_PRESENT with a parent | the parent (zeros past its end) | slow (allocation, copy from the parent) |
//! | NOT_PRESENT without, ZERO, UNDEFINED, UNMAPPED (both codes) | zeros | allocated here, then in place |
//! | any other | `CorruptImage` | slow (allocation) |
//!
//! A write into a block that reads as zeros allocates it while mapping, under the metadata lock: a new block at
//! the used end of the file (grown ahead, so the data writes do not extend the file), linked in memory at once
//! ([`Shared::link`](crate::shared::Shared)) and written in place like a present block; concurrent writes into
//! the same new block find it present and never wait. The rest of the block is the hole the file grew by, which
//! reads as zeros, as the old state did (QEMU relies on the grown file reading as zeros the same way), so a
//! read racing the first writes, or a crash, shows old content wherever new data is not. The BAT entries so
//! linked are logged on the next [`Mapper::flush`] (after the data is flushed), with the next logged update of
//! their BAT page, or on close.
//!
//! The session's first write updates the data write GUID in both headers, here, under the metadata lock,
//! before any piece of it is handed out (MS-VHDX 2.2.2: before the first change of user-visible data, as QEMU's
//! `vhdx_user_visible_write`). Slow pieces run [`Mapper::write_slow`] (the `slow_write` module). BAT entries
//! are atomics: the hit path (a present block) loads them without a lock and writes nothing shared.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use blk_core::buffer::total_len;
use blk_core::{
    check_range, push_disk_read, read_only_error, DiskFile, DiskTopology, Error, Extent,
    ExtentKind, HostFile, IoBuf, Mapper, Operation, ReadMapping, Result, WriteMapping,
};

use crate::bat::{self, BlockPart, PayloadBlock, PAYLOAD_FULLY_PRESENT, SB_PRESENT};
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
        for part in shared.geometry.parts(offset, len) {
            // 0 (not present) past the table; validated geometry never asks.
            match PayloadBlock::of(shared.entry(part.index), has_parent) {
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
                    let sb = shared.entry(sb_index);
                    self.map_partial(part, host, (sb_index, sb), out, start)?;
                }
                PayloadBlock::Invalid(st) => {
                    let err = self.invalid_state(part.index, st);
                    return Err(self.context(err, Operation::Read));
                }
            }
        }
        Ok(())
    }

    /// Maps `part` of a partially present block at `host`: runs of sectors whose bit is set in the sector
    /// bitmap (BAT entry `sb`) are this file's, the others the parent's (2.4). The block's bits are read once
    /// and cached.
    fn map_partial(
        &self,
        part: BlockPart,
        host: u64,
        (sb_index, sb): (usize, u64),
        out: &mut Vec<ReadMapping>,
        start: usize,
    ) -> Result<()> {
        let shared = &*self.shared;
        let g = &shared.geometry;
        if bat::state(sb) != SB_PRESENT {
            return Err(corrupt(
                shared.regions.bat.offset + sb_index as u64 * 8,
                format!(
                    "block {} is partially present but its sector bitmap block is not",
                    part.block
                ),
            ));
        }
        {
            let cache = shared
                .bitmaps
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(bits) = cache.blocks.get(&part.block) {
                self.push_sector_runs(part, host, bits, out, start);
                return Ok(());
            }
        }
        // A whole number of bytes (blocks hold at least 256 sectors), at most 256 MiB / 512 / 8: 64 KiB.
        let bytes = g.block_size / g.sector_size / 8;
        let mut bits = vec![0u8; bytes as usize].into_boxed_slice();
        self.file.read_exact_at(
            bat::file_offset(sb) + (part.block % g.chunk_ratio) * bytes,
            &mut bits,
        )?;
        self.push_sector_runs(part, host, &bits, out, start);
        shared
            .bitmaps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(part.block, bits);
        Ok(())
    }

    /// Pushes the pieces of `part` of a partially present block at `host` whose sector bitmap is `bits` (one
    /// bit per sector of the block).
    fn push_sector_runs(
        &self,
        part: BlockPart,
        host: u64,
        bits: &[u8],
        out: &mut Vec<ReadMapping>,
        start: usize,
    ) {
        let g = &self.shared.geometry;
        let ss = g.sector_size;
        let (in_off, len) = (part.in_block, part.len);
        let first = in_off / ss;
        let last = (in_off + len).div_ceil(ss);
        let present = |sector: u64| {
            bits.get((sector / 8) as usize)
                .is_some_and(|b| b & (1 << (sector % 8)) != 0)
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
    }

    /// Maps a write some of whose blocks read as zeros (see the module docs), under the metadata lock: each
    /// such block that no slow write is allocating gets a new block, linked in memory, and its part is written
    /// in place; present blocks are written in place, the others are slow. The reservations, which alone may
    /// fail, come first: a failure links nothing.
    fn map_allocating_write(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<WriteMapping>,
        start: usize,
    ) -> Result<()> {
        let shared = &*self.shared;
        let g = &shared.geometry;
        let mut meta = shared.lock_meta();
        let allocates = |block: PayloadBlock, part: &BlockPart, inflight: &HashSet<u64>| {
            block.reads_zero() && !inflight.contains(&part.block)
        };
        let first_host = meta.file_end;
        for part in g.parts(offset, len) {
            if allocates(shared.block(part.index), &part, &meta.inflight) {
                if let Err(e) = shared.reserve_block(&mut meta) {
                    meta.file_end = first_host;
                    return Err(e);
                }
            }
        }
        let mut next_host = first_host;
        for part in g.parts(offset, len) {
            let block = shared.block(part.index);
            let host = match block {
                PayloadBlock::Present { host } => Some(host),
                _ if allocates(block, &part, &meta.inflight) => {
                    let host = next_host;
                    next_host += g.block_size;
                    shared.link(
                        &mut meta,
                        part.index,
                        bat::entry(PAYLOAD_FULLY_PRESENT, host),
                    );
                    Some(host)
                }
                _ => None,
            };
            match host {
                Some(host) => WriteMapping::Host {
                    file: IMAGE_FILE,
                    offset: host + part.in_block,
                    len: part.len,
                },
                None => WriteMapping::Slow { len: part.len },
            }
            .push_onto(out, start);
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
            // The session's first guest-visible change updates the headers first, once.
            self.user_visible_write()
                .map_err(|e| self.context(e, Operation::Write))?;
        }
        let has_parent = shared.parent.is_some();
        let allocates = {
            let mut allocates = false;
            for part in shared.geometry.parts(offset, len) {
                match PayloadBlock::of(shared.entry(part.index), has_parent) {
                    PayloadBlock::Present { host } => WriteMapping::Host {
                        file: IMAGE_FILE,
                        offset: host + part.in_block,
                        len: part.len,
                    },
                    block if block.reads_zero() => {
                        allocates = true;
                        break;
                    }
                    _ => WriteMapping::Slow { len: part.len },
                }
                .push_onto(out, start);
            }
            allocates
        };
        if allocates {
            out.truncate(start);
            self.map_allocating_write(offset, len, out, start)
                .map_err(|e| self.context(e, Operation::Write))?;
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

    /// Flushes the data, then logs the BAT entries of blocks allocated since (see the module docs).
    fn flush(&self) -> Result<()> {
        let shared = &*self.shared;
        if shared.read_only {
            return Ok(());
        }
        self.file.sync_data()?;
        let mut meta = shared.lock_meta();
        shared.log_unlogged(&mut meta)
    }
}
