//! The region table (MS-VHDX 2.2.3): where the BAT and the metadata region live. Two copies, at 192 KiB and
//! 256 KiB; the first valid one is used.

use blk_core::{HostFile, Result};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::checksum::{checksum_matches, store_checksum};
use crate::error::{corrupt, unsupported};
use crate::guid::Guid;
use crate::header::{HEADER_SECTION_END, MIB};

/// Where the two copies of the region table live.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// A region table's size, the span its checksum covers.
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// The most entries a table may hold (2.2.3.1).
const MAX_ENTRIES: u32 = 2047;

/// The BAT region, 2DC27766-F623-4200-9D64-115E9BFD4A08.
pub const BAT_GUID: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// The metadata region, 8B7CA206-4790-4B9A-B8FE-575F050F886E.
pub const METADATA_GUID: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// The region table header (2.2.3.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawRegionHeader {
    /// `regi`.
    pub signature: [u8; 4],
    /// CRC-32C over the 64 KiB table.
    pub checksum: U32,
    /// Entries that follow, at most 2047.
    pub entry_count: U32,
    /// Zero.
    pub reserved: U32,
}

/// A region table entry (2.2.3.2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawRegionEntry {
    /// What the region is.
    pub guid: [u8; 16],
    /// Bytes, a multiple of 1 MiB, at least 1 MiB.
    pub file_offset: U64,
    /// Bytes, a multiple of 1 MiB.
    pub length: U32,
    /// Bit 0: the region must be understood to open the file.
    pub required: U32,
}

/// A region's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Whether the two byte ranges share a byte.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// The regions an image has (BAT and metadata are required).
#[derive(Debug, Clone, Copy)]
pub struct Regions {
    /// The BAT.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// Builds a region table holding the BAT and the metadata region, as QEMU does (both marked required:
/// QEMU writes 0, the spec's table says required; we follow the spec).
pub fn build_table(bat: Region, metadata: Region) -> Vec<u8> {
    let mut table = vec![0u8; REGION_TABLE_SIZE];
    let header = RawRegionHeader {
        signature: *b"regi",
        checksum: U32::new(0),
        entry_count: U32::new(2),
        reserved: U32::new(0),
    };
    table[..16].copy_from_slice(header.as_bytes());
    for (i, (guid, region)) in [(BAT_GUID, bat), (METADATA_GUID, metadata)]
        .iter()
        .enumerate()
    {
        let entry = RawRegionEntry {
            guid: guid.0,
            file_offset: U64::new(region.offset),
            // Region lengths are built by create from u32-sized values.
            length: U32::new(u32::try_from(region.length).unwrap_or(u32::MAX)),
            required: U32::new(1),
        };
        let at = 16 + 32 * i;
        table[at..at + 32].copy_from_slice(entry.as_bytes());
    }
    store_checksum(&mut table, 4);
    table
}

/// Parses one copy of the table at `base`; `Ok(None)` when its signature or checksum is bad.
fn parse_table(table: &[u8], base: u64, log: Region, file_len: u64) -> Result<Option<Regions>> {
    let Ok((header, _)) = RawRegionHeader::read_from_prefix(table) else {
        return Ok(None);
    };
    if &header.signature != b"regi" || !checksum_matches(table, 4) {
        return Ok(None);
    }
    let count = header.entry_count.get();
    if count > MAX_ENTRIES {
        return Err(corrupt(
            base + 8,
            format!("the region table has {count} entries, more than 2047"),
        ));
    }
    let mut seen: Vec<(Guid, Region, u64)> = Vec::new();
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let at = 16 + 32 * i;
        let entry_offset = base + at as u64;
        let Some(Ok((entry, _))) = table.get(at..).map(RawRegionEntry::read_from_prefix) else {
            return Err(corrupt(
                entry_offset,
                "region table entry outside the table",
            ));
        };
        let guid = Guid(entry.guid);
        let region = Region {
            offset: entry.file_offset.get(),
            length: u64::from(entry.length.get()),
        };
        if region.offset % MIB != 0
            || region.offset < HEADER_SECTION_END
            || region.length % MIB != 0
        {
            return Err(corrupt(
                entry_offset + 16,
                format!(
                    "region {guid:?} at {:#x}, {} bytes, is not 1 MiB-aligned past the header section",
                    region.offset, region.length
                ),
            ));
        }
        if region.end() > file_len {
            return Err(corrupt(
                entry_offset + 16,
                format!(
                    "region {guid:?} ({:#x}..{:#x}) ends past the end of the file ({file_len} bytes)",
                    region.offset,
                    region.end()
                ),
            ));
        }
        if log.length > 0 && region.overlaps(&log) {
            return Err(corrupt(
                entry_offset + 16,
                format!(
                    "region {guid:?} overlaps the log ({:#x}..{:#x})",
                    log.offset,
                    log.end()
                ),
            ));
        }
        for (other, other_region, _) in &seen {
            if *other == guid {
                return Err(corrupt(
                    entry_offset,
                    format!("region {guid:?} appears twice"),
                ));
            }
            if region.overlaps(other_region) {
                return Err(corrupt(
                    entry_offset + 16,
                    format!("region {guid:?} overlaps region {other:?}"),
                ));
            }
        }
        if guid == BAT_GUID {
            bat = Some(region);
        } else if guid == METADATA_GUID {
            metadata = Some(region);
        } else if entry.required.get() & 1 != 0 {
            return Err(unsupported(
                entry_offset,
                format!("unknown required region {guid:?}"),
            ));
        }
        seen.push((guid, region, entry_offset));
    }
    let Some(bat) = bat else {
        return Err(corrupt(base, "the region table has no BAT region"));
    };
    let Some(metadata) = metadata else {
        return Err(corrupt(base, "the region table has no metadata region"));
    };
    Ok(Some(Regions { bat, metadata }))
}

/// Reads the region table: the first copy whose signature and checksum are good (a torn update of one copy
/// leaves the other).
pub fn read_regions(file: &HostFile, log: Region) -> Result<Regions> {
    let file_len = file.len()?;
    for base in REGION_TABLE_OFFSETS {
        let mut table = vec![0u8; REGION_TABLE_SIZE];
        file.read_exact_at(base, &mut table)?;
        if let Some(regions) = parse_table(&table, base, log, file_len)? {
            return Ok(regions);
        }
    }
    Err(corrupt(
        REGION_TABLE_OFFSETS[0],
        "neither region table is valid (bad signature or checksum)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn table_layout_matches_the_spec() {
        assert_eq!(size_of::<RawRegionHeader>(), 16);
        assert_eq!(size_of::<RawRegionEntry>(), 32);
        let bat = Region {
            offset: 2 << 20,
            length: 1 << 20,
        };
        let md = Region {
            offset: 3 << 20,
            length: 1 << 20,
        };
        let table = build_table(bat, md);
        let log = Region {
            offset: 1 << 20,
            length: 1 << 20,
        };
        let regions = parse_table(&table, 0, log, 8 << 20).unwrap().unwrap();
        assert_eq!(regions.bat, bat);
        assert_eq!(regions.metadata, md);
        // Overlap with the log is refused.
        let bad = build_table(
            Region {
                offset: 1 << 20,
                length: 1 << 20,
            },
            md,
        );
        assert!(parse_table(&bad, 0, log, 8 << 20).is_err());
        // Overlapping regions are refused.
        let bad = build_table(
            bat,
            Region {
                offset: 2 << 20,
                length: 2 << 20,
            },
        );
        assert!(parse_table(&bad, 0, log, 8 << 20).is_err());
        // Past the end of the file.
        assert!(parse_table(&table, 0, log, 3 << 20).is_err());
    }
}
