//! Which sectors of an allocated block are present (VHD spec, "Block Allocation Table and Data Blocks": one bit
//! per sector in the bitmap before the block's data, the most significant bit of byte 0 for sector 0), and the
//! one classification of a block every path uses: [`Block`], with the per-block full/partial state cached in
//! [`SparseLayout::bitmap_state`].

use blk_core::Result;

use crate::bat::{SparseLayout, BITMAP_FULL, BITMAP_PARTIAL, BITMAP_UNKNOWN, UNALLOCATED};
use crate::vhd::Vhd;

/// What a block of a sparse disk is, for reads, writes and `map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// Not allocated: every sector reads from below (zeros, or the parent).
    Unallocated,
    /// Allocated with every sector present: its data starts at `data` in the file.
    Full {
        /// Host offset of the block's data.
        data: u64,
    },
    /// Allocated with some sector not present: its sector bitmap at `bitmap` decides, sector by sector.
    Partial {
        /// Host offset of the block's sector bitmap.
        bitmap: u64,
        /// Host offset of the block's data.
        data: u64,
    },
}

/// Whether bit `index` of `bitmap` is set.
pub(crate) fn bit(bitmap: &[u8], index: u64) -> bool {
    usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|byte| byte & (0x80 >> (index % 8)) != 0)
}

/// Sets bit `index` of `bitmap`.
pub(crate) fn set_bit(bitmap: &mut [u8], index: u64) {
    if let Some(byte) = usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitmap.get_mut(i))
    {
        *byte |= 0x80 >> (index % 8);
    }
}

/// Part of a block's sector bitmap, read for sectors `first..=last`.
pub(crate) struct SectorBits {
    bytes: Vec<u8>,
    /// The sector of the first bit of `bytes`.
    base: u64,
    last: u64,
}

impl SectorBits {
    /// Whether `sector` is present.
    pub(crate) fn present(&self, sector: u64) -> bool {
        bit(&self.bytes, sector - self.base)
    }

    /// Whether `sector` is present, and the first sector after it (at most `last + 1`) that differs.
    pub(crate) fn run(&self, sector: u64) -> (bool, u64) {
        let present = self.present(sector);
        let mut end = sector + 1;
        while end <= self.last && self.present(end) == present {
            end += 1;
        }
        (present, end)
    }
}

impl Vhd {
    /// Reads the bitmap bytes at `bitmap` covering sectors `first..=last` of their block.
    pub(crate) fn read_bitmap(&self, bitmap: u64, first: u64, last: u64) -> Result<SectorBits> {
        let b0 = first / 8;
        let b1 = last / 8;
        // At most bitmap_size bytes (512 KiB for the largest blocks).
        let mut bytes = vec![0u8; (b1 - b0 + 1) as usize];
        self.file.read_exact_at(bitmap + b0, &mut bytes)?;
        Ok(SectorBits {
            bytes,
            base: b0 * 8,
            last,
        })
    }

    /// What `block` is: unallocated, full or partial, from the cached state or by reading its whole sector
    /// bitmap once (metadata I/O, no lock held).
    pub(crate) fn classify(&self, sparse: &SparseLayout, block: u64) -> Result<Block> {
        let entry = sparse.entry(block);
        if entry == UNALLOCATED {
            return Ok(Block::Unallocated);
        }
        let data = sparse.data_offset(entry);
        let bitmap = u64::from(entry) * 512;
        let full = match sparse.bitmap_state(block) {
            BITMAP_FULL => true,
            BITMAP_PARTIAL => false,
            _ => {
                let sectors = sparse.block_size / 512;
                let bits = self.read_bitmap(bitmap, 0, sectors - 1)?;
                let full = (0..sectors).all(|s| bits.present(s));
                // A concurrent bitmap update resets the state to unknown after it; a stale PARTIAL only costs
                // speed (bits are never cleared, so FULL is never stale).
                if sparse.bitmap_state(block) == BITMAP_UNKNOWN {
                    sparse.set_bitmap_state(block, if full { BITMAP_FULL } else { BITMAP_PARTIAL });
                }
                full
            }
        };
        Ok(if full {
            Block::Full { data }
        } else {
            Block::Partial { bitmap, data }
        })
    }

    /// Sets the bits of sectors `first..=last` in the bitmap at `bitmap` of `block` (after their data was
    /// written).
    pub(crate) fn set_bits(
        &self,
        sparse: &SparseLayout,
        block: u64,
        bitmap: u64,
        first: u64,
        last: u64,
    ) -> Result<()> {
        let bits = self.read_bitmap(bitmap, first, last)?;
        if (first..=last).all(|s| bits.present(s)) {
            return Ok(());
        }
        let _lock = sparse.bitmap_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut bits = self.read_bitmap(bitmap, first, last)?;
        for s in first..=last {
            set_bit(&mut bits.bytes, s - bits.base);
        }
        self.file
            .write_all_at(bitmap + bits.base / 8, &bits.bytes)?;
        sparse.set_bitmap_state(block, BITMAP_UNKNOWN);
        Ok(())
    }
}
