//! Writes that change metadata, for the pieces the mapping answers slow: the session's data write GUID (also
//! updated by the mapping, for the first write), allocation and promotion of a block that reads from the
//! parent or a sector bitmap (its data written and flushed before the logged BAT update; blocks that read as
//! zeros are allocated by the mapping), and write-zeroes and discard as block state changes.

use std::sync::atomic::Ordering;

use blk_core::{read_mapped, IoBuf, IoBufMut, Result};

use crate::bat::{
    self, BlockPart, PayloadBlock, PAYLOAD_FULLY_PRESENT, PAYLOAD_UNMAPPED, PAYLOAD_ZERO,
};
use crate::vhdx::Vhdx;

/// The largest piece copied at once when filling a new block from what it read as before.
const COPY_CHUNK: u64 = 1 << 20;

/// What a write puts in a block: guest bytes (exactly the part's length), or zeros (`None`).
type Source<'s, 'a> = Option<&'s [IoBuf<'a>]>;

impl Vhdx {
    /// Changes the data write GUID once per session, before the first change of guest data.
    pub(crate) fn user_visible_write(&self) -> Result<()> {
        if self.shared.data_guid_written.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut meta = self.shared.lock_meta();
        self.shared.ensure_data_guid(&mut meta)
    }

    /// Writes `part` of its block from `source`: in place when the block is present, else by allocating (or
    /// promoting a partially present block): the block's whole content written and flushed, then its BAT entry
    /// logged. Writers of a block being allocated wait for it.
    pub(crate) fn write_in_block(&self, part: BlockPart, source: Source<'_, '_>) -> Result<()> {
        let shared = &self.shared;
        loop {
            let block = shared.block(part.index);
            if let PayloadBlock::Present { host } = block {
                let host = host + part.in_block;
                return match source {
                    Some(bufs) => self.file.write_vectored_at(host, bufs),
                    None => self.file.zero_range(host, part.len, true, false),
                };
            }
            if source.is_none() && block.reads_zero() {
                return Ok(());
            }
            let mut meta = shared.lock_meta();
            if meta.inflight.contains(&part.block) {
                drop(shared.wait_allocated(meta));
                continue;
            }
            let block = shared.block(part.index);
            let host = match block {
                PayloadBlock::Present { .. } => continue,
                PayloadBlock::Partial { host } => host,
                _ => shared.reserve_block(&mut meta)?,
            };
            meta.inflight.insert(part.block);
            drop(meta);
            let filled = self
                .fill_block(part, block, host, source)
                .and_then(|()| self.file.sync_data());
            let mut meta = shared.lock_meta();
            let result = filled.and_then(|()| {
                shared.commit(
                    &mut meta,
                    &[(part.index, bat::entry(PAYLOAD_FULLY_PRESENT, host))],
                )
            });
            meta.inflight.remove(&part.block);
            drop(meta);
            shared.allocated.notify_all();
            return result;
        }
    }

    /// Writes the whole content of `part`'s block (in state `old`) at `host`: what it read as before (the
    /// parent's data or its own partially present content, read through the mapping) around the new bytes.
    fn fill_block(
        &self,
        part: BlockPart,
        old: PayloadBlock,
        host: u64,
        source: Source<'_, '_>,
    ) -> Result<()> {
        let g = &self.shared.geometry;
        if matches!(old, PayloadBlock::Partial { .. } | PayloadBlock::Parent) {
            let base = part.block * g.block_size;
            // The last block may reach past the disk: nothing reads that part.
            let block_end = (g.virtual_size - base).min(g.block_size);
            let mut buf = vec![0u8; COPY_CHUNK.min(g.block_size) as usize];
            for (start, end) in [(0, part.in_block), (part.in_block + part.len, block_end)] {
                let mut at = start;
                while at < end {
                    let n = (end - at).min(buf.len() as u64);
                    let piece = &mut buf[..n as usize];
                    read_mapped(self, base + at, &[IoBufMut::from(&mut *piece)])?;
                    self.file.write_all_at(host + at, piece)?;
                    at += n;
                }
            }
        }
        match source {
            Some(bufs) => self.file.write_vectored_at(host + part.in_block, bufs),
            // A new block reads as zeros already (it lies past the old end of the file).
            None if matches!(old, PayloadBlock::Partial { .. }) => {
                self.file
                    .zero_range(host + part.in_block, part.len, true, false)
            }
            None => Ok(()),
        }
    }

    /// Write-zeroes (`unmap`: discard): whole blocks change state (ZERO, or UNMAPPED for a discard outside a
    /// differencing image) and their host range is punched; partial blocks get zeros written. Fixed images keep
    /// their blocks and get zeros written.
    pub(crate) fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.user_visible_write()?;
        let g = self.shared.geometry;
        for part in g.parts(offset, len) {
            let whole = part.in_block == 0
                && (part.len == g.block_size || part.guest + part.len == g.virtual_size);
            if whole && !self.shared.leave_allocated() {
                let state = if unmap && self.shared.parent.is_none() {
                    PAYLOAD_UNMAPPED
                } else {
                    PAYLOAD_ZERO
                };
                self.set_block_state(part, state)?;
            } else {
                self.write_in_block(part, None)?;
            }
        }
        Ok(())
    }

    /// Moves `part`'s block to a state without data (through the log), then frees its old host range.
    fn set_block_state(&self, part: BlockPart, state: u64) -> Result<()> {
        let shared = &self.shared;
        let mut meta = shared.lock_meta();
        while meta.inflight.contains(&part.block) {
            meta = shared.wait_allocated(meta);
        }
        let old = shared.entry(part.index);
        if old == bat::entry(state, 0) {
            return Ok(());
        }
        shared.commit(&mut meta, &[(part.index, bat::entry(state, 0))])?;
        drop(meta);
        if let Some(host) = PayloadBlock::of(old, shared.parent.is_some()).host() {
            // Freed space is never reused, so punching it cannot hurt another block; a host without punch
            // hole keeps the bytes, which nothing references any more.
            let _ = self.file.punch_hole(host, shared.geometry.block_size);
        }
        Ok(())
    }
}
