//! Guest I/O: reads honouring the sector bitmaps, writes allocating blocks in crash-safe order, write-zeroes.
//!
//! Block allocation (VHD spec, "Block Allocation Table and Data Blocks"; QEMU's `alloc_block`): under the
//! allocation lock, the new block's sector bitmap and the first write's data go where the end footer was, the
//! footer is rewritten after the block, the file is synced, and only then is the BAT entry written (and
//! published in memory). A crash leaves either the old image (the footer copy at 0 still describes it) or the
//! new block fully in place.

use blk_core::buffer::{range, range_mut, total_len, total_len_mut, zero_fill};
use blk_core::{Error, ErrorKind, IoBuf, IoBufMut, Result};
use zerocopy::IntoBytes;

use crate::bat::{SparseLayout, BITMAP_FULL, BITMAP_PARTIAL, BITMAP_UNKNOWN, UNALLOCATED};
use crate::footer::DiskType;
use crate::vhd::Vhd;

fn bit(bitmap: &[u8], index: u64) -> bool {
    // Bit order: the most significant bit of byte 0 is sector 0 (as Microsoft's and Xen's tools write it).
    usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|byte| byte & (0x80 >> (index % 8)) != 0)
}

fn set_bit(bitmap: &mut [u8], index: u64) {
    if let Some(byte) = usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get_mut(i))
    {
        *byte |= 0x80 >> (index % 8);
    }
}

impl Vhd {
    /// Reads the bitmap bytes covering sectors `first..=last` of the block at `entry`; returns them and the
    /// sector number of their first bit.
    pub(crate) fn read_bitmap(&self, entry: u32, first: u64, last: u64) -> Result<(Vec<u8>, u64)> {
        let b0 = first / 8;
        let b1 = last / 8;
        // At most bitmap_size bytes (512 KiB for the largest blocks).
        let mut bytes = vec![0u8; (b1 - b0 + 1) as usize];
        self.file
            .read_exact_at(u64::from(entry) * 512 + b0, &mut bytes)?;
        Ok((bytes, b0 * 8))
    }

    /// Whether every sector of `block` (allocated at `entry`) is present, from the cache or by reading its whole
    /// bitmap once.
    pub(crate) fn block_fully_present(
        &self,
        sparse: &SparseLayout,
        block: u64,
        entry: u32,
    ) -> Result<bool> {
        match sparse.bitmap_state(block) {
            BITMAP_FULL => return Ok(true),
            BITMAP_PARTIAL => return Ok(false),
            _ => {}
        }
        let sectors = sparse.block_size / 512;
        let (bitmap, _) = self.read_bitmap(entry, 0, sectors - 1)?;
        let full = (0..sectors).all(|s| bit(&bitmap, s));
        // A concurrent bitmap update resets the state to unknown after it; a stale PARTIAL only costs speed.
        if sparse.bitmap_state(block) == BITMAP_UNKNOWN {
            sparse.set_bitmap_state(block, if full { BITMAP_FULL } else { BITMAP_PARTIAL });
        }
        Ok(full)
    }

    /// Reads guest bytes the image does not hold itself: zeros for dynamic disks, the parent's data (zeros past
    /// its end) for differencing ones.
    fn read_below(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        match &self.parent {
            Some(parent) => {
                let parent_size = parent.logical_size();
                let from_parent = parent_size.saturating_sub(offset).min(len);
                if from_parent > 0 {
                    parent.read_at(offset, &range_mut(bufs, 0, from_parent))?;
                }
                if from_parent < len {
                    zero_fill(&range_mut(bufs, from_parent, len - from_parent));
                }
                Ok(())
            }
            None => {
                zero_fill(bufs);
                Ok(())
            }
        }
    }

    /// Reads `bufs` at guest `offset` (the caller checked the range).
    pub(crate) fn read_guest(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let Some(sparse) = &self.shared.sparse else {
            return self.file.read_exact_vectored_at(offset, bufs);
        };
        let len = total_len_mut(bufs);
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let in_block = pos % sparse.block_size;
            let n = (sparse.block_size - in_block).min(len - done);
            let chunk = range_mut(bufs, done, n);
            let entry = sparse.entry(pos / sparse.block_size);
            if entry == UNALLOCATED {
                self.read_below(pos, &chunk)?;
            } else if self.block_fully_present(sparse, pos / sparse.block_size, entry)? {
                let data = u64::from(entry) * 512 + sparse.bitmap_size;
                self.file.read_exact_vectored_at(data + in_block, &chunk)?;
            } else {
                self.read_allocated(sparse, entry, pos - in_block, in_block, &chunk)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Reads from an allocated block: sectors whose bitmap bit is set from the block, the others from below.
    fn read_allocated(
        &self,
        sparse: &SparseLayout,
        entry: u32,
        block_guest: u64,
        in_block: u64,
        bufs: &[IoBufMut<'_>],
    ) -> Result<()> {
        let len = total_len_mut(bufs);
        let data = u64::from(entry) * 512 + sparse.bitmap_size;
        let first = in_block / 512;
        let last = (in_block + len - 1) / 512;
        let (bitmap, base) = self.read_bitmap(entry, first, last)?;
        let mut done = 0;
        while done < len {
            let pos = in_block + done;
            let sector = pos / 512;
            let present = bit(&bitmap, sector - base);
            let mut end_sector = sector + 1;
            while end_sector <= last && bit(&bitmap, end_sector - base) == present {
                end_sector += 1;
            }
            let n = (end_sector * 512).min(in_block + len) - pos;
            let chunk = range_mut(bufs, done, n);
            if present {
                self.file.read_exact_vectored_at(data + pos, &chunk)?;
            } else {
                self.read_below(block_guest + pos, &chunk)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `bufs` at guest `offset` (the caller checked the range and write access).
    pub(crate) fn write_guest(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let Some(sparse) = &self.shared.sparse else {
            return self.file.write_vectored_at(offset, bufs);
        };
        let len = total_len(bufs);
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let n = (sparse.block_size - pos % sparse.block_size).min(len - done);
            self.write_chunk(sparse, pos, &range(bufs, done, n))?;
            done += n;
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
        self.read_guest(start, &[IoBufMut::from(&mut merged[..])])?;
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
        let block = pos / sparse.block_size;
        let entry = sparse.entry(block);
        if entry == UNALLOCATED || self.block_fully_present(sparse, block, entry)? {
            return Ok(false);
        }
        let in_block = pos % sparse.block_size;
        let first = in_block / 512;
        let last = (in_block + len - 1) / 512;
        let (bitmap, base) = self.read_bitmap(entry, first, last)?;
        Ok(!(bit(&bitmap, first - base) && bit(&bitmap, last - base)))
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
            let entry = sparse.entry(block);
            if entry != UNALLOCATED {
                let data = u64::from(entry) * 512 + sparse.bitmap_size;
                self.file.write_vectored_at(data + in_block, bufs)?;
                if self.block_fully_present(sparse, block, entry)? {
                    return Ok(());
                }
                return self.set_bits(sparse, block, entry, first, last);
            }
            let mut next = sparse.next_block.lock().unwrap_or_else(|e| e.into_inner());
            if sparse.entry(block) != UNALLOCATED {
                continue;
            }
            return self.allocate(sparse, &mut next, block, in_block, first, last, bufs);
        }
    }

    /// Sets the bitmap bits of sectors `first..=last` of the block at `entry` (after their data was written).
    fn set_bits(
        &self,
        sparse: &SparseLayout,
        block: u64,
        entry: u32,
        first: u64,
        last: u64,
    ) -> Result<()> {
        let (bitmap, base) = self.read_bitmap(entry, first, last)?;
        if (first..=last).all(|s| bit(&bitmap, s - base)) {
            return Ok(());
        }
        let _lock = sparse.bitmap_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut bitmap, base) = self.read_bitmap(entry, first, last)?;
        for s in first..=last {
            set_bit(&mut bitmap, s - base);
        }
        self.file
            .write_all_at(u64::from(entry) * 512 + base / 8, &bitmap)?;
        sparse.set_bitmap_state(block, BITMAP_UNKNOWN);
        Ok(())
    }

    /// Allocates `block` at `*next` and writes the first data into it (see the module docs for the order).
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &self,
        sparse: &SparseLayout,
        next: &mut u64,
        block: u64,
        in_block: u64,
        first: u64,
        last: u64,
        bufs: &[IoBuf<'_>],
    ) -> Result<()> {
        let start = *next;
        let sector = u32::try_from(start / 512)
            .ok()
            .filter(|&s| s != UNALLOCATED)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NoSpace,
                    "the image file outgrew the BAT's 32-bit sector numbers",
                )
            })?;
        let data = start + sparse.bitmap_size;
        let end = data + sparse.block_size;
        // Bounded by the bitmap size (512 KiB at most).
        let mut bitmap = vec![0u8; sparse.bitmap_size as usize];
        if self.shared.disk_type == DiskType::Dynamic {
            // As QEMU: every sector present; the rest of the block is zeros.
            bitmap.fill(0xff);
            let old_len = self.file.len()?;
            if old_len > data {
                self.file
                    .zero_range(data, old_len.min(end) - data, true, false)?;
            }
        } else {
            for s in first..=last {
                set_bit(&mut bitmap, s);
            }
        }
        self.file.write_all_at(start, &bitmap)?;
        self.file.write_vectored_at(data + in_block, bufs)?;
        self.file.write_all_at(end, self.shared.footer.as_bytes())?;
        self.file.sync_data()?;
        let bat_at = sparse.bat_offset + 4 * block;
        self.file.write_all_at(bat_at, &sector.to_be_bytes())?;
        if self.shared.disk_type == DiskType::Dynamic {
            sparse.set_bitmap_state(block, BITMAP_FULL);
        }
        {
            let mut bat = sparse.bat.write().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = usize::try_from(block).ok().and_then(|i| bat.get_mut(i)) {
                *slot = sector;
            }
        }
        *next = end;
        Ok(())
    }

    /// Makes `len` guest bytes at `offset` read as zeros (the caller checked range and write access).
    ///
    /// Fixed disks zero the host range; dynamic disks zero the allocated blocks' data in place and leave
    /// unallocated blocks alone (they read as zeros); differencing disks write zeros (allocating), which hides
    /// the parent's data.
    pub(crate) fn write_zeroes_guest(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let Some(sparse) = &self.shared.sparse else {
            return self.file.zero_range(offset, len, !may_unmap, false);
        };
        if self.shared.disk_type == DiskType::Differencing {
            let chunk = len.min(1 << 20);
            // At most 1 MiB.
            let zeros = vec![0u8; chunk as usize];
            let mut done = 0;
            while done < len {
                let n = chunk.min(len - done);
                let buf = zeros.get(..n as usize).unwrap_or(&zeros[..]);
                self.write_guest(offset + done, &[IoBuf::from(buf)])?;
                done += n;
            }
            return Ok(());
        }
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let in_block = pos % sparse.block_size;
            let n = (sparse.block_size - in_block).min(len - done);
            let entry = sparse.entry(pos / sparse.block_size);
            if entry != UNALLOCATED {
                let data = u64::from(entry) * 512 + sparse.bitmap_size;
                self.file.zero_range(data + in_block, n, true, false)?;
            }
            done += n;
        }
        Ok(())
    }
}
