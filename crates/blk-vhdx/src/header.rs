//! The header section (MS-VHDX 2.2): the file type identifier at 0 and the two headers at 64 KiB and 128 KiB,
//! the current one chosen by checksum and sequence number, updated in turn (2.2.2.1).

use blk_core::{HostFile, Result};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::checksum::{checksum_matches, store_checksum};
use crate::error::{corrupt, invalid_format, unsupported};
use crate::guid::Guid;

/// The file type identifier's signature (2.2.1).
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Where the two headers live (2.2.2).
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// A header's size on disk, the span its checksum covers.
pub const HEADER_SIZE: usize = 4096;
/// The header section: identifier, two headers, two region tables, reserved up to 1 MiB (2.1).
pub const HEADER_SECTION_END: u64 = 1 << 20;
/// 1 MiB: the alignment of regions, the log and blocks.
pub const MIB: u64 = 1 << 20;
/// The largest log this crate reads (a cap of its own: QEMU reads any length a u32 holds).
pub const MAX_LOG_LENGTH: u64 = 1 << 30;

/// A header's first 80 bytes (2.2.2); the other 4016 are reserved.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawHeader {
    /// `head`.
    pub signature: [u8; 4],
    /// CRC-32C over the 4 KiB header.
    pub checksum: U32,
    /// The header with the larger number is current.
    pub sequence_number: U64,
    /// Changed on the first header update of every writable open.
    pub file_write_guid: [u8; 16],
    /// Changed before the first user-visible change of every writable open.
    pub data_write_guid: [u8; 16],
    /// Non-zero when the log holds entries to replay.
    pub log_guid: [u8; 16],
    /// Must be 0.
    pub log_version: U16,
    /// Must be 1.
    pub version: U16,
    /// Bytes, a multiple of 1 MiB.
    pub log_length: U32,
    /// Bytes, a multiple of 1 MiB.
    pub log_offset: U64,
}

impl RawHeader {
    /// A header for a new image: sequence `sequence`, a log of `log_length` bytes at `log_offset`.
    pub fn new(sequence: u64, log_offset: u64, log_length: u32) -> RawHeader {
        RawHeader {
            signature: *b"head",
            checksum: U32::new(0),
            sequence_number: U64::new(sequence),
            file_write_guid: Guid::random().0,
            data_write_guid: Guid::random().0,
            log_guid: [0; 16],
            log_version: U16::new(0),
            version: U16::new(1),
            log_length: U32::new(log_length),
            log_offset: U64::new(log_offset),
        }
    }

    /// The 4 KiB on-disk form with its checksum.
    pub fn sector_bytes(&self) -> Vec<u8> {
        let mut sector = vec![0u8; HEADER_SIZE];
        let mut header = *self;
        header.checksum = U32::new(0);
        sector[..size_of::<RawHeader>()].copy_from_slice(header.as_bytes());
        store_checksum(&mut sector, 4);
        sector
    }

    /// The log GUID.
    pub fn log_guid(&self) -> Guid {
        Guid(self.log_guid)
    }

    /// The data write GUID (a differencing child's `parent_linkage`).
    pub fn data_write_guid(&self) -> Guid {
        Guid(self.data_write_guid)
    }
}

/// The two headers as read, and which one is current.
#[derive(Debug, Clone)]
pub struct Headers {
    /// The current header's content.
    pub current: RawHeader,
    /// Its slot: 0 (64 KiB) or 1 (128 KiB).
    pub current_slot: usize,
}

/// Parses one header slot; `None` when its signature or checksum is wrong (the other header may be good).
fn parse_slot(sector: &[u8]) -> Option<RawHeader> {
    let (header, _) = RawHeader::read_from_prefix(sector).ok()?;
    if &header.signature != b"head" || !checksum_matches(sector, 4) {
        return None;
    }
    Some(header)
}

impl Headers {
    /// Reads the file identifier and both headers, and picks the current one: of the valid headers, the one
    /// with the larger sequence number (2.2.2).
    pub fn read(file: &HostFile) -> Result<Headers> {
        let len = file.len()?;
        if len < HEADER_SECTION_END {
            return Err(invalid_format(
                0,
                format!("the file is {len} bytes long, shorter than the 1 MiB header section"),
            ));
        }
        let mut signature = [0u8; 8];
        file.read_exact_at(0, &mut signature)?;
        if &signature != FILE_SIGNATURE {
            return Err(invalid_format(
                0,
                "no VHDX file type identifier ('vhdxfile')",
            ));
        }
        let mut slots = [None, None];
        for (slot, &offset) in HEADER_OFFSETS.iter().enumerate() {
            let mut sector = vec![0u8; HEADER_SIZE];
            file.read_exact_at(offset, &mut sector)?;
            slots[slot] = parse_slot(&sector);
        }
        let (current_slot, current) = match slots {
            [Some(a), Some(b)] => {
                if b.sequence_number.get() > a.sequence_number.get() {
                    (1, b)
                } else {
                    (0, a)
                }
            }
            [Some(a), None] => (0, a),
            [None, Some(b)] => (1, b),
            [None, None] => {
                return Err(corrupt(
                    HEADER_OFFSETS[0],
                    "neither VHDX header is valid (bad signature or checksum)",
                ))
            }
        };
        let offset = HEADER_OFFSETS[current_slot];
        let headers = Headers {
            current,
            current_slot,
        };
        headers.validate(offset)?;
        Ok(headers)
    }

    /// The checks of 2.2.2 on the current header.
    fn validate(&self, offset: u64) -> Result<()> {
        let h = &self.current;
        if h.version.get() != 1 {
            return Err(unsupported(
                offset + 66,
                format!("VHDX version {} (only version 1 exists)", h.version.get()),
            ));
        }
        let log_offset = h.log_offset.get();
        let log_length = u64::from(h.log_length.get());
        if !h.log_guid().is_zero() && h.log_version.get() != 0 {
            return Err(unsupported(
                offset + 64,
                format!(
                    "log version {} (only version 0 exists)",
                    h.log_version.get()
                ),
            ));
        }
        if log_offset % MIB != 0 || log_offset < HEADER_SECTION_END {
            return Err(corrupt(
                offset + 72,
                format!("the log offset {log_offset:#x} is not a multiple of 1 MiB past the header section"),
            ));
        }
        if log_length % MIB != 0 {
            return Err(corrupt(
                offset + 68,
                format!("the log length {log_length} is not a multiple of 1 MiB"),
            ));
        }
        if log_length > MAX_LOG_LENGTH {
            return Err(unsupported(
                offset + 68,
                format!("the log is {log_length} bytes, more than this implementation's cap of {MAX_LOG_LENGTH}"),
            ));
        }
        Ok(())
    }

    /// The log's place in the file: `(offset, length)`.
    pub fn log_region(&self) -> (u64, u64) {
        (
            self.current.log_offset.get(),
            u64::from(self.current.log_length.get()),
        )
    }

    /// Writes `change`d header content over the non-current slot with the next sequence number, flushes, and
    /// makes it current (2.2.2.1).
    pub fn update(&mut self, file: &HostFile, change: impl FnOnce(&mut RawHeader)) -> Result<()> {
        let mut next = self.current;
        change(&mut next);
        next.sequence_number = U64::new(self.current.sequence_number.get().wrapping_add(1));
        let slot = 1 - self.current_slot;
        file.write_all_at(HEADER_OFFSETS[slot], &next.sector_bytes())?;
        file.sync_data()?;
        self.current = next;
        self.current_slot = slot;
        Ok(())
    }

    /// [`update`](Headers::update) twice, so both slots hold the new content, as the spec recommends and QEMU
    /// does.
    pub fn update_both(&mut self, file: &HostFile, change: impl Fn(&mut RawHeader)) -> Result<()> {
        self.update(file, &change)?;
        self.update(file, &change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn header_layout_matches_the_spec() {
        // 2.2.2: 4+4+8+16*3+2+2+4+8 bytes of fields.
        assert_eq!(size_of::<RawHeader>(), 80);
        let h = RawHeader::new(5, 1 << 20, 1 << 20);
        let sector = h.sector_bytes();
        assert_eq!(&sector[0..4], b"head");
        assert_eq!(u64::from_le_bytes(sector[8..16].try_into().unwrap()), 5);
        assert_eq!(u16::from_le_bytes([sector[66], sector[67]]), 1);
        assert_eq!(
            u32::from_le_bytes(sector[68..72].try_into().unwrap()),
            1 << 20
        );
        assert_eq!(
            u64::from_le_bytes(sector[72..80].try_into().unwrap()),
            1 << 20
        );
        assert!(checksum_matches(&sector, 4));
        assert!(parse_slot(&sector).is_some());
        let mut bad = sector.clone();
        bad[200] = 1;
        assert!(parse_slot(&bad).is_none());
    }
}
