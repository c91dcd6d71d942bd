//! Injecting leaks and corruptions: reading and patching header fields, L2 entries and refcounts of
//! qemu-made images.

use std::path::Path;

use crate::support::{read_be, write_be};

/// The fields of a qemu-made image the tests patch.
pub struct Layout {
    pub cluster_size: u64,
    pub l1_offset: u64,
    pub reftable_offset: u64,
    pub refcount_bits: u64,
}

/// Reads the header fields the tests patch.
pub fn layout(path: &Path) -> Layout {
    let version = read_be(path, 4, 4);
    Layout {
        cluster_size: 1 << read_be(path, 20, 4),
        l1_offset: read_be(path, 40, 8),
        reftable_offset: read_be(path, 48, 8),
        refcount_bits: if version >= 3 {
            1 << read_be(path, 96, 4)
        } else {
            16
        },
    }
}

impl Layout {
    /// Host offset of L2 entry `index` of L1 entry 0's table.
    pub fn l2_entry_offset(&self, path: &Path, index: u64) -> u64 {
        let l2 = read_be(path, self.l1_offset, 8) & 0x00ff_ffff_ffff_fe00;
        assert_ne!(l2, 0, "the test image has no L2 table");
        l2 + index * 8
    }

    /// The refcount block holding `cluster`'s refcount, and the cluster's index in it.
    pub fn block_of(&self, path: &Path, cluster: u64) -> (u64, u64) {
        let per_block = self.cluster_size * 8 / self.refcount_bits;
        let block = read_be(path, self.reftable_offset + cluster / per_block * 8, 8);
        assert_ne!(block, 0, "no refcount block for cluster {cluster}");
        (block, cluster % per_block)
    }

    /// Sets the stored refcount of host cluster `cluster`.
    pub fn set_refcount(&self, path: &Path, cluster: u64, value: u64) {
        let (block, cluster) = self.block_of(path, cluster);
        if self.refcount_bits < 8 {
            // Sub-byte entries, least significant bits first (qemu's layout).
            let bit = cluster * self.refcount_bits;
            let byte = block + bit / 8;
            let shift = bit % 8;
            let mask = ((1u64 << self.refcount_bits) - 1) << shift;
            let old = read_be(path, byte, 1);
            write_be(path, byte, 1, (old & !mask) | ((value << shift) & mask));
            return;
        }
        let bytes = (self.refcount_bits / 8) as usize;
        write_be(path, block + cluster * bytes as u64, bytes, value);
    }

    /// The stored refcount of host cluster `cluster`.
    pub fn refcount(&self, path: &Path, cluster: u64) -> u64 {
        let (block, cluster) = self.block_of(path, cluster);
        if self.refcount_bits < 8 {
            let bit = cluster * self.refcount_bits;
            let old = read_be(path, block + bit / 8, 1);
            return (old >> (bit % 8)) & ((1u64 << self.refcount_bits) - 1);
        }
        let bytes = (self.refcount_bits / 8) as usize;
        read_be(path, block + cluster * bytes as u64, bytes)
    }
}

/// Appends one cluster with refcount 1 and no reference (a leak); returns its index.
pub fn append_leak(path: &Path, l: &Layout) -> u64 {
    let len = std::fs::metadata(path).unwrap().len();
    let cluster = len.div_ceil(l.cluster_size);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len((cluster + 1) * l.cluster_size)
        .unwrap();
    l.set_refcount(path, cluster, 1);
    cluster
}
