//! [`Mapper::block_status`](blk_core::Mapper::block_status) for VHDs (what `map` shows), with the runs
//! `qemu-img map -f vpc` shows, from the same block classification as the mapping.
//!
//! - fixed disks: the host file's data and holes (`SEEK_DATA`/`SEEK_HOLE`), guest offset = host offset, as
//!   QEMU passes fixed VHDs through to the file (holes are allocated zeros: qemu prints them as
//!   `zero: true, data: true`);
//! - sparse disks: unallocated blocks are zero runs without host offset (consecutive ones merged); an allocated
//!   block is a data run at its host offset, split where its sector bitmap changes (QEMU-made blocks have every
//!   bit set, so this is QEMU's one run per block); sectors not present read from below: zeros for dynamic
//!   disks, the parent's map one level down for differencing ones.

use blk_core::{Extent, HostFile, Result};

use crate::bat::UNALLOCATED;
use crate::sector_bitmap::Block;
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

impl Vhd {
    /// The first run of `len` guest bytes at `offset` (range checked by the caller, `len > 0`).
    pub(crate) fn map_guest(&self, offset: u64, len: u64) -> Result<Extent> {
        let Some(sparse) = &self.shared.sparse else {
            return host_extent(&self.file, offset, len);
        };
        let end = offset + len;
        let block = offset / sparse.block_size;
        let in_block = offset % sparse.block_size;
        let block_start = offset - in_block;
        let stop = end.min(block_start + sparse.block_size);
        let (bitmap, data) = match self.classify(sparse, block)? {
            Block::Unallocated => {
                let mut run_end = (block + 1) * sparse.block_size;
                while run_end < end && sparse.entry(run_end / sparse.block_size) == UNALLOCATED {
                    run_end += sparse.block_size;
                }
                return self.map_below(offset, run_end.min(end) - offset);
            }
            Block::Full { data } => {
                return Ok(Extent::data(offset, stop - offset, Some(data + in_block)))
            }
            Block::Partial { bitmap, data } => (bitmap, data),
        };
        let first = in_block / 512;
        let last = (stop - block_start - 1) / 512;
        let (present, run_end) = self.read_bitmap(bitmap, first, last)?.run(first);
        let run_end = (block_start + run_end * 512).min(stop);
        if present {
            Ok(Extent::data(
                offset,
                run_end - offset,
                Some(data + in_block),
            ))
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
