//! Log entries on disk (MS-VHDX 2.3.1): the entry header, zero and data descriptors, data sectors; building
//! an entry and validating one (signatures, sequence numbers in every descriptor and data sector, CRC-32C).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::checksum::{checksum_matches, store_checksum};
use crate::guid::Guid;

/// Log sectors are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// The largest entry read into memory (a cap of this crate; QEMU's entries are a few sectors).
pub const MAX_ENTRY_LENGTH: u64 = 32 << 20;

/// The entry header (2.3.1.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawEntryHeader {
    /// `loge`.
    pub signature: [u8; 4],
    /// CRC-32C over the entry.
    pub checksum: U32,
    /// Bytes, a multiple of 4 KiB.
    pub entry_length: U32,
    /// Offset of the sequence's first entry in the log.
    pub tail: U32,
    /// Incremented between entries, non-zero.
    pub sequence_number: U64,
    /// Descriptors in the entry.
    pub descriptor_count: U32,
    /// Zero.
    pub reserved: U32,
    /// Must match the header's log GUID.
    pub log_guid: [u8; 16],
    /// A file size known stable when the entry was written.
    pub flushed_file_offset: U64,
    /// A file size all structures fit in.
    pub last_file_offset: U64,
}

/// A zero or data descriptor (2.3.1.2, 2.3.1.3): same 32-byte layout, fields named for the data descriptor.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawDescriptor {
    /// `zero` or `desc`.
    pub signature: [u8; 4],
    /// Data: the sector's last 4 bytes; zero: reserved.
    pub trailing_bytes: U32,
    /// Data: the sector's first 8 bytes; zero: the length to zero.
    pub leading_bytes: U64,
    /// Where the update goes, a multiple of 4 KiB.
    pub file_offset: U64,
    /// The entry's sequence number.
    pub sequence_number: U64,
}

/// One update an entry describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Write these 4 KiB at `file_offset`.
    Data {
        /// Target.
        file_offset: u64,
        /// The sector.
        sector: Vec<u8>,
    },
    /// Zero `length` bytes at `file_offset`.
    Zero {
        /// Target.
        file_offset: u64,
        /// Bytes, a multiple of 4 KiB.
        length: u64,
    },
}

/// A validated entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its header.
    pub header: RawEntryHeader,
    /// Its updates, in order.
    pub updates: Vec<Update>,
}

/// Descriptor sectors for `count` descriptors: the first sector holds the header and 126 descriptors.
pub fn descriptor_sectors(count: u64) -> u64 {
    (count + 2).div_ceil(128)
}

/// Builds an entry writing `sectors` (each `(file_offset, 4 KiB)`).
pub fn build_entry(
    sequence: u64,
    tail: u64,
    guid: Guid,
    flushed_file_offset: u64,
    last_file_offset: u64,
    sectors: &[(u64, Vec<u8>)],
) -> Vec<u8> {
    let count = sectors.len() as u64;
    let desc_sectors = descriptor_sectors(count);
    let length = (desc_sectors + count) * LOG_SECTOR;
    let mut out = vec![0u8; length as usize];
    let header = RawEntryHeader {
        signature: *b"loge",
        checksum: U32::new(0),
        entry_length: U32::new(length as u32),
        tail: U32::new(tail as u32),
        sequence_number: U64::new(sequence),
        descriptor_count: U32::new(count as u32),
        reserved: U32::new(0),
        log_guid: guid.0,
        flushed_file_offset: U64::new(flushed_file_offset),
        last_file_offset: U64::new(last_file_offset),
    };
    out[..64].copy_from_slice(header.as_bytes());
    for (i, (file_offset, sector)) in sectors.iter().enumerate() {
        let mut leading = [0u8; 8];
        leading.copy_from_slice(&sector[..8]);
        let mut trailing = [0u8; 4];
        trailing.copy_from_slice(&sector[4092..4096]);
        let desc = RawDescriptor {
            signature: *b"desc",
            trailing_bytes: U32::new(u32::from_le_bytes(trailing)),
            leading_bytes: U64::new(u64::from_le_bytes(leading)),
            file_offset: U64::new(*file_offset),
            sequence_number: U64::new(sequence),
        };
        let at = 64 + 32 * i;
        out[at..at + 32].copy_from_slice(desc.as_bytes());
        let data_at = ((desc_sectors + i as u64) * LOG_SECTOR) as usize;
        let data = &mut out[data_at..data_at + LOG_SECTOR as usize];
        data[..4].copy_from_slice(b"data");
        data[4..8].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
        data[8..4092].copy_from_slice(&sector[8..4092]);
        data[4092..].copy_from_slice(&(sequence as u32).to_le_bytes());
    }
    store_checksum(&mut out, 4);
    out
}

/// Reads an entry header from the first bytes of a log sector, if it could start a valid entry of a log of
/// `log_length` bytes with log GUID `guid` (the checks QEMU's `vhdx_log_hdr_is_valid` makes, and the tail's).
pub fn plausible_header(sector: &[u8], guid: Guid, log_length: u64) -> Option<RawEntryHeader> {
    let (header, _) = RawEntryHeader::read_from_prefix(sector).ok()?;
    let length = u64::from(header.entry_length.get());
    let tail = u64::from(header.tail.get());
    let ok = &header.signature == b"loge"
        && length > 0
        && length % LOG_SECTOR == 0
        && length <= log_length
        && length <= MAX_ENTRY_LENGTH
        && tail % LOG_SECTOR == 0
        && tail < log_length
        && header.sequence_number.get() != 0
        && Guid(header.log_guid) == guid
        && descriptor_sectors(u64::from(header.descriptor_count.get())) * LOG_SECTOR <= length;
    ok.then_some(header)
}

/// Validates a whole entry (its bytes in log order, already unwrapped) and returns its updates.
pub fn parse_entry(bytes: &[u8], guid: Guid, log_length: u64) -> Option<Entry> {
    let header = plausible_header(bytes, guid, log_length)?;
    if bytes.len() as u64 != u64::from(header.entry_length.get()) || !checksum_matches(bytes, 4) {
        return None;
    }
    let sequence = header.sequence_number.get();
    let count = u64::from(header.descriptor_count.get());
    let desc_sectors = descriptor_sectors(count);
    let mut data_index = desc_sectors;
    let mut updates = Vec::new();
    for i in 0..count {
        let at = (64 + 32 * i) as usize;
        let (desc, _) = RawDescriptor::read_from_prefix(bytes.get(at..)?).ok()?;
        let file_offset = desc.file_offset.get();
        if desc.sequence_number.get() != sequence || file_offset % LOG_SECTOR != 0 {
            return None;
        }
        match &desc.signature {
            b"zero" => {
                let length = desc.leading_bytes.get();
                if length % LOG_SECTOR != 0 {
                    return None;
                }
                updates.push(Update::Zero {
                    file_offset,
                    length,
                });
            }
            b"desc" => {
                let start = (data_index * LOG_SECTOR) as usize;
                let data = bytes.get(start..start + LOG_SECTOR as usize)?;
                let high = u32::from_le_bytes(data[4..8].try_into().ok()?);
                let low = u32::from_le_bytes(data[4092..4096].try_into().ok()?);
                if &data[..4] != b"data" || (u64::from(high) << 32 | u64::from(low)) != sequence {
                    return None;
                }
                let mut sector = vec![0u8; LOG_SECTOR as usize];
                sector[..8].copy_from_slice(&desc.leading_bytes.get().to_le_bytes());
                sector[8..4092].copy_from_slice(&data[8..4092]);
                sector[4092..].copy_from_slice(&desc.trailing_bytes.get().to_le_bytes());
                updates.push(Update::Data {
                    file_offset,
                    sector,
                });
                data_index += 1;
            }
            _ => return None,
        }
    }
    // 2.3.1: as many data sectors as data descriptors.
    if data_index * LOG_SECTOR != u64::from(header.entry_length.get()) {
        return None;
    }
    Some(Entry { header, updates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn entries_round_trip_and_detect_damage() {
        assert_eq!(size_of::<RawEntryHeader>(), 64);
        assert_eq!(size_of::<RawDescriptor>(), 32);
        assert_eq!(descriptor_sectors(0), 1);
        assert_eq!(descriptor_sectors(126), 1);
        assert_eq!(descriptor_sectors(127), 2);
        let guid = Guid::random();
        let mut sector = vec![0u8; 4096];
        for (i, b) in sector.iter_mut().enumerate() {
            *b = i as u8;
        }
        let bytes = build_entry(7, 0, guid, 1 << 20, 2 << 20, &[(2 << 20, sector.clone())]);
        assert_eq!(bytes.len(), 8192);
        let entry = parse_entry(&bytes, guid, 1 << 20).unwrap();
        assert_eq!(
            entry.updates,
            vec![Update::Data {
                file_offset: 2 << 20,
                sector
            }]
        );
        assert!(parse_entry(&bytes, Guid::random(), 1 << 20).is_none());
        let mut bad = bytes.clone();
        bad[5000] ^= 1;
        assert!(parse_entry(&bad, guid, 1 << 20).is_none());
        // A data sector with another sequence number (a torn write), checksum recomputed.
        let mut torn = bytes.clone();
        torn[4096 + 4092] ^= 1;
        store_checksum(&mut torn, 4);
        assert!(parse_entry(&torn, guid, 1 << 20).is_none());
    }
}
