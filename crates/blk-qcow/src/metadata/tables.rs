//! L1 and L2 table entries.

use crate::metadata::Geometry;

/// Bit 63 of L1 and standard L2 entries: the refcount is exactly 1 (writable in place).
pub(crate) const COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: the cluster is compressed.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): the cluster reads as zeros.
pub(crate) const ZERO: u64 = 1;
/// Host offset bits of an L1 entry (bits 9..55).
pub(crate) const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Host offset bits of a standard L2 entry (bits 9..55).
pub(crate) const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// What one L2 entry says about its guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L2Entry {
    /// Not allocated here: the backing file, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is set for an allocated zero cluster.
    Zero {
        /// The preallocated host cluster, if any.
        host: Option<u64>,
        /// Whether its refcount is 1.
        copied: bool,
    },
    /// Plain data at `host`.
    Data {
        /// Host offset of the cluster.
        host: u64,
        /// Whether its refcount is 1 (may be written in place).
        copied: bool,
    },
    /// Compressed data: `size` bytes (the sector-rounded span QEMU reads) at byte `host`.
    Compressed {
        /// Host byte offset of the compressed data.
        host: u64,
        /// Bytes to read.
        size: u64,
    },
}

impl L2Entry {
    /// Decodes a raw L2 entry (host byte order) for an image of geometry `g`.
    pub(crate) fn decode(raw: u64, g: &Geometry) -> L2Entry {
        if raw & COMPRESSED != 0 {
            let x = 62 - (g.cluster_bits - 8);
            let host = raw & ((1u64 << x) - 1);
            let sectors = ((raw >> x) & ((1u64 << (g.cluster_bits - 8)) - 1)) + 1;
            let size = sectors * 512 - (host & 511);
            return L2Entry::Compressed { host, size };
        }
        let host = raw & L2_OFFSET_MASK;
        let copied = raw & COPIED != 0;
        // With extended L2 entries bit 0 is reserved: the bitmap says which subclusters read as zeros.
        if g.version >= 3 && !g.extended_l2 && raw & ZERO != 0 {
            return L2Entry::Zero {
                host: (host != 0).then_some(host),
                copied,
            };
        }
        if host == 0 {
            // Offset 0 is valid in an external data file, where every cluster has refcount 1: COPIED tells
            // it from an unallocated entry (QEMU's rule).
            if g.data_file && copied {
                return L2Entry::Data { host, copied };
            }
            return L2Entry::Unallocated;
        }
        L2Entry::Data { host, copied }
    }

    /// The raw entry for compressed data of `len` bytes at byte `host`.
    pub(crate) fn compressed(host: u64, len: u64, g: &Geometry) -> u64 {
        let x = 62 - (g.cluster_bits - 8);
        let field = ((host + len - 1) >> 9) - (host >> 9);
        COMPRESSED | (field << x) | host
    }
}

/// Big-endian u64 at entry `index` of a table's bytes (0 when out of range, which callers prevent).
pub(crate) fn entry(table: &[u8], index: usize) -> u64 {
    match table.get(index * 8..index * 8 + 8) {
        Some(b) => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => 0,
    }
}

/// Stores `value` big-endian at entry `index` (ignored out of range, which callers prevent).
pub(crate) fn set_entry(table: &mut [u8], index: usize, value: u64) {
    if let Some(b) = table.get_mut(index * 8..index * 8 + 8) {
        b.copy_from_slice(&value.to_be_bytes());
    }
}
