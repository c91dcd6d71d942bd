//! Guest I/O: reads by block state (sector bitmaps for partially present blocks), writes in place to present
//! blocks, allocation (data written and flushed before the logged BAT update), write-zeroes and discard as
//! block state changes.

use std::sync::atomic::Ordering;

use blk_core::buffer::{range, range_mut, zero_fill};
use blk_core::{IoBuf, IoBufMut, Result};

use crate::bat::{self, *};
use crate::error::corrupt;
use crate::vhdx::Vhdx;

/// The largest piece copied at once when filling a new block from its parent.
const COPY_CHUNK: u64 = 1 << 20;

/// Where a write's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'s, 'a> {
    /// Guest buffers (exactly the write's length).
    Data(&'s [IoBuf<'a>]),
    /// Zeros.
    Zeros,
}

impl Vhdx {
    /// Reads `len` guest bytes at `offset` (range already checked).
    pub(crate) fn read_range(&self, offset: u64, len: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let bs = self.shared.geometry.block_size;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (block, in_off) = (pos / bs, pos % bs);
            let n = (bs - in_off).min(len - done);
            self.read_in_block(block, in_off, n, &range_mut(bufs, done, n))?;
            done += n;
        }
        Ok(())
    }

    fn read_in_block(
        &self,
        block: u64,
        in_off: u64,
        len: u64,
        bufs: &[IoBufMut<'_>],
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let index = g.payload_index(block);
        let e = self.shared.entry(index);
        match bat::state(e) {
            PAYLOAD_FULLY_PRESENT => self
                .file
                .read_exact_vectored_at(file_offset(e) + in_off, bufs),
            PAYLOAD_PARTIALLY_PRESENT => self.read_partial(block, e, in_off, len, bufs),
            PAYLOAD_NOT_PRESENT if self.shared.parent.is_some() => {
                self.read_parent(block * g.block_size + in_off, len, bufs)
            }
            PAYLOAD_NOT_PRESENT
            | PAYLOAD_UNDEFINED
            | PAYLOAD_ZERO
            | PAYLOAD_UNMAPPED
            | PAYLOAD_UNMAPPED_V095 => {
                zero_fill(bufs);
                Ok(())
            }
            st => Err(self.invalid_state(index, st)),
        }
    }

    /// The error for payload BAT entry `index` in the state `st`, which no reader knows (shared with the
    /// asynchronous path, so both fail alike).
    pub(crate) fn invalid_state(&self, index: usize, st: u64) -> blk_core::Error {
        corrupt(
            self.shared.regions.bat.offset + index as u64 * 8,
            format!("BAT entry {index} has the invalid state {st}"),
        )
    }

    /// Reads from the parent; what lies past the parent's end reads as zeros.
    fn read_parent(&self, guest: u64, len: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let Some(parent) = &self.shared.parent else {
            zero_fill(bufs);
            return Ok(());
        };
        let size = parent.disk.logical_size();
        let n = size.saturating_sub(guest).min(len);
        if n > 0 {
            parent.disk.read_at(guest, &range_mut(bufs, 0, n))?;
        }
        if n < len {
            zero_fill(&range_mut(bufs, n, len - n));
        }
        Ok(())
    }

    /// Reads a partially present block: runs of sectors whose bitmap bit is set come from this file, the
    /// others from the parent (2.4).
    fn read_partial(
        &self,
        block: u64,
        e: u64,
        in_off: u64,
        len: u64,
        bufs: &[IoBufMut<'_>],
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let chunk = block / g.chunk_ratio;
        let sb_index = g.bitmap_index(chunk);
        let sb = self.shared.entry(sb_index);
        if bat::state(sb) != SB_PRESENT {
            return Err(corrupt(
                self.shared.regions.bat.offset + sb_index as u64 * 8,
                format!("block {block} is partially present but its sector bitmap block is not"),
            ));
        }
        let ss = g.sector_size;
        let first = in_off / ss;
        let last = (in_off + len).div_ceil(ss);
        let chunk_sector = (block % g.chunk_ratio) * (g.block_size / ss);
        let bit0 = chunk_sector + first;
        let bit1 = chunk_sector + last;
        let byte0 = bit0 / 8;
        let mut bits = vec![0u8; (bit1.div_ceil(8) - byte0) as usize];
        self.file
            .read_exact_at(file_offset(sb) + byte0, &mut bits)?;
        let present = |sector: u64| {
            let bit = chunk_sector + sector - byte0 * 8;
            bits.get((bit / 8) as usize)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
        };
        let mut sector = first;
        while sector < last {
            let p = present(sector);
            let mut end = sector + 1;
            while end < last && present(end) == p {
                end += 1;
            }
            let start_byte = (sector * ss).max(in_off);
            let end_byte = (end * ss).min(in_off + len);
            let part = range_mut(bufs, start_byte - in_off, end_byte - start_byte);
            if p {
                self.file
                    .read_exact_vectored_at(file_offset(e) + start_byte, &part)?;
            } else {
                self.read_parent(
                    block * g.block_size + start_byte,
                    end_byte - start_byte,
                    &part,
                )?;
            }
            sector = end;
        }
        Ok(())
    }

    /// Writes `len` guest bytes at `offset` from `source` (range already checked, disk writable).
    pub(crate) fn write_range(&self, offset: u64, len: u64, source: Source<'_, '_>) -> Result<()> {
        self.user_visible_write()?;
        let bs = self.shared.geometry.block_size;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (block, in_off) = (pos / bs, pos % bs);
            let n = (bs - in_off).min(len - done);
            let part;
            let src = match source {
                Source::Data(bufs) => {
                    part = range(bufs, done, n);
                    Source::Data(&part)
                }
                Source::Zeros => Source::Zeros,
            };
            self.write_in_block(block, in_off, n, src)?;
            done += n;
        }
        Ok(())
    }

    /// Changes the data write GUID once per session, before the first change of guest data.
    pub(crate) fn user_visible_write(&self) -> Result<()> {
        if self.shared.data_guid_written.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut meta = self.shared.lock_meta();
        self.shared.ensure_data_guid(&mut meta)
    }

    /// Whether a block in state `st` reads as zeros from this layer alone.
    fn reads_zero(&self, st: u64) -> bool {
        match st {
            PAYLOAD_NOT_PRESENT => self.shared.parent.is_none(),
            PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_V095 => true,
            _ => false,
        }
    }

    fn write_in_block(
        &self,
        block: u64,
        in_off: u64,
        len: u64,
        source: Source<'_, '_>,
    ) -> Result<()> {
        let shared = &self.shared;
        let index = shared.geometry.payload_index(block);
        loop {
            let e = shared.entry(index);
            let st = bat::state(e);
            if st == PAYLOAD_FULLY_PRESENT {
                let host = file_offset(e) + in_off;
                return match source {
                    Source::Data(bufs) => self.file.write_vectored_at(host, bufs),
                    Source::Zeros => self.file.zero_range(host, len, true, false),
                };
            }
            if matches!(source, Source::Zeros) && self.reads_zero(st) {
                return Ok(());
            }
            let mut meta = shared.lock_meta();
            if meta.inflight.contains(&block) {
                let _unused = shared
                    .allocated
                    .wait(meta)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let e = shared.entry(index);
            let st = bat::state(e);
            if st == PAYLOAD_FULLY_PRESENT {
                continue;
            }
            let host = if st == PAYLOAD_PARTIALLY_PRESENT {
                file_offset(e)
            } else {
                shared.reserve_block(&mut meta)?
            };
            meta.inflight.insert(block);
            drop(meta);
            let filled = self
                .fill_block(block, st, host, in_off, len, source)
                .and_then(|()| self.file.sync_data());
            let mut meta = shared.lock_meta();
            let result = filled.and_then(|()| {
                shared.commit(
                    &mut meta,
                    &[(index, bat::entry(PAYLOAD_FULLY_PRESENT, host))],
                )
            });
            meta.inflight.remove(&block);
            drop(meta);
            shared.allocated.notify_all();
            return result;
        }
    }

    /// Writes a block's whole content at `host`: what it read as before (the parent's data or its own
    /// partially present content) around the new bytes.
    fn fill_block(
        &self,
        block: u64,
        st: u64,
        host: u64,
        in_off: u64,
        len: u64,
        source: Source<'_, '_>,
    ) -> Result<()> {
        let bs = self.shared.geometry.block_size;
        let background = st == PAYLOAD_PARTIALLY_PRESENT
            || (st == PAYLOAD_NOT_PRESENT && self.shared.parent.is_some());
        if background {
            let mut buf = vec![0u8; COPY_CHUNK.min(bs) as usize];
            for (start, end) in [(0, in_off), (in_off + len, bs)] {
                let mut at = start;
                while at < end {
                    let n = (end - at).min(buf.len() as u64);
                    let piece = &mut buf[..n as usize];
                    self.read_in_block(block, at, n, &[IoBufMut::from(&mut *piece)])?;
                    self.file.write_all_at(host + at, piece)?;
                    at += n;
                }
            }
        }
        match source {
            Source::Data(bufs) => self.file.write_vectored_at(host + in_off, bufs),
            // A new block reads as zeros already (it lies past the old end of the file).
            Source::Zeros if st == PAYLOAD_PARTIALLY_PRESENT => {
                self.file.zero_range(host + in_off, len, true, false)
            }
            Source::Zeros => Ok(()),
        }
    }

    /// Write-zeroes (`unmap`: discard): whole blocks change state (ZERO, or UNMAPPED for a discard outside a
    /// differencing image) and their host range is punched; partial blocks get zeros written. Fixed images keep
    /// their blocks and get zeros written.
    pub(crate) fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.user_visible_write()?;
        let g = self.shared.geometry;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (block, in_off) = (pos / g.block_size, pos % g.block_size);
            let n = (g.block_size - in_off).min(len - done);
            let whole = in_off == 0 && (n == g.block_size || pos + n == g.virtual_size);
            if whole && !self.shared.leave_allocated() {
                let state = if unmap && self.shared.parent.is_none() {
                    PAYLOAD_UNMAPPED
                } else {
                    PAYLOAD_ZERO
                };
                self.set_block_state(block, state)?;
            } else {
                self.write_in_block(block, in_off, n, Source::Zeros)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Moves a block to a state without data (through the log), then frees its old host range.
    fn set_block_state(&self, block: u64, state: u64) -> Result<()> {
        let shared = &self.shared;
        let index = shared.geometry.payload_index(block);
        let mut meta = shared.lock_meta();
        while meta.inflight.contains(&block) {
            meta = shared
                .allocated
                .wait(meta)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let old = shared.entry(index);
        if old == bat::entry(state, 0) {
            return Ok(());
        }
        shared.commit(&mut meta, &[(index, bat::entry(state, 0))])?;
        drop(meta);
        if matches!(
            bat::state(old),
            PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
        ) {
            // Freed space is never reused, so punching it cannot hurt another block; a host without punch
            // hole keeps the bytes, which nothing references any more.
            let _ = self
                .file
                .punch_hole(file_offset(old), shared.geometry.block_size);
        }
        Ok(())
    }
}
