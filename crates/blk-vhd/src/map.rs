//! [`DiskFile::map`](blk_core::DiskFile::map) for VHDs, with the runs `qemu-img map -f vpc` shows.
//!
//! - fixed disks: the host file's data and holes (`SEEK_DATA`/`SEEK_HOLE`), guest offset = host offset, as
//!   QEMU passes fixed VHDs through to the file (holes are allocated zeros: qemu prints them as
//!   `zero: true, data: true`);
//! - sparse disks: unallocated blocks are zero runs without host offset (consecutive ones merged); an allocated
//!   block is a data run at its host offset, split where its sector bitmap changes (QEMU-made blocks have every
//!   bit set, so this is QEMU's one run per block); sectors not present read from below: zeros for dynamic
//!   disks, the parent's map one level down for differencing ones.

use blk_core::{Extent, HostFile, Result};

use crate::bat::{SparseLayout, UNALLOCATED};
use crate::vhd::Vhd;

/// The first run of equal allocation status of `file` among `len` bytes at `offset` (raw-file semantics).
fn host_extent(file: &HostFile, offset: u64, len: u64) -> Result<Extent> {
    let end = offset + len;
    let all_data = Extent::data(offset, len, Some(offset));
    let Ok(data) = file.next_data(offset) else {
        return Ok(all_data);
    };
    match data {
        None => Ok(Extent::allocated_zero(offset, len, Some(offset))),
        Some(d) if d > offset => Ok(Extent::allocated_zero(
            offset,
            d.min(end) - offset,
            Some(offset),
        )),
        Some(d) if d < offset => Ok(all_data),
        Some(_) => {
            let run_end = match file.next_hole(offset) {
                Ok(Some(h)) if h > offset => h.min(end),
                _ => end,
            };
            Ok(Extent::data(offset, run_end - offset, Some(offset)))
        }
    }
}

fn bit(bitmap: &[u8], index: u64) -> bool {
    usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|byte| byte & (0x80 >> (index % 8)) != 0)
}

impl Vhd {
    /// The first run of `len` guest bytes at `offset` (range checked by the caller, `len > 0`).
    pub(crate) fn map_guest(&self, offset: u64, len: u64) -> Result<Extent> {
        let Some(sparse) = &self.shared.sparse else {
            return host_extent(&self.file, offset, len);
        };
        let end = offset + len;
        let block = offset / sparse.block_size;
        let entry = sparse.entry(block);
        if entry == UNALLOCATED {
            let mut run_end = (block + 1) * sparse.block_size;
            while run_end < end && sparse.entry(run_end / sparse.block_size) == UNALLOCATED {
                run_end += sparse.block_size;
            }
            return self.map_below(offset, run_end.min(end) - offset);
        }
        self.map_allocated(sparse, entry, offset, end)
    }

    fn map_allocated(
        &self,
        sparse: &SparseLayout,
        entry: u32,
        offset: u64,
        end: u64,
    ) -> Result<Extent> {
        let in_block = offset % sparse.block_size;
        let block_end = offset - in_block + sparse.block_size;
        let stop = end.min(block_end);
        if self.block_fully_present(sparse, offset / sparse.block_size, entry)? {
            let host = u64::from(entry) * 512 + sparse.bitmap_size + in_block;
            return Ok(Extent::data(offset, stop - offset, Some(host)));
        }
        let first = in_block / 512;
        let last = (stop - (offset - in_block) - 1) / 512;
        let (bitmap, base) = self.read_bitmap(entry, first, last)?;
        let present = bit(&bitmap, first - base);
        let mut s = first + 1;
        while s <= last && bit(&bitmap, s - base) == present {
            s += 1;
        }
        let run_end = (offset - in_block + s * 512).min(stop);
        if present {
            let host = u64::from(entry) * 512 + sparse.bitmap_size + in_block;
            Ok(Extent::data(offset, run_end - offset, Some(host)))
        } else {
            self.map_below(offset, run_end - offset)
        }
    }

    /// What lies below this image for `len` bytes at `offset`: zeros, or the parent's map one level down.
    fn map_below(&self, offset: u64, len: u64) -> Result<Extent> {
        let Some(parent) = &self.parent else {
            return Ok(Extent::zero(offset, len, None));
        };
        let parent_size = parent.logical_size();
        if offset >= parent_size {
            return Ok(Extent::zero(offset, len, None));
        }
        let mut extent = parent.map(offset, len.min(parent_size - offset))?;
        extent.depth += 1;
        Ok(extent)
    }
}
