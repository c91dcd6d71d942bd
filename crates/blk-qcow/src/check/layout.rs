//! The image layout the check works from, read from the header on disk (the check trusts nothing cached).

use blk_core::{Error, ErrorKind, HostFile, Operation, Result};

use crate::image::header::Header;
use crate::FORMAT_NAME;

pub(super) use crate::image::features::{
    INCOMPAT_DATA_FILE, INCOMPAT_EXTL2 as INCOMPAT_EXTENDED_L2,
};
pub(super) use crate::image::header::{
    MAX_L1_BYTES, MAX_REFTABLE_BYTES, REFTABLE_OFFSET_FIELD as REFTABLE_FIELDS_OFFSET,
};
pub(super) use crate::metadata::tables::{
    COMPRESSED as OFLAG_COMPRESSED, COPIED as OFLAG_COPIED, L1_OFFSET_MASK, L2_OFFSET_MASK,
    ZERO as OFLAG_ZERO,
};

/// Bits of L1 entries that must be zero.
pub(super) const L1_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// The allocation half of a subcluster bitmap (`QCOW_L2_BITMAP_ALL_ALLOC`).
pub(super) const L2_BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
/// Bits of standard L2 entries that must be zero.
pub(super) const L2_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;

/// What the check needs to know about the image, from its header.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The cluster size in bytes.
    pub cluster_size: u64,
    /// The guest-visible size.
    pub virtual_size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u64,
    /// Where the active L1 table starts.
    pub l1_table_offset: u64,
    /// Where the refcount table starts.
    pub refcount_table_offset: u64,
    /// Entries in the refcount table (its clusters times entries per cluster).
    pub refcount_table_entries: u64,
    /// Snapshots in the snapshot table.
    pub nb_snapshots: u64,
    /// Where the snapshot table starts.
    pub snapshots_offset: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Where the host offset ends in a compressed descriptor (`csize_shift`).
    pub csize_shift: u32,
    /// L2 entries are 128 bits: the entry, then the subcluster bitmap.
    pub extended_l2: bool,
    /// Guest data lives in an external data file (incompatible bit 2): data clusters are not refcounted in
    /// the image file and their offsets are data-file offsets (QEMU's `has_data_file`).
    pub data_file: bool,
    /// The LUKS header area of an encrypted image (offset, length): refcounted clusters no table names.
    pub crypto_header: Option<(u64, u64)>,
}

fn corrupt(message: String, offset: u64) -> Error {
    Error::new(ErrorKind::CorruptImage, message)
        .with_format(FORMAT_NAME)
        .with_offset(offset)
        .with_operation(Operation::Check)
}

impl Layout {
    /// The layout the engine's current header describes (validated against QEMU's caps at open; the caps the
    /// check relies on for its allocations are checked again here).
    pub fn from_header(header: &Header) -> Result<Layout> {
        let version = header.version;
        let cluster_bits = header.cluster_bits;
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(
                format!("cluster_bits {cluster_bits} is outside 9..=21"),
                20,
            ));
        }
        let (incompatible_features, refcount_order) = if version >= 3 {
            (header.incompatible, header.refcount_order)
        } else {
            (0, 4)
        };
        if refcount_order > 6 {
            return Err(corrupt(
                format!("refcount_order {refcount_order} is above 6"),
                96,
            ));
        }
        let extended_l2 = incompatible_features & INCOMPAT_EXTENDED_L2 != 0;
        let data_file = incompatible_features & INCOMPAT_DATA_FILE != 0;
        let cluster_size = 1u64 << cluster_bits;
        let l1_size = u64::from(header.l1_size);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(corrupt(
                format!("the L1 table ({l1_size} entries) is larger than 32 MiB"),
                36,
            ));
        }
        let refcount_table_entries = u64::from(header.refcount_table_clusters) * (cluster_size / 8);
        if refcount_table_entries * 8 > MAX_REFTABLE_BYTES {
            return Err(corrupt(
                "the refcount table is larger than 8 MiB".into(),
                56,
            ));
        }
        Ok(Layout {
            cluster_bits,
            cluster_size,
            virtual_size: header.size,
            l1_size,
            l1_table_offset: header.l1_table_offset,
            refcount_table_offset: header.refcount_table_offset,
            refcount_table_entries,
            nb_snapshots: u64::from(header.nb_snapshots),
            snapshots_offset: header.snapshots_offset,
            refcount_order,
            csize_shift: 62 - (cluster_bits - 8),
            extended_l2,
            data_file,
            crypto_header: crate::encryption::crypto_header_location(header)
                .ok()
                .flatten()
                .filter(|_| header.crypt_method == crate::encryption::CRYPT_LUKS),
        })
    }

    /// 64-bit words per L2 entry (2 with extended L2 entries).
    pub fn l2_stride(&self) -> usize {
        if self.extended_l2 {
            2
        } else {
            1
        }
    }

    /// The byte offset of `offset` inside its cluster.
    pub fn offset_into_cluster(&self, offset: u64) -> u64 {
        offset & (self.cluster_size - 1)
    }

    /// Clusters needed to hold `bytes` bytes.
    pub fn size_to_clusters(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_size)
    }

    /// The refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// The largest refcount an entry can hold.
    pub fn refcount_max(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits()) - 1
        }
    }

    /// log2 of the refcount entries in one refcount block.
    pub fn refcount_block_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    /// The host range (start, length in bytes) a compressed descriptor covers, as QEMU's
    /// `qcow2_parse_compressed_l2_entry` computes it.
    pub fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let offset_mask = (1u64 << self.csize_shift) - 1;
        let sectors_mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let offset = entry & offset_mask;
        let sectors = ((entry >> self.csize_shift) & sectors_mask) + 1;
        (offset, sectors * 512 - (offset & 511))
    }

    /// How QEMU classifies the L2 entry `entry` in this image (`qcow2_get_cluster_type`).
    pub fn cluster_type(&self, entry: u64) -> ClusterType {
        ClusterType::of(entry, self.extended_l2, self.data_file)
    }
}

/// How QEMU classifies an L2 entry (`qcow2_get_cluster_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClusterType {
    /// A compressed-cluster descriptor.
    Compressed,
    /// Reads as zeros, with a preallocated host cluster.
    ZeroAlloc,
    /// Reads as zeros, no host cluster.
    ZeroPlain,
    /// A standard data cluster.
    Normal,
    /// Not allocated in this layer.
    Unallocated,
}

impl ClusterType {
    /// Classifies a raw L2 entry (with extended L2 entries the zero flag is not used; with an external data
    /// file, offset 0 with OFLAG_COPIED is the data file's first cluster: every data-file cluster has
    /// refcount 1, so the flag tells it from an unallocated entry).
    pub fn of(entry: u64, extended_l2: bool, data_file: bool) -> ClusterType {
        if entry & OFLAG_COMPRESSED != 0 {
            ClusterType::Compressed
        } else if entry & OFLAG_ZERO != 0 && !extended_l2 {
            if entry & L2_OFFSET_MASK != 0 {
                ClusterType::ZeroAlloc
            } else {
                ClusterType::ZeroPlain
            }
        } else if entry & L2_OFFSET_MASK == 0 && !(data_file && entry & OFLAG_COPIED != 0) {
            ClusterType::Unallocated
        } else {
            ClusterType::Normal
        }
    }
}

/// Decodes a table of big-endian 64-bit entries.
pub(super) fn decode_be64(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            u64::from_be_bytes(word)
        })
        .collect()
}

/// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros (as QEMU's file driver
/// returns them), so a table reaching past the end is checked rather than refused.
pub(super) fn read_padded(
    file: &HostFile,
    file_len: u64,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if offset < file_len {
        let avail = usize::try_from(file_len - offset)
            .unwrap_or(usize::MAX)
            .min(len);
        // `avail` <= len = buf.len().
        if let Some(head) = buf.get_mut(..avail) {
            file.read_exact_at(offset, head)?;
        }
    }
    Ok(buf)
}
