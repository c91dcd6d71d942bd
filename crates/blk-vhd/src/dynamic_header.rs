//! The dynamic disk header (VHD spec, "Dynamic Disk Header Format"): 1024 big-endian bytes at the footer's
//! `data_offset` of dynamic and differencing disks, locating the block allocation table and, for differencing
//! disks, naming the parent (spec, "Parent Locator Entries").

use blk_core::{Error, ErrorKind, Result};
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::footer::vhd_checksum;

/// Size of the dynamic header in bytes.
pub const HEADER_SIZE: u64 = 1024;

/// The header's cookie.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";

/// Offset of the checksum field in the header.
const CHECKSUM_AT: usize = 36;

/// One of the eight parent locator entries (spec, "Parent Locator Entries").
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// "Platform Code": `W2ru`, `W2ku`, `Mac `, `MacX`, ... (0: unused).
    pub platform_code: U32,
    /// "Platform Data Space": room reserved for the locator (blk writes bytes, as Windows does).
    pub platform_data_space: U32,
    /// "Platform Data Length": bytes of locator data.
    pub platform_data_length: U32,
    /// "Reserved".
    pub reserved: U32,
    /// "Platform Data Offset": where the locator data is in the file.
    pub platform_data_offset: U64,
}

/// The dynamic disk header, field by field.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DynamicHeader {
    /// "Cookie": `cxsparse`.
    pub cookie: [u8; 8],
    /// "Data Offset": unused, all ones.
    pub data_offset: U64,
    /// "Table Offset": the block allocation table's offset.
    pub table_offset: U64,
    /// "Header Version": 0x00010000.
    pub header_version: U32,
    /// "Max Table Entries": BAT entries.
    pub max_table_entries: U32,
    /// "Block Size": bytes of data per block (a power of two; 2 MiB by default).
    pub block_size: U32,
    /// "Checksum": one's complement of the byte sum of the header without this field.
    pub checksum: U32,
    /// "Parent Unique ID": the parent footer's unique id (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// "Parent Time Stamp": the parent's modification time (seconds since 2000).
    pub parent_timestamp: U32,
    /// "Reserved".
    pub reserved1: U32,
    /// "Parent Unicode Name": the parent's file name, UTF-16 big-endian.
    pub parent_unicode_name: [u8; 512],
    /// "Parent Locator Entries".
    pub parent_locators: [ParentLocatorEntry; 8],
    /// "Reserved": zeros.
    pub reserved2: [u8; 256],
}

impl DynamicHeader {
    /// Parses 1024 bytes without validating them.
    pub fn parse(bytes: &[u8; 1024]) -> DynamicHeader {
        match DynamicHeader::read_from_bytes(bytes) {
            Ok(header) => header,
            Err(_) => unreachable!("DynamicHeader is exactly 1024 bytes"),
        }
    }

    /// The checksum the header should carry.
    pub fn computed_checksum(&self) -> u32 {
        vhd_checksum(self.as_bytes(), CHECKSUM_AT)
    }

    /// Recomputes and stores the checksum.
    pub fn update_checksum(&mut self) {
        self.checksum = U32::new(self.computed_checksum());
    }

    /// Checks cookie, checksum, version and block size (a power of two, at least 512, as QEMU requires).
    /// Error offsets are absolute, the header being at `at`.
    pub fn validate(&self, at: u64) -> Result<()> {
        if &self.cookie != HEADER_COOKIE {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                "invalid dynamic header cookie (expected 'cxsparse')",
            )
            .with_offset(at));
        }
        let computed = self.computed_checksum();
        if computed != self.checksum.get() {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "dynamic header checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                    self.checksum.get()
                ),
            )
            .with_offset(at + CHECKSUM_AT as u64));
        }
        if self.header_version.get() >> 16 != 1 {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!(
                    "unsupported dynamic header version {:#010x}",
                    self.header_version.get()
                ),
            )
            .with_offset(at + 24));
        }
        let block_size = self.block_size.get();
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!("invalid block size {block_size} (must be a power of two, at least 512)"),
            )
            .with_offset(at + 32));
        }
        Ok(())
    }

    /// A header as `qemu-img create -f vpc` writes it: BAT at `table_offset`, `entries` entries of
    /// `block_size` bytes, no parent.
    pub fn new(table_offset: u64, entries: u32, block_size: u32) -> DynamicHeader {
        let mut header = DynamicHeader::new_zeroed();
        header.cookie = *HEADER_COOKIE;
        // The spec says 0xFFFFFFFF, but Microsoft's tools (and QEMU) write all 64 bits set.
        header.data_offset = U64::new(u64::MAX);
        header.table_offset = U64::new(table_offset);
        header.header_version = U32::new(0x0001_0000);
        header.max_table_entries = U32::new(entries);
        header.block_size = U32::new(block_size);
        header.update_checksum();
        header
    }

    /// The parent's name from "Parent Unicode Name" (UTF-16 big-endian, up to the first NUL).
    pub fn parent_name(&self) -> String {
        let units: Vec<u16> = self
            .parent_unicode_name
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// Stores `name` in "Parent Unicode Name", truncated to 256 UTF-16 units.
    pub fn set_parent_name(&mut self, name: &str) {
        self.parent_unicode_name = [0; 512];
        for (slot, unit) in self
            .parent_unicode_name
            .chunks_exact_mut(2)
            .zip(name.encode_utf16())
        {
            slot.copy_from_slice(&unit.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec() {
        assert_eq!(std::mem::size_of::<ParentLocatorEntry>(), 24);
        assert_eq!(std::mem::size_of::<DynamicHeader>(), 1024);
        let mut h = DynamicHeader::new(1536, 5, 2 << 20);
        h.validate(0).unwrap();
        let b = h.as_bytes();
        assert_eq!(&b[16..24], &1536u64.to_be_bytes());
        assert_eq!(&b[28..32], &5u32.to_be_bytes());
        h.set_parent_name("p\u{e9}re.vhd");
        assert_eq!(h.parent_name(), "p\u{e9}re.vhd");
        assert_eq!(&h.as_bytes()[64..66], &[0, b'p']);
        h.block_size = U32::new(3000);
        h.update_checksum();
        assert!(h.validate(0).unwrap_err().message().contains("block size"));
    }
}
