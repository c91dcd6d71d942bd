//! The hard disk footer (VHD spec, "Hard Disk Footer Format"): 512 big-endian bytes at the end of every VHD
//! file, with a copy at offset 0 in dynamic and differencing disks.

use blk_core::{Error, ErrorKind, Result};
use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::geometry::Geometry;

/// Size of the footer in bytes.
pub const FOOTER_SIZE: u64 = 512;

/// The footer's cookie (spec: "Cookie").
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";

/// `data_offset` of a fixed disk: no further structure.
pub const NO_DATA_OFFSET: u64 = u64::MAX;

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC), spec field "Time Stamp".
pub const VHD_EPOCH: u64 = 946_684_800;

/// The spec's disk types (field "Disk Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Type 2: the data is the file, followed by the footer.
    Fixed,
    /// Type 3: sparse, with a dynamic header and block allocation table.
    Dynamic,
    /// Type 4: sparse, with sectors not present read from a parent.
    Differencing,
}

impl DiskType {
    /// The on-disk code.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// The type for an on-disk code, if it is one blk supports.
    pub fn from_code(code: u32) -> Option<DiskType> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The lowercase name (`fixed`, `dynamic`, `differencing`).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// The hard disk footer, field by field as the spec lists them (all integers big-endian).
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Footer {
    /// "Cookie": `conectix`.
    pub cookie: [u8; 8],
    /// "Features": bit 1 (reserved) is always set.
    pub features: U32,
    /// "File Format Version": 0x00010000.
    pub format_version: U32,
    /// "Data Offset": the dynamic header's offset, all ones for fixed disks.
    pub data_offset: U64,
    /// "Time Stamp": seconds since 2000-01-01 UTC.
    pub timestamp: U32,
    /// "Creator Application", e.g. `qemu`, `qem2`, `win `, `vpc `.
    pub creator_app: [u8; 4],
    /// "Creator Version" (major << 16 | minor).
    pub creator_version: U32,
    /// "Creator Host OS": `Wi2k` or `Mac `.
    pub creator_os: [u8; 4],
    /// "Original Size" in bytes.
    pub original_size: U64,
    /// "Current Size" in bytes.
    pub current_size: U64,
    /// "Disk Geometry": cylinders.
    pub cylinders: U16,
    /// "Disk Geometry": heads.
    pub heads: u8,
    /// "Disk Geometry": sectors per track.
    pub sectors_per_track: u8,
    /// "Disk Type": 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: U32,
    /// "Checksum": one's complement of the byte sum of the footer without this field.
    pub checksum: U32,
    /// "Unique Id": identifies the disk (a differencing child records its parent's).
    pub unique_id: [u8; 16],
    /// "Saved State".
    pub saved_state: u8,
    /// "Reserved": zeros.
    pub reserved: [u8; 427],
}

/// One's complement of the byte sum of `bytes`, skipping the four bytes at `checksum_at` (spec: "Checksum").
pub fn vhd_checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

/// Offset of the checksum field in the footer.
const CHECKSUM_AT: usize = 64;

impl Footer {
    /// Parses 512 bytes without validating them.
    pub fn parse(bytes: &[u8; 512]) -> Footer {
        // Footer is 512 bytes of unaligned plain data (checked by the size test), so this cannot fail.
        match Footer::read_from_bytes(bytes) {
            Ok(footer) => footer,
            Err(_) => unreachable!("Footer is exactly 512 bytes"),
        }
    }

    /// The 512 on-disk bytes.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut bytes = [0u8; 512];
        bytes.copy_from_slice(self.as_bytes());
        bytes
    }

    /// Whether the cookie is `conectix`.
    pub fn has_cookie(&self) -> bool {
        &self.cookie == FOOTER_COOKIE
    }

    /// The checksum the footer should carry.
    pub fn computed_checksum(&self) -> u32 {
        vhd_checksum(self.as_bytes(), CHECKSUM_AT)
    }

    /// Recomputes and stores the checksum.
    pub fn update_checksum(&mut self) {
        self.checksum = U32::new(self.computed_checksum());
    }

    /// Checks cookie and checksum, and returns the disk type. Errors carry the field's offset relative to the
    /// footer's position `at`.
    pub fn validate(&self, at: u64) -> Result<DiskType> {
        if !self.has_cookie() {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "no VHD footer (cookie 'conectix' missing)",
            )
            .with_offset(at));
        }
        let computed = self.computed_checksum();
        if computed != self.checksum.get() {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "footer checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                    self.checksum.get()
                ),
            )
            .with_offset(at + CHECKSUM_AT as u64));
        }
        DiskType::from_code(self.disk_type.get()).ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedFeature,
                format!("unsupported disk type {}", self.disk_type.get()),
            )
            .with_offset(at + 60)
        })
    }

    /// The CHS geometry.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            cylinders: self.cylinders.get(),
            heads: self.heads,
            sectors_per_track: self.sectors_per_track,
        }
    }

    /// A footer as `qemu-img create -f vpc` writes it (creator `qemu`, or `qem2` with `force_size`), with a
    /// correct checksum.
    pub fn new(
        disk_type: DiskType,
        size: u64,
        geometry: Geometry,
        force_size: bool,
        unique_id: [u8; 16],
        timestamp: u32,
    ) -> Footer {
        let mut footer = Footer::new_zeroed();
        footer.cookie = *FOOTER_COOKIE;
        footer.features = U32::new(2);
        footer.format_version = U32::new(0x0001_0000);
        footer.data_offset = U64::new(match disk_type {
            DiskType::Fixed => NO_DATA_OFFSET,
            DiskType::Dynamic | DiskType::Differencing => FOOTER_SIZE,
        });
        footer.timestamp = U32::new(timestamp);
        footer.creator_app = if force_size { *b"qem2" } else { *b"qemu" };
        // Virtual PC 2007's version, as QEMU writes it.
        footer.creator_version = U32::new(0x0005_0003);
        footer.creator_os = *b"Wi2k";
        footer.original_size = U64::new(size);
        footer.current_size = U64::new(size);
        footer.cylinders = U16::new(geometry.cylinders);
        footer.heads = geometry.heads;
        footer.sectors_per_track = geometry.sectors_per_track;
        footer.disk_type = U32::new(disk_type.code());
        footer.unique_id = unique_id;
        footer.update_checksum();
        footer
    }
}

/// The current time as a VHD time stamp (seconds since 2000-01-01 UTC).
pub fn vhd_timestamp_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // QEMU stores the low 32 bits; that wraps in 2136.
    unix.saturating_sub(VHD_EPOCH) as u32
}

/// A random version-4 UUID from the kernel's random source (a time-derived fallback if that fails).
pub fn random_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut id = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .is_ok();
    if !filled {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id = (nanos ^ (u128::from(std::process::id()) << 64)).to_be_bytes();
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// A UUID in its usual text form.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec() {
        assert_eq!(std::mem::size_of::<Footer>(), 512);
        let mut f = Footer::new(DiskType::Dynamic, 1 << 20, Geometry::MAX, true, [7; 16], 5);
        assert_eq!(f.validate(0).unwrap(), DiskType::Dynamic);
        let bytes = f.as_bytes();
        assert_eq!(&bytes[0..8], b"conectix");
        assert_eq!(&bytes[28..32], b"qem2");
        assert_eq!(&bytes[56..60], &[0xff, 0xff, 0x10, 0xff]);
        assert_eq!(&bytes[68..84], &[7; 16]);
        f.heads = 3;
        assert_eq!(f.validate(0).unwrap_err().kind(), ErrorKind::CorruptImage);
        assert_eq!(
            format_uuid(&[0x12; 16]),
            "12121212-1212-1212-1212-121212121212"
        );
    }
}
