//! The refcounts as the image stores them: the refcount table and its refcount blocks, read from (and
//! repaired on) disk.

use blk_core::{HostFile, Result};

use super::layout::{decode_be64, read_padded, Layout};

/// Reads refcount entry `index` of a refcount block (`refcount_order` as in the header).
pub(super) fn get_entry(block: &[u8], order: u32, index: u64) -> u64 {
    let bits = 1u64 << order;
    let bit = index * bits;
    let byte = usize::try_from(bit / 8).unwrap_or(usize::MAX);
    if order < 3 {
        let shift = bit % 8;
        block
            .get(byte)
            .map_or(0, |&b| (u64::from(b) >> shift) & ((1 << bits) - 1))
    } else {
        let width = (bits / 8) as usize;
        block
            .get(byte..byte.saturating_add(width))
            .map_or(0, |bytes| {
                bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            })
    }
}

/// Writes refcount entry `index` of a refcount block; returns the byte range that changed.
pub(super) fn set_entry(block: &mut [u8], order: u32, index: u64, value: u64) -> (usize, usize) {
    let bits = 1u64 << order;
    let bit = index * bits;
    let byte = usize::try_from(bit / 8).unwrap_or(usize::MAX);
    if order < 3 {
        let shift = bit % 8;
        let mask = ((1u64 << bits) - 1) << shift;
        if let Some(b) = block.get_mut(byte) {
            let v = (u64::from(*b) & !mask) | ((value << shift) & mask);
            *b = v as u8;
        }
        (byte, byte + 1)
    } else {
        let width = (bits / 8) as usize;
        if let Some(bytes) = block.get_mut(byte..byte.saturating_add(width)) {
            let be = value.to_be_bytes();
            // `width` <= 8: the last `width` bytes of the big-endian value.
            if let Some(tail) = be.get(8 - width..) {
                bytes.copy_from_slice(tail);
            }
        }
        (byte, byte + width)
    }
}

/// Why a stored refcount cannot be read.
#[derive(Debug)]
pub(super) enum StoredError {
    /// The refcount table entry covering the cluster is not cluster aligned.
    UnalignedBlock,
    /// Reading the refcount block failed.
    Io(blk_core::Error),
}

impl std::fmt::Display for StoredError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredError::UnalignedBlock => f.write_str("Input/output error"),
            StoredError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The on-disk refcount structures, with the last refcount block read kept in memory.
#[derive(Debug)]
pub(super) struct StoredRefcounts {
    /// The refcount table's raw entries.
    pub table: Vec<u64>,
    block_bits: u32,
    order: u32,
    cluster_size: u64,
    cached: Option<(u64, Vec<u8>)>,
}

impl StoredRefcounts {
    /// Reads the refcount table the header names.
    pub fn read(file: &HostFile, file_len: u64, layout: &Layout) -> Result<StoredRefcounts> {
        let bytes = usize::try_from(layout.refcount_table_entries * 8).unwrap_or(0);
        let raw = read_padded(file, file_len, layout.refcount_table_offset, bytes)?;
        Ok(StoredRefcounts {
            table: decode_be64(&raw),
            block_bits: layout.refcount_block_bits(),
            order: layout.refcount_order,
            cluster_size: layout.cluster_size,
            cached: None,
        })
    }

    /// Where the refcount block covering `cluster` is (None: no block, every refcount in it is 0).
    fn block_offset(&self, cluster: u64) -> std::result::Result<Option<u64>, StoredError> {
        let index = cluster >> self.block_bits;
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.table.get(i))
            .copied()
            .unwrap_or(0);
        let offset = entry & !511;
        if offset == 0 {
            return Ok(None);
        }
        if offset & (self.cluster_size - 1) != 0 {
            return Err(StoredError::UnalignedBlock);
        }
        Ok(Some(offset))
    }

    fn load(
        &mut self,
        file: &HostFile,
        file_len: u64,
        offset: u64,
    ) -> std::result::Result<(), StoredError> {
        if self.cached.as_ref().is_some_and(|(o, _)| *o == offset) {
            return Ok(());
        }
        let len = usize::try_from(self.cluster_size).unwrap_or(0);
        let block = read_padded(file, file_len, offset, len).map_err(StoredError::Io)?;
        self.cached = Some((offset, block));
        Ok(())
    }

    /// When every stored refcount from `cluster` to the end of its refcount block is 0 (the block is absent,
    /// or present and all zeros), the first cluster after the zeros: past the following absent blocks too.
    /// None otherwise (or when the block cannot be read: the per-cluster path reports that).
    pub fn end_of_zeros(&mut self, file: &HostFile, file_len: u64, cluster: u64) -> Option<u64> {
        let index = cluster >> self.block_bits;
        let end = (index + 1) << self.block_bits;
        match self.block_offset(cluster) {
            Ok(None) => {
                // Jump over every absent block that follows.
                let start = usize::try_from(index + 1).unwrap_or(usize::MAX);
                let next = self
                    .table
                    .iter()
                    .skip(start)
                    .position(|&e| e & !511 != 0)
                    .map_or(u64::MAX, |i| (index + 1 + i as u64) << self.block_bits);
                Some(next.max(end))
            }
            Ok(Some(offset)) => {
                self.load(file, file_len, offset).ok()?;
                let zero = self
                    .cached
                    .as_ref()
                    .is_some_and(|(_, block)| block.iter().all(|&b| b == 0));
                zero.then_some(end)
            }
            Err(_) => None,
        }
    }

    /// The stored refcount of `cluster` (QEMU's `qcow2_get_refcount`).
    pub fn get(
        &mut self,
        file: &HostFile,
        file_len: u64,
        cluster: u64,
    ) -> std::result::Result<u64, StoredError> {
        let Some(offset) = self.block_offset(cluster)? else {
            return Ok(0);
        };
        self.load(file, file_len, offset)?;
        let index = cluster & ((1u64 << self.block_bits) - 1);
        Ok(self
            .cached
            .as_ref()
            .map_or(0, |(_, block)| get_entry(block, self.order, index)))
    }

    /// Stores `value` as the refcount of `cluster`, whose refcount block must exist. Returns false when it
    /// does not (the caller counts the mismatch as not fixed).
    pub fn set(
        &mut self,
        file: &HostFile,
        file_len: u64,
        cluster: u64,
        value: u64,
    ) -> std::result::Result<bool, StoredError> {
        let Some(offset) = self.block_offset(cluster)? else {
            return Ok(false);
        };
        if offset >= file_len {
            return Ok(false);
        }
        self.load(file, file_len, offset)?;
        let index = cluster & ((1u64 << self.block_bits) - 1);
        let Some((_, block)) = self.cached.as_mut() else {
            return Ok(false);
        };
        let (start, end) = set_entry(block, self.order, index, value);
        if let Some(bytes) = block.get(start..end) {
            file.write_all_at(offset + start as u64, bytes)
                .map_err(StoredError::Io)?;
        }
        Ok(true)
    }

    /// Forgets the cached refcount block (after the blocks were rewritten).
    pub fn forget_cache(&mut self) {
        self.cached = None;
    }
}
