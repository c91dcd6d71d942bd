//! The writes the mapper answers slow ([`Mapper::write_slow`](blk_core::Mapper::write_slow)): block allocation
//! in crash-safe order, sector bitmap bits to set, and partial sectors merged with what lies below.
//!
//! Block allocation: dynamic disks reserve and link blocks as the fast path does (the `allocation` module),
//! the write running here instead of on the backend. Differencing disks allocate here only: under the
//! allocator lock, the footer is first written after the new block (QEMU moves the footer first too), then
//! the block's sector bitmap (the written sectors' bits) and the first write's data go where the end footer
//! was, the file is synced, and only then is the BAT entry written (and published in memory). So a process
//! killed at any step leaves a file that ends with a valid footer: either the old image with a leaked block's
//! worth of space before the footer (opens, checks clean, the next allocation reuses the place) or the new
//! block fully in place.

use blk_core::buffer::{range, total_len};
use blk_core::{read_mapped, Error, ErrorKind, IoBuf, IoBufMut, Result};

use crate::allocation::entry_for;
use crate::bat::{SparseLayout, UNALLOCATED};
use crate::footer::DiskType;
use crate::sector_bitmap::Block;
use crate::vhd::Vhd;

impl Vhd {
    /// Writes `bufs` at guest `offset`, a range the mapper answered slow, block by block.
    pub(crate) fn write_slow_pieces(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let Some(sparse) = &self.shared.sparse else {
            // Never answered slow: fixed disks are written in place.
            return self.file.write_vectored_at(offset, bufs);
        };
        for piece in sparse.pieces(offset, total_len(bufs)) {
            self.write_chunk(sparse, piece.pos, &range(bufs, piece.done, piece.len))?;
        }
        Ok(())
    }

    /// Writes within one block, merging partial sectors first where the bitmap would otherwise expose bytes
    /// the guest never wrote.
    fn write_chunk(&self, sparse: &SparseLayout, pos: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        let aligned = pos % 512 == 0 && len % 512 == 0;
        if aligned || !self.needs_merge(sparse, pos, len)? {
            return self.write_sectors(sparse, pos, bufs);
        }
        let _merge = self
            .shared
            .merge_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let start = pos - pos % 512;
        let end = (pos + len).div_ceil(512) * 512;
        // At most one block (and its size was checked at open).
        let mut merged = vec![0u8; (end - start) as usize];
        read_mapped(self, start, &[IoBufMut::from(&mut merged[..])])?;
        let mut at = (pos - start) as usize;
        for b in bufs {
            let dst = merged
                .get_mut(at..at + b.len())
                .ok_or_else(|| Error::new(ErrorKind::Io, "merge buffer overflow"))?;
            b.copy_to(dst);
            at += b.len();
        }
        self.write_sectors(sparse, start, &[IoBuf::from(&merged[..])])
    }

    /// Whether an unaligned write must merge its partial sectors: always for differencing disks (the rest of
    /// the sector comes from the parent), for dynamic ones only when a partial sector's bit is clear in an
    /// allocated block.
    fn needs_merge(&self, sparse: &SparseLayout, pos: u64, len: u64) -> Result<bool> {
        if self.shared.disk_type == DiskType::Differencing {
            return Ok(true);
        }
        let Block::Partial { bitmap, .. } = self.classify(sparse, pos / sparse.block_size)? else {
            return Ok(false);
        };
        let in_block = pos % sparse.block_size;
        let first = in_block / 512;
        let last = (in_block + len - 1) / 512;
        let bits = self.read_bitmap(bitmap, first, last)?;
        Ok(!(bits.present(first) && bits.present(last)))
    }

    /// Writes within one block (sector-aligned for differencing disks), allocating it if needed, and sets the
    /// bitmap bits of the sectors written.
    fn write_sectors(&self, sparse: &SparseLayout, pos: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        let block = pos / sparse.block_size;
        let in_block = pos % sparse.block_size;
        let first = in_block / 512;
        let last = (in_block + len - 1) / 512;
        loop {
            match self.classify(sparse, block)? {
                Block::Full { data } => return self.file.write_vectored_at(data + in_block, bufs),
                Block::Partial { bitmap, data } => {
                    self.file.write_vectored_at(data + in_block, bufs)?;
                    return self.set_bits(sparse, block, bitmap, first, last);
                }
                Block::Unallocated => {}
            }
            if self.shared.disk_type == DiskType::Dynamic {
                // The fast path's reservation, written here (see the `allocation` module).
                let Some((link, data)) = self.reserve(sparse, block)? else {
                    continue;
                };
                let written = self.file.write_vectored_at(data + in_block, bufs);
                return self.finish_reservation(sparse, link, written);
            }
            let mut alloc = sparse.lock_allocator();
            if sparse.entry(block) != UNALLOCATED {
                continue;
            }
            let sectors = (first, last);
            return self.allocate(sparse, &mut alloc.next, block, in_block, sectors, bufs);
        }
    }

    /// Allocates `block` of a differencing disk at `*next` and writes the first data into it, at `in_block`,
    /// covering sectors `first..=last`, whose bits alone are set (see the module docs for the order).
    fn allocate(
        &self,
        sparse: &SparseLayout,
        next: &mut u64,
        block: u64,
        in_block: u64,
        (first, last): (u64, u64),
        bufs: &[IoBuf<'_>],
    ) -> Result<()> {
        entry_for(sparse.block_start(*next))?;
        let start = self.prepare_block(sparse, *next, (first, last))?;
        let data = start + sparse.bitmap_size;
        self.file.write_vectored_at(data + in_block, bufs)?;
        self.file.sync_data()?;
        self.link_block(sparse, block, start)?;
        *next = data + sparse.block_size;
        Ok(())
    }
}
