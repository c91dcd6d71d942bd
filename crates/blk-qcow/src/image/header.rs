//! The QCOW2 header (v2: 72 bytes, v3: `header_length` bytes), validated against QEMU's caps, and its
//! serialization when the header is rewritten.
//!
//! QEMU's caps, enforced at open: L1 table <= 32 MiB, refcount table <= 8 MiB, `cluster_bits` 9..=21,
//! `refcount_order` 0..=6, header length >= 104, a multiple of 8 and <= the cluster size (v3), backing file
//! name <= 1023 bytes inside cluster 0, backing format extension < 16 bytes, snapshots <= 65536, table
//! offsets cluster-aligned and below 2^56 with their start inside the file. Header extensions must lie inside
//! the header area. At most one cluster (<= 2 MiB) of the file is read to parse the header. AES encryption
//! (`crypt_method` 1) and a data-file bit without its name extension (QEMU would need a `data-file` option) are
//! refused with `UnsupportedFeature`; LUKS (`crypt_method` 2) is opened by `encryption`.

use blk_core::{Error, ErrorKind, Result};
use zerocopy::byteorder::{BigEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::image::extensions::Extensions;
use crate::image::features::{
    describe_unknown, AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE,
    INCOMPAT_EXTL2, INCOMPAT_KNOWN,
};

/// `QFI\xfb`.
pub(crate) const MAGIC: u32 = 0x5146_49fb;
/// Size of the version 2 header.
pub(crate) const V2_HEADER_SIZE: usize = 72;
/// Size of the version 3 header QEMU writes (with the compression type byte and padding).
pub(crate) const V3_HEADER_SIZE: usize = 112;
/// QEMU's cap on the L1 table (32 MiB).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's cap on the refcount table (8 MiB).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Host offsets must be below 2^56.
pub(crate) const MAX_HOST_OFFSET: u64 = 1 << 56;
/// QEMU's cap on the backing file name.
pub(crate) const MAX_BACKING_NAME: u32 = 1023;
/// Byte offset of the incompatible features field.
pub(crate) const INCOMPATIBLE_OFFSET: u64 = 72;
/// Byte offset of the refcount table offset field (followed by the cluster count).
pub(crate) const REFTABLE_OFFSET_FIELD: u64 = 48;

/// The fixed part of the header, as stored (big-endian).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct RawHeader {
    magic: U32<BigEndian>,
    version: U32<BigEndian>,
    backing_file_offset: U64<BigEndian>,
    backing_file_size: U32<BigEndian>,
    cluster_bits: U32<BigEndian>,
    size: U64<BigEndian>,
    crypt_method: U32<BigEndian>,
    l1_size: U32<BigEndian>,
    l1_table_offset: U64<BigEndian>,
    refcount_table_offset: U64<BigEndian>,
    refcount_table_clusters: U32<BigEndian>,
    nb_snapshots: U32<BigEndian>,
    snapshots_offset: U64<BigEndian>,
    incompatible_features: U64<BigEndian>,
    compatible_features: U64<BigEndian>,
    autoclear_features: U64<BigEndian>,
    refcount_order: U32<BigEndian>,
    header_length: U32<BigEndian>,
    compression_type: u8,
    padding: [u8; 7],
}

/// The header as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// Its length.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// L1 entries.
    pub l1_size: u32,
    /// L1 table offset.
    pub l1_table_offset: u64,
    /// Refcount table offset.
    pub refcount_table_offset: u64,
    /// Refcount table size in clusters.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Snapshot table offset.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// 0 zlib (deflate), 1 zstd.
    pub compression_type: u8,
    /// The backing file name (raw bytes as a string).
    pub backing_file: Option<String>,
    /// The header extensions.
    pub extensions: Extensions,
}

fn invalid(message: impl Into<String>, offset: u64) -> Error {
    Error::new(ErrorKind::InvalidFormat, message).with_offset(offset)
}

fn unsupported(message: impl Into<String>, offset: u64) -> Error {
    Error::new(ErrorKind::UnsupportedFeature, message).with_offset(offset)
}

impl Header {
    /// Parses and validates the header from the start of the file (`cluster0` holds up to one cluster, or less
    /// when the file is shorter) for a file of `file_len` bytes.
    pub(crate) fn parse(cluster0: &[u8], file_len: u64) -> Result<Header> {
        if cluster0.len() < V2_HEADER_SIZE {
            return Err(invalid("the file is too short for a qcow2 header", 0));
        }
        // A v2 header may be followed by less than 112 bytes: pad with zeros.
        let mut padded = [0u8; V3_HEADER_SIZE];
        let n = cluster0.len().min(V3_HEADER_SIZE);
        padded[..n].copy_from_slice(&cluster0[..n]);
        let raw = RawHeader::read_from_bytes(&padded[..])
            .map_err(|_| invalid("the file is too short for a qcow2 header", 0))?;
        if raw.magic.get() != MAGIC {
            return Err(invalid("not a qcow2 image (bad magic)", 0));
        }
        let version = raw.version.get();
        if version != 2 && version != 3 {
            return Err(unsupported(
                format!("qcow2 version {version} is not supported"),
                4,
            ));
        }
        let cluster_bits = raw.cluster_bits.get();
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(
                format!("Unsupported cluster size: 2^{cluster_bits}"),
                20,
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: raw.backing_file_offset.get(),
            backing_file_size: raw.backing_file_size.get(),
            cluster_bits,
            size: raw.size.get(),
            crypt_method: raw.crypt_method.get(),
            l1_size: raw.l1_size.get(),
            l1_table_offset: raw.l1_table_offset.get(),
            refcount_table_offset: raw.refcount_table_offset.get(),
            refcount_table_clusters: raw.refcount_table_clusters.get(),
            nb_snapshots: raw.nb_snapshots.get(),
            snapshots_offset: raw.snapshots_offset.get(),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_SIZE as u32,
            compression_type: 0,
            backing_file: None,
            extensions: Extensions::default(),
        };
        if version == 3 {
            h.incompatible = raw.incompatible_features.get();
            h.compatible = raw.compatible_features.get();
            h.autoclear = raw.autoclear_features.get();
            h.refcount_order = raw.refcount_order.get();
            h.header_length = raw.header_length.get();
            if h.header_length < 104 || h.header_length % 8 != 0 {
                return Err(invalid(
                    format!("qcow2 header length {} is invalid", h.header_length),
                    100,
                ));
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(invalid("qcow2 header exceeds cluster size", 100));
            }
            if cluster0.len() < h.header_length as usize {
                return Err(invalid("the file is too short for its qcow2 header", 100));
            }
            if h.header_length >= 105 {
                h.compression_type = raw.compression_type;
            }
        }
        if h.refcount_order > 6 {
            return Err(invalid(
                "Reference count entry width too large; may not exceed 64 bits",
                96,
            ));
        }
        // Feature bits and compression type.
        if h.compression_type > 1 {
            return Err(unsupported(
                format!("Unknown compression type {}", h.compression_type),
                104,
            ));
        }
        if (h.compression_type != 0) != (h.incompatible & INCOMPAT_COMPRESSION != 0) {
            return Err(invalid(
                "the compression type bit does not match the compression type field",
                INCOMPATIBLE_OFFSET,
            ));
        }
        // Extensions: after the header up to the backing name (or the cluster end).
        let ext_end = if h.backing_file_offset != 0 && h.backing_file_offset < cluster_size {
            h.backing_file_offset
        } else {
            cluster_size
        };
        let ext_start = u64::from(h.header_length);
        if ext_end > ext_start {
            let area_end = (ext_end as usize).min(cluster0.len());
            let area = cluster0.get(ext_start as usize..area_end).unwrap_or(&[]);
            h.extensions = Extensions::parse(area, ext_start)?;
        }
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let message = describe_unknown(unknown, &h.extensions.feature_names);
            return Err(unsupported(message, INCOMPATIBLE_OFFSET));
        }
        if h.incompatible & INCOMPAT_DATA_FILE != 0 && h.extensions.data_file_name.is_none() {
            // QEMU needs a `data-file` open option then, which this crate does not take.
            return Err(unsupported(
                "'data-file' is required for this image",
                INCOMPATIBLE_OFFSET,
            ));
        }
        if h.incompatible & INCOMPAT_DATA_FILE == 0 && h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
            return Err(invalid("data-file-raw requires a data file", 88));
        }
        if h.incompatible & INCOMPAT_EXTL2 != 0 && h.cluster_bits < 14 {
            return Err(invalid(
                format!(
                    "Unsupported subcluster size: {}",
                    (1u64 << h.cluster_bits) / 32
                ),
                20,
            ));
        }
        // Encryption: LUKS (2) is unlocked at open (see `encryption`); QEMU 10 no longer opens the legacy
        // AES-CBC method (1) for I/O, and blk does not implement it.
        match h.crypt_method {
            0 if h.extensions.crypto => {
                return Err(invalid(
                    "CRYPTO header extension only expected with LUKS encryption method",
                    32,
                ))
            }
            0 | crate::encryption::CRYPT_LUKS => {}
            crate::encryption::CRYPT_AES => {
                return Err(unsupported(
                    "AES-CBC encrypted qcow2 images (encrypt.format=aes) are not supported",
                    32,
                ))
            }
            other => {
                return Err(invalid(
                    format!("Unsupported encryption method: {other}"),
                    32,
                ));
            }
        }
        // Backing file name.
        if h.backing_file_offset != 0 {
            let end = h
                .backing_file_offset
                .checked_add(u64::from(h.backing_file_size));
            if h.backing_file_size > MAX_BACKING_NAME || end.is_none_or(|e| e > cluster_size) {
                return Err(invalid("Backing file name too long", 8));
            }
            let start = h.backing_file_offset as usize;
            let name = cluster0
                .get(start..start + h.backing_file_size as usize)
                .ok_or_else(|| invalid("the backing file name lies past the end of the file", 8))?;
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        }
        // Tables.
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(invalid("Active L1 table too large", 36));
        }
        let l2_entries = cluster_size
            / if h.incompatible & INCOMPAT_EXTL2 != 0 {
                16
            } else {
                8
            };
        let needed_l1 = h.size.div_ceil(cluster_size).div_ceil(l2_entries);
        if needed_l1 > u64::from(h.l1_size) {
            return Err(invalid("L1 table is too small for the virtual size", 36));
        }
        check_table(
            h.l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
            "L1 table",
            40,
        )?;
        let rt_bytes = u64::from(h.refcount_table_clusters) * cluster_size;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(invalid("Reference count table too large", 56));
        }
        if h.refcount_table_clusters == 0 {
            return Err(invalid("the image has no refcount table", 56));
        }
        check_table(
            h.refcount_table_offset,
            rt_bytes,
            cluster_size,
            file_len,
            "Reference count table",
            48,
        )?;
        if h.nb_snapshots > 65536 {
            return Err(invalid("Too many snapshots", 60));
        }
        if h.nb_snapshots > 0
            && (h.snapshots_offset % cluster_size != 0 || h.snapshots_offset >= MAX_HOST_OFFSET)
        {
            return Err(invalid("Snapshot table offset invalid", 64));
        }
        Ok(h)
    }

    /// The header bytes as stored: the fixed part (72 bytes for v2, `header_length` for v3), extensions (v3,
    /// or v2 with a backing format), and the backing name right after them. The caller checks that it fits
    /// in cluster 0.
    pub(crate) fn serialize(&self) -> Vec<u8> {
        let raw = RawHeader {
            magic: MAGIC.into(),
            version: self.version.into(),
            backing_file_offset: 0.into(),
            backing_file_size: 0.into(),
            cluster_bits: self.cluster_bits.into(),
            size: self.size.into(),
            crypt_method: self.crypt_method.into(),
            l1_size: self.l1_size.into(),
            l1_table_offset: self.l1_table_offset.into(),
            refcount_table_offset: self.refcount_table_offset.into(),
            refcount_table_clusters: self.refcount_table_clusters.into(),
            nb_snapshots: self.nb_snapshots.into(),
            snapshots_offset: self.snapshots_offset.into(),
            incompatible_features: self.incompatible.into(),
            compatible_features: self.compatible.into(),
            autoclear_features: self.autoclear.into(),
            refcount_order: self.refcount_order.into(),
            header_length: self.header_length.into(),
            compression_type: self.compression_type,
            padding: [0; 7],
        };
        let mut out = raw.as_bytes().to_vec();
        out.resize(self.header_length as usize, 0);
        if self.version == 3
            || self.extensions.backing_format.is_some()
            || !self.extensions.other.is_empty()
        {
            out.extend_from_slice(&self.extensions.serialize());
        }
        if let Some(name) = &self.backing_file {
            let offset = out.len() as u64;
            out[8..16].copy_from_slice(&offset.to_be_bytes());
            out[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out
    }
}

/// Checks a table's offset (aligned, below 2^56) and that its `len` bytes lie inside the file.
fn check_table(
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
    what: &str,
    field: u64,
) -> Result<()> {
    if offset % cluster_size != 0 || offset == 0 && len != 0 {
        return Err(invalid(format!("Invalid {what} offset"), field));
    }
    // QEMU accepts tables running past the end of the file (they read as zeros there; a new image's L1 table
    // does), so only the start must lie inside the file.
    match offset.checked_add(len) {
        Some(end) if end < MAX_HOST_OFFSET && (len == 0 || offset < file_len) => Ok(()),
        _ => Err(invalid(
            format!("{what} lies past the end of the file"),
            field,
        )),
    }
}
