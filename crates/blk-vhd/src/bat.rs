//! The block allocation table and the file layout of sparse (dynamic and differencing) disks: where the
//! metadata lives, which blocks are allocated where, and where the next block goes.
//!
//! VHD spec, "Block Allocation Table and Data Blocks": the BAT holds one big-endian u32 per block, the block's
//! first sector in the file (0xFFFFFFFF: not allocated). A block is its sector bitmap (one bit per sector,
//! padded to a 512-byte boundary) followed by the block's data.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;

use blk_core::{Error, ErrorKind, HostFile, Result};

use crate::allocation::Allocator;
use crate::dynamic_header::{DynamicHeader, HEADER_SIZE};
use crate::footer::FOOTER_SIZE;
use crate::geometry::MAX_SIZE;

/// A BAT entry for a block that is not allocated.
pub const UNALLOCATED: u32 = 0xffff_ffff;

/// blk's cap on the BAT it reads into memory (QEMU's is 2 GiB): 256 MiB, 64 Mi entries, which covers 2040 GiB
/// with blocks of 32 KiB or more (QEMU makes 2 MiB blocks: a 4 MiB BAT for 2040 GiB).
pub const MAX_BAT_BYTES: u64 = 256 << 20;

/// A byte range of the image file holding metadata, which no data block may overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What is stored there, for messages.
    pub what: &'static str,
}

impl Region {
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// The sector bitmap's size for `block_size`: one bit per sector, padded to 512 bytes (spec, "Block Allocation
/// Table and Data Blocks"). QEMU's formula gives the same for blocks of 4 KiB and more.
pub fn bitmap_size(block_size: u64) -> u64 {
    (block_size / 512).div_ceil(8).div_ceil(512) * 512
}

/// The layout of a sparse disk and its mutable allocation state, shared by all handles.
#[derive(Debug)]
pub struct SparseLayout {
    /// The dynamic header as read.
    pub header: DynamicHeader,
    /// Where the dynamic header is.
    pub header_offset: u64,
    /// Where the BAT is.
    pub bat_offset: u64,
    /// Bytes of data per block.
    pub block_size: u64,
    /// Bytes of sector bitmap before each block's data.
    pub bitmap_size: u64,
    /// The metadata regions (footer copy, header, BAT, parent locators).
    pub metadata: Vec<Region>,
    /// The BAT, in host byte order: a lookup is one atomic load (no lock, no shared write); an entry is only
    /// stored under the `allocator` lock, after the block's bitmap state, when its block is linked.
    bat: Vec<AtomicU32>,
    /// Where the next block goes (QEMU's `free_data_block_offset`) and the blocks reserved by writes in
    /// flight (see the `allocation` module).
    pub(crate) allocator: Mutex<Allocator>,
    /// Serializes sector-bitmap read-modify-writes.
    pub bitmap_lock: Mutex<()>,
    /// Per block, what its sector bitmap is known to say: [`BITMAP_UNKNOWN`], [`BITMAP_FULL`] (every sector
    /// present: reads and writes skip the bitmap) or [`BITMAP_PARTIAL`].
    pub bitmap_state: Vec<AtomicU8>,
}

/// The block's bitmap has not been read (or has changed since).
pub const BITMAP_UNKNOWN: u8 = 0;
/// Every sector of the block is present.
pub const BITMAP_FULL: u8 = 1;
/// Some sector of the block is not present.
pub const BITMAP_PARTIAL: u8 = 2;

fn corrupt(message: String, offset: u64) -> Error {
    Error::new(ErrorKind::CorruptImage, message).with_offset(offset)
}

impl SparseLayout {
    /// Validates the header's geometry against the virtual size and the file, reads the BAT and checks every
    /// entry. `locators` are the parent locator data regions already validated; the footer copy's place (the first
    /// 512 bytes) is metadata even when the copy is damaged, so a repair can rewrite it; `end_footer` whether a footer sits in the file's last 512 bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        file: &HostFile,
        header: DynamicHeader,
        header_offset: u64,
        size: u64,
        file_len: u64,
        end_footer: bool,
        locators: &[Region],
    ) -> Result<SparseLayout> {
        let block_size = u64::from(header.block_size.get());
        let entries = u64::from(header.max_table_entries.get());
        let entries_at = header_offset + 28;
        let needed = size.div_ceil(block_size);
        if entries < needed {
            return Err(corrupt(
                format!("max table entries {entries} too small for the disk size ({needed} blocks needed)"),
                entries_at,
            ));
        }
        let cap = MAX_SIZE.div_ceil(block_size);
        if entries > cap {
            return Err(corrupt(
                format!("max table entries {entries} larger than a 2040 GiB disk needs ({cap})"),
                entries_at,
            ));
        }
        let bat_bytes = entries * 4;
        if bat_bytes > MAX_BAT_BYTES {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!("block allocation table of {bat_bytes} bytes exceeds blk's cap of {MAX_BAT_BYTES}"),
            )
            .with_offset(entries_at));
        }
        let bat_offset = header.table_offset.get();
        let bat_end = bat_offset.checked_add(bat_bytes).filter(|&e| e <= file_len);
        let Some(bat_end) = bat_end else {
            return Err(corrupt(
                format!(
                    "block allocation table ({entries} entries at {bat_offset:#x}) extends past the end of the file ({file_len} bytes)"
                ),
                header_offset + 16,
            ));
        };
        let mut metadata = Vec::new();
        metadata.push(Region {
            start: 0,
            end: FOOTER_SIZE,
            what: "footer copy",
        });
        metadata.push(Region {
            start: header_offset,
            end: header_offset + HEADER_SIZE,
            what: "dynamic header",
        });
        metadata.push(Region {
            start: bat_offset,
            end: bat_end,
            what: "block allocation table",
        });
        metadata.extend_from_slice(locators);
        for (i, a) in metadata.iter().enumerate() {
            if let Some(b) = metadata
                .iter()
                .skip(i + 1)
                .find(|b| b.overlaps(a.start, a.end))
            {
                return Err(corrupt(
                    format!(
                        "the {} ({:#x}..{:#x}) overlaps the {} ({:#x}..{:#x})",
                        a.what, a.start, a.end, b.what, b.start, b.end
                    ),
                    a.start,
                ));
            }
        }

        let mut raw = vec![0u8; bat_bytes as usize];
        file.read_exact_at(bat_offset, &mut raw)?;
        let bat: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();

        let bitmap_size = bitmap_size(block_size);
        let limit = if end_footer {
            file_len - FOOTER_SIZE
        } else {
            file_len
        };
        let mut next_block = metadata
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
            .div_ceil(512)
            * 512;
        for (index, &entry) in bat.iter().enumerate() {
            if entry == UNALLOCATED {
                continue;
            }
            let at = bat_offset + 4 * index as u64;
            let start = u64::from(entry) * 512;
            let end = start + bitmap_size + block_size;
            if end > limit {
                let place = if end > file_len {
                    "past the end of the file"
                } else {
                    "into the footer"
                };
                return Err(corrupt(
                    format!("BAT entry {index} (sector {entry}) points {place}: block {start:#x}..{end:#x}, file {file_len} bytes"),
                    at,
                ));
            }
            if let Some(region) = metadata.iter().find(|r| r.overlaps(start, end)) {
                return Err(corrupt(
                    format!(
                        "BAT entry {index} (sector {entry}) overlaps the {} at {:#x}",
                        region.what, region.start
                    ),
                    at,
                ));
            }
            next_block = next_block.max(end);
        }
        // Blocks sharing bytes would let guest data of one overwrite the other's data or sector bitmap.
        let span = bitmap_size + block_size;
        let mut starts: Vec<(u64, usize)> = bat
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != UNALLOCATED)
            .map(|(i, &e)| (u64::from(e) * 512, i))
            .collect();
        starts.sort_unstable();
        for pair in starts.windows(2) {
            if let [(a_start, a), (b_start, b)] = pair {
                if a_start + span > *b_start {
                    return Err(corrupt(
                        format!("BAT entries {a} and {b} overlap (blocks at {a_start:#x} and {b_start:#x})"),
                        bat_offset + 4 * *b as u64,
                    ));
                }
            }
        }
        let bitmap_state = (0..bat.len())
            .map(|_| AtomicU8::new(BITMAP_UNKNOWN))
            .collect();
        Ok(SparseLayout {
            bitmap_state,
            header,
            header_offset,
            bat_offset,
            block_size,
            bitmap_size,
            metadata,
            bat: bat.into_iter().map(AtomicU32::new).collect(),
            allocator: Mutex::new(Allocator::new(next_block)),
            bitmap_lock: Mutex::new(()),
        })
    }

    /// What block `block`'s bitmap is known to say.
    pub fn bitmap_state(&self, block: u64) -> u8 {
        usize::try_from(block)
            .ok()
            .and_then(|i| self.bitmap_state.get(i))
            .map_or(BITMAP_UNKNOWN, |s| s.load(Ordering::Acquire))
    }

    /// Records what block `block`'s bitmap says.
    pub fn set_bitmap_state(&self, block: u64, state: u8) {
        if let Some(s) = usize::try_from(block)
            .ok()
            .and_then(|i| self.bitmap_state.get(i))
        {
            s.store(state, Ordering::Release);
        }
    }

    /// The BAT entry of `block` (`UNALLOCATED` past the table).
    #[inline]
    pub fn entry(&self, block: u64) -> u32 {
        usize::try_from(block)
            .ok()
            .and_then(|i| self.bat.get(i))
            .map_or(UNALLOCATED, |e| e.load(Ordering::Acquire))
    }

    /// The number of BAT entries.
    pub fn entry_count(&self) -> u64 {
        self.bat.len() as u64
    }

    /// The whole BAT as it is now (host byte order).
    pub fn entries(&self) -> Vec<u32> {
        self.bat.iter().map(|e| e.load(Ordering::Acquire)).collect()
    }

    /// Makes `block` point at `sector` for every reader. Callers hold the `allocator` lock and have written
    /// the entry to the file and the block's bitmap state first.
    pub(crate) fn publish(&self, block: u64, sector: u32) {
        if let Some(e) = usize::try_from(block).ok().and_then(|i| self.bat.get(i)) {
            e.store(sector, Ordering::Release);
        }
    }

    /// Where the data of the block allocated at `entry` starts in the file (after its sector bitmap).
    pub fn data_offset(&self, entry: u32) -> u64 {
        u64::from(entry) * 512 + self.bitmap_size
    }

    /// The block-bounded pieces of `len` guest bytes at `offset`, in order.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = BlockPiece> + '_ {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let in_block = pos % self.block_size;
            let piece = BlockPiece {
                pos,
                done: pos - offset,
                block: pos / self.block_size,
                in_block,
                len: (self.block_size - in_block).min(end - pos),
            };
            pos += piece.len;
            Some(piece)
        })
    }
}

/// The part of a guest range that lies in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPiece {
    /// Guest offset of the piece.
    pub pos: u64,
    /// Bytes of the range before the piece.
    pub done: u64,
    /// The block's index.
    pub block: u64,
    /// Offset of the piece in the block.
    pub in_block: u64,
    /// Length of the piece.
    pub len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sizes() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(1 << 31), 512 << 10);
    }
}
