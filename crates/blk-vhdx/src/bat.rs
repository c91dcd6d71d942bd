//! The block allocation table (MS-VHDX 2.5): 64-bit entries, a state in bits 0-2 and the file offset in MiB in
//! bits 20-63, payload entries interleaved with one sector-bitmap entry per chunk (2.4).

use blk_core::{HostFile, Result};

use crate::error::{corrupt, unsupported};
use crate::header::MIB;
use crate::metadata::DiskParameters;
use crate::region::Region;

/// Payload block state: not present (the parent's data in a differencing image, else zeros).
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Payload block state: undefined (read as zeros here).
pub const PAYLOAD_UNDEFINED: u64 = 1;
/// Payload block state: zero.
pub const PAYLOAD_ZERO: u64 = 2;
/// Payload block state: unmapped (read as zeros here).
pub const PAYLOAD_UNMAPPED: u64 = 3;
/// Payload block state: unmapped, as the v0.95 draft numbered it (QEMU reads it too).
pub const PAYLOAD_UNMAPPED_V095: u64 = 5;
/// Payload block state: fully present in this file.
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Payload block state: partially present (differencing images; the sector bitmap decides).
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block state: present.
pub const SB_PRESENT: u64 = 6;
/// The largest BAT read into memory (a cap of this crate: 32 TiB of 1 MiB blocks, 64 TiB of larger ones).
pub const MAX_BAT_BYTES: u64 = 256 << 20;
/// Sectors one sector bitmap block describes (2.4).
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;

/// The state bits of an entry.
pub fn state(entry: u64) -> u64 {
    entry & 7
}

/// The file offset of an entry in bytes.
pub fn file_offset(entry: u64) -> u64 {
    entry & !(MIB - 1)
}

/// An entry with `state` at `offset` (a multiple of 1 MiB).
pub fn entry(state: u64, offset: u64) -> u64 {
    (offset & !(MIB - 1)) | (state & 7)
}

/// What a payload block's BAT entry says its guest bytes are in this layer: the one classification of block
/// states that the mapping, the slow writes, write-zeroes and the allocation status share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBlock {
    /// FULLY_PRESENT: the whole block at `host` in this file.
    Present {
        /// The block's file offset.
        host: u64,
    },
    /// PARTIALLY_PRESENT: the block at `host`; its sector bitmap says which sectors are this file's (the
    /// others are the parent's).
    Partial {
        /// The block's file offset.
        host: u64,
    },
    /// NOT_PRESENT in a differencing image: the parent's data.
    Parent,
    /// NOT_PRESENT without a parent: zeros, never allocated.
    Unallocated,
    /// ZERO, UNDEFINED, UNMAPPED (both codes): zeros.
    Zero,
    /// A state no reader knows.
    Invalid(u64),
}

impl PayloadBlock {
    /// The classification of payload entry `entry` in an image with or without a parent.
    pub fn of(entry: u64, has_parent: bool) -> PayloadBlock {
        match state(entry) {
            PAYLOAD_FULLY_PRESENT => PayloadBlock::Present {
                host: file_offset(entry),
            },
            PAYLOAD_PARTIALLY_PRESENT => PayloadBlock::Partial {
                host: file_offset(entry),
            },
            PAYLOAD_NOT_PRESENT if has_parent => PayloadBlock::Parent,
            PAYLOAD_NOT_PRESENT => PayloadBlock::Unallocated,
            PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_V095 => {
                PayloadBlock::Zero
            }
            st => PayloadBlock::Invalid(st),
        }
    }

    /// Whether the block reads as zeros from this layer alone.
    pub fn reads_zero(self) -> bool {
        matches!(self, PayloadBlock::Unallocated | PayloadBlock::Zero)
    }

    /// The host range the block holds in this file, if any.
    pub fn host(self) -> Option<u64> {
        match self {
            PayloadBlock::Present { host } | PayloadBlock::Partial { host } => Some(host),
            _ => None,
        }
    }
}

/// The part of a guest range that lies in one payload block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPart {
    /// The guest offset of the part.
    pub guest: u64,
    /// The payload block.
    pub block: u64,
    /// The block's BAT index.
    pub index: usize,
    /// The part's offset in the block.
    pub in_block: u64,
    /// The part's length.
    pub len: u64,
}

/// The disk's shape: block size, chunk ratio, BAT size.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks covering the disk.
    pub data_blocks: u64,
    /// BAT entries the disk needs (2.5).
    pub bat_entries: u64,
    /// Whether the image is a differencing image.
    pub has_parent: bool,
}

impl Geometry {
    /// The geometry the metadata describes (validated: block sizes are powers of two 1..256 MiB, sectors 512
    /// or 4096, sizes at most 64 TiB).
    pub fn new(params: &DiskParameters) -> Geometry {
        Geometry::from_sizes(
            params.virtual_size,
            u64::from(params.block_size),
            u64::from(params.logical_sector_size),
            params.has_parent(),
        )
    }

    /// The geometry of a disk of these sizes.
    pub fn from_sizes(
        virtual_size: u64,
        block_size: u64,
        sector_size: u64,
        has_parent: bool,
    ) -> Geometry {
        let chunk_ratio = (SECTORS_PER_BITMAP * sector_size / block_size).max(1);
        let data_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let bat_entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Geometry {
            block_size,
            sector_size,
            virtual_size,
            chunk_ratio,
            data_blocks,
            bat_entries,
            has_parent,
        }
    }

    /// The BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// The BAT index of the sector bitmap block of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// Whether BAT index `index` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, index: u64) -> bool {
        (index + 1) % (self.chunk_ratio + 1) == 0
    }

    /// The parts of the guest range `offset..offset + len` in each payload block, in order.
    pub fn parts(&self, offset: u64, len: u64) -> impl Iterator<Item = BlockPart> {
        let geometry = *self;
        let end = offset.saturating_add(len);
        let mut guest = offset;
        std::iter::from_fn(move || {
            if guest >= end {
                return None;
            }
            let block = guest / geometry.block_size;
            let in_block = guest % geometry.block_size;
            let len = (geometry.block_size - in_block).min(end - guest);
            let part = BlockPart {
                guest,
                block,
                index: geometry.payload_index(block),
                in_block,
                len,
            };
            guest += len;
            Some(part)
        })
    }

    /// The bytes of BAT the disk needs.
    pub fn bat_bytes(&self) -> u64 {
        self.bat_entries * 8
    }
}

/// Reads the BAT's entries from its region, refusing a region too small for the disk or a BAT above the cap.
pub fn read_bat(file: &HostFile, region: Region, geometry: &Geometry) -> Result<Vec<u64>> {
    let bytes = geometry.bat_bytes();
    if bytes > region.length {
        return Err(corrupt(
            region.offset,
            format!(
                "the BAT region ({} bytes) is too small for {} entries",
                region.length, geometry.bat_entries
            ),
        ));
    }
    if bytes > MAX_BAT_BYTES {
        return Err(unsupported(
            region.offset,
            format!(
                "the BAT has {bytes} bytes, more than this implementation's cap of {MAX_BAT_BYTES}"
            ),
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    file.read_exact_at(region.offset, &mut raw)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// One inconsistency of the BAT: the entry's index and what is wrong.
#[derive(Debug, Clone)]
pub struct BatProblem {
    /// The entry's index.
    pub index: usize,
    /// What is wrong, in the image's terms.
    pub message: String,
}

/// Checks every entry: known states for its kind, partially present blocks only in differencing images and
/// with their sector bitmap present, and present blocks inside the file, past the header section, clear of
/// the log, BAT and metadata regions and of each other (QEMU's `vhdx_check_bat_entries`, plus the overlap
/// between blocks the spec forbids).
pub fn check_entries(
    bat: &[u64],
    geometry: &Geometry,
    file_len: u64,
    fixed: &[Region],
) -> Vec<BatProblem> {
    let mut problems = Vec::new();
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    for (index, &e) in bat.iter().enumerate() {
        let is_bitmap = geometry.is_bitmap_index(index as u64);
        let st = state(e);
        let (present, length) = if is_bitmap {
            if st != 0 && st != SB_PRESENT {
                problems.push(BatProblem {
                    index,
                    message: format!("sector bitmap entry {index} has the reserved state {st}"),
                });
                continue;
            }
            (st == SB_PRESENT && geometry.has_parent, MIB)
        } else {
            match PayloadBlock::of(e, geometry.has_parent) {
                PayloadBlock::Parent | PayloadBlock::Unallocated | PayloadBlock::Zero => (false, 0),
                PayloadBlock::Present { .. } => (true, geometry.block_size),
                PayloadBlock::Partial { .. } if geometry.has_parent => {
                    let chunk = (index as u64) / (geometry.chunk_ratio + 1);
                    let sb = bat.get(geometry.bitmap_index(chunk)).copied().unwrap_or(0);
                    if state(sb) != SB_PRESENT {
                        problems.push(BatProblem { index, message: format!("BAT entry {index} is partially present but its sector bitmap block is not") });
                    }
                    (true, geometry.block_size)
                }
                PayloadBlock::Partial { .. } | PayloadBlock::Invalid(_) => {
                    problems.push(BatProblem {
                        index,
                        message: format!("BAT entry {index} has the invalid state {st}"),
                    });
                    continue;
                }
            }
        };
        if !present {
            continue;
        }
        let offset = file_offset(e);
        let block = Region { offset, length };
        if offset == 0 || offset.checked_add(length).is_none_or(|end| end > file_len) {
            problems.push(BatProblem { index, message: format!("BAT entry {index} offset {offset:#x} points after the end of the file ({file_len} bytes); the image has probably been truncated") });
            continue;
        }
        if let Some(region) = fixed.iter().find(|r| r.overlaps(&block)) {
            problems.push(BatProblem {
                index,
                message: format!(
                    "BAT entry {index} ({offset:#x}..{:#x}) overlaps the metadata at {:#x}..{:#x}",
                    block.end(),
                    region.offset,
                    region.end()
                ),
            });
            continue;
        }
        used.push((offset, length, index));
    }
    used.sort_unstable();
    for pair in used.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.0 + a.1 > b.0 {
            problems.push(BatProblem {
                index: b.2,
                message: format!("BAT entry {} overlaps BAT entry {} at {:#x}", b.2, a.2, b.0),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_spec_formulas() {
        // 2.4/2.5: chunk ratio = 2^23 * sector / block; dynamic BAT = blocks + (blocks - 1) / ratio.
        let g = Geometry::from_sizes(64 << 20, 8 << 20, 512, false);
        assert_eq!(g.chunk_ratio, 512);
        assert_eq!(g.data_blocks, 8);
        assert_eq!(g.bat_entries, 8);
        let g = Geometry::from_sizes(200 << 30, 32 << 20, 512, false);
        assert_eq!(g.chunk_ratio, 128);
        assert_eq!(g.data_blocks, 6400);
        assert_eq!(g.bat_entries, 6400 + 6399 / 128);
        assert_eq!(g.payload_index(128), 129);
        assert_eq!(g.bitmap_index(0), 128);
        assert!(g.is_bitmap_index(128));
        assert!(!g.is_bitmap_index(129));
        // Differencing: whole chunks.
        let g = Geometry::from_sizes(64 << 20, 1 << 20, 4096, true);
        assert_eq!(g.chunk_ratio, 32768);
        assert_eq!(g.bat_entries, 32769);
        assert_eq!(entry(PAYLOAD_FULLY_PRESENT, 9 << 20), 0x900006);
        assert_eq!(file_offset(0x900006), 9 << 20);
        assert_eq!(state(0x900006), 6);
    }

    #[test]
    fn problems_are_found() {
        let g = Geometry::from_sizes(4 << 20, 1 << 20, 512, false);
        let fixed = [Region {
            offset: 0,
            length: 4 << 20,
        }];
        let bat = vec![
            entry(6, 4 << 20),
            entry(6, 4 << 20),
            entry(6, 100 << 20),
            entry(4, 0),
            entry(6, 2 << 20),
        ];
        let problems = check_entries(&bat, &g, 8 << 20, &fixed);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
