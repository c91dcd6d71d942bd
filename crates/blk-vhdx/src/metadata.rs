//! The metadata region (MS-VHDX 2.6): a 64 KiB table of items, and the known items (2.6.2): file parameters,
//! virtual disk size, virtual disk ID (page 83 data), logical and physical sector sizes, parent locator.

use blk_core::{HostFile, Result};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{corrupt, unsupported};
use crate::guid::Guid;
use crate::parent_locator::ParentLocator;
use crate::region::Region;

/// The metadata table's size at the start of the region (2.6.1).
pub const TABLE_SIZE: usize = 64 << 10;
/// The most entries a table may hold (2.6.1.1).
const MAX_ENTRIES: u16 = 2047;
/// The largest item (2.6.1.2).
const MAX_ITEM: u32 = 1 << 20;
/// Block sizes the spec allows (2.6.2.1).
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// The largest virtual disk (2.6.2.2): 64 TiB.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// File Parameters, CAA16737-FA36-4D43-B3B6-33F0AA44E76B.
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual Disk Size, 2FA54224-CD1B-4876-B211-5DBED83BF4B8.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Virtual Disk ID (page 83 data), BECA12AB-B2E6-4523-93EF-C309E000C746.
pub const PAGE_83_DATA: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical Sector Size, 8141BF1D-A96F-4709-BA47-F233A8FAAB5F.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical Sector Size, CDA348C7-445D-4471-9CC9-E9885251C556.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent Locator, A8D35F2D-B30B-454D-ABF7-D3D84834AB0C.
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

/// Entry flag: user metadata.
pub const FLAG_IS_USER: u32 = 1;
/// Entry flag: virtual disk metadata.
pub const FLAG_IS_VIRTUAL_DISK: u32 = 2;
/// Entry flag: must be understood.
pub const FLAG_IS_REQUIRED: u32 = 4;

/// File parameters flag: leave blocks allocated (a fixed image).
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// File parameters flag: the image has a parent.
pub const HAS_PARENT: u32 = 2;

/// The metadata table header (2.6.1.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawMetadataHeader {
    /// `metadata`.
    pub signature: [u8; 8],
    /// Zero.
    pub reserved: U16,
    /// Entries that follow, at most 2047.
    pub entry_count: U16,
    /// Zero.
    pub reserved2: [u8; 20],
}

/// A metadata table entry (2.6.1.2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawMetadataEntry {
    /// What the item is.
    pub item_id: [u8; 16],
    /// Offset from the region start, at least 64 KiB (or 0 with length 0).
    pub offset: U32,
    /// Bytes, at most 1 MiB.
    pub length: U32,
    /// `FLAG_*` bits.
    pub flags: U32,
    /// Zero.
    pub reserved2: U32,
}

/// What the metadata says about the disk.
#[derive(Debug, Clone)]
pub struct DiskParameters {
    /// Payload block size.
    pub block_size: u32,
    /// File parameter flags ([`LEAVE_BLOCKS_ALLOCATED`], [`HAS_PARENT`]).
    pub file_flags: u32,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The virtual disk ID.
    pub page_83: Guid,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// The parent, for a differencing image.
    pub parent_locator: Option<ParentLocator>,
}

impl DiskParameters {
    /// Whether the image is a differencing image.
    pub fn has_parent(&self) -> bool {
        self.file_flags & HAS_PARENT != 0
    }
}

fn u32_item(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

fn u64_item(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Reads and validates the metadata region.
pub fn read_metadata(file: &HostFile, region: Region) -> Result<DiskParameters> {
    let base = region.offset;
    // The region is at most 4 GiB - 1 MiB (a u32 length); items lie in it, but only its first
    // 64 KiB + 2047 items of at most 1 MiB matter: read the table, then each item on its own.
    let mut table = vec![0u8; TABLE_SIZE.min(region.length as usize)];
    file.read_exact_at(base, &mut table)?;
    let Ok((header, _)) = RawMetadataHeader::read_from_prefix(&table[..]) else {
        return Err(corrupt(
            base,
            "the metadata region is shorter than its table",
        ));
    };
    if &header.signature != b"metadata" {
        return Err(corrupt(
            base,
            "bad metadata table signature (expected 'metadata')",
        ));
    }
    let count = header.entry_count.get();
    if count > MAX_ENTRIES {
        return Err(corrupt(
            base + 10,
            format!("the metadata table has {count} entries, more than 2047"),
        ));
    }
    let mut entries: Vec<(RawMetadataEntry, u64)> = Vec::new();
    for i in 0..count as usize {
        let at = 32 + 32 * i;
        let entry_offset = base + at as u64;
        let Some(Ok((entry, _))) = table.get(at..).map(RawMetadataEntry::read_from_prefix) else {
            return Err(corrupt(entry_offset, "metadata entry outside the table"));
        };
        let (offset, length) = (entry.offset.get(), entry.length.get());
        let ok = if length == 0 {
            offset == 0
        } else {
            length <= MAX_ITEM
                && offset as usize >= TABLE_SIZE
                && u64::from(offset) + u64::from(length) <= region.length
        };
        if !ok {
            return Err(corrupt(
                entry_offset + 16,
                format!("metadata item {:?} at {offset:#x}, {length} bytes, lies outside the metadata region's item area", Guid(entry.item_id)),
            ));
        }
        for (other, _) in &entries {
            if other.item_id == entry.item_id
                && (other.flags.get() & FLAG_IS_USER) == (entry.flags.get() & FLAG_IS_USER)
            {
                return Err(corrupt(
                    entry_offset,
                    format!("metadata item {:?} appears twice", Guid(entry.item_id)),
                ));
            }
            let (o2, l2) = (other.offset.get(), other.length.get());
            if length > 0
                && l2 > 0
                && u64::from(offset) < u64::from(o2) + u64::from(l2)
                && u64::from(o2) < u64::from(offset) + u64::from(length)
            {
                return Err(corrupt(
                    entry_offset + 16,
                    format!(
                        "metadata item {:?} overlaps item {:?}",
                        Guid(entry.item_id),
                        Guid(other.item_id)
                    ),
                ));
            }
        }
        entries.push((entry, entry_offset));
    }
    let mut found: [Option<(Vec<u8>, u64)>; 6] = Default::default();
    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        PAGE_83_DATA,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    for (entry, entry_offset) in &entries {
        let guid = Guid(entry.item_id);
        let is_user = entry.flags.get() & FLAG_IS_USER != 0;
        match known.iter().position(|k| *k == guid) {
            Some(i) if !is_user => {
                let mut bytes = vec![0u8; entry.length.get() as usize];
                file.read_exact_at(base + u64::from(entry.offset.get()), &mut bytes)?;
                found[i] = Some((bytes, *entry_offset));
            }
            _ if entry.flags.get() & FLAG_IS_REQUIRED != 0 => {
                return Err(unsupported(
                    *entry_offset,
                    format!("unknown required metadata item {guid:?}"),
                ));
            }
            _ => {}
        }
    }
    let [fp, vs, p83, lss, pss, pl] = found;
    let missing = |name: &str| {
        corrupt(
            base,
            format!("the required metadata item '{name}' is missing"),
        )
    };
    let bad = |offset: u64, what: String| corrupt(offset, what);
    let (fp, fp_at) = fp.ok_or_else(|| missing("file parameters"))?;
    let block_size =
        u32_item(&fp).ok_or_else(|| bad(fp_at, "file parameters item too short".into()))?;
    let file_flags = fp
        .get(4..8)
        .and_then(u32_item)
        .ok_or_else(|| bad(fp_at, "file parameters item too short".into()))?;
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(bad(
            fp_at,
            format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
        ));
    }
    let (vs, vs_at) = vs.ok_or_else(|| missing("virtual disk size"))?;
    let virtual_size =
        u64_item(&vs).ok_or_else(|| bad(vs_at, "virtual disk size item too short".into()))?;
    let (p83, p83_at) = p83.ok_or_else(|| missing("virtual disk id"))?;
    let page_83 = Guid(
        p83.get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad(p83_at, "virtual disk id item too short".into()))?,
    );
    let (lss, lss_at) = lss.ok_or_else(|| missing("logical sector size"))?;
    let logical_sector_size =
        u32_item(&lss).ok_or_else(|| bad(lss_at, "logical sector size item too short".into()))?;
    let (pss, pss_at) = pss.ok_or_else(|| missing("physical sector size"))?;
    let physical_sector_size =
        u32_item(&pss).ok_or_else(|| bad(pss_at, "physical sector size item too short".into()))?;
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(bad(
            lss_at,
            format!("logical sector size {logical_sector_size} is neither 512 nor 4096"),
        ));
    }
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(bad(
            pss_at,
            format!("physical sector size {physical_sector_size} is neither 512 nor 4096"),
        ));
    }
    if virtual_size % u64::from(logical_sector_size) != 0 || virtual_size > MAX_DISK_SIZE {
        return Err(bad(vs_at, format!("virtual disk size {virtual_size} is not a multiple of the sector size up to 64 TiB")));
    }
    let parent_locator = if file_flags & HAS_PARENT != 0 {
        let (pl, pl_at) = pl.ok_or_else(|| missing("parent locator"))?;
        Some(ParentLocator::parse(&pl, pl_at)?)
    } else {
        None
    };
    Ok(DiskParameters {
        block_size,
        file_flags,
        virtual_size,
        page_83,
        logical_sector_size,
        physical_sector_size,
        parent_locator,
    })
}

/// Builds the metadata region's first bytes (table + items) as QEMU lays them out: the table, then at 64 KiB the
/// file parameters, virtual disk size, page 83 data, logical and physical sector sizes, then (for a
/// differencing image) the parent locator.
pub fn build_metadata(params: &DiskParameters) -> Vec<u8> {
    let mut items: Vec<(Guid, u32, Vec<u8>)> = Vec::new();
    let mut fp = params.block_size.to_le_bytes().to_vec();
    fp.extend_from_slice(&params.file_flags.to_le_bytes());
    items.push((FILE_PARAMETERS, FLAG_IS_REQUIRED, fp));
    items.push((
        VIRTUAL_DISK_SIZE,
        FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
        params.virtual_size.to_le_bytes().to_vec(),
    ));
    items.push((
        PAGE_83_DATA,
        FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
        params.page_83.0.to_vec(),
    ));
    items.push((
        LOGICAL_SECTOR_SIZE,
        FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
        params.logical_sector_size.to_le_bytes().to_vec(),
    ));
    items.push((
        PHYSICAL_SECTOR_SIZE,
        FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
        params.physical_sector_size.to_le_bytes().to_vec(),
    ));
    if let Some(locator) = &params.parent_locator {
        items.push((PARENT_LOCATOR, FLAG_IS_REQUIRED, locator.to_bytes()));
    }
    let total: usize = items.iter().map(|(_, _, b)| b.len()).sum();
    let mut out = vec![0u8; TABLE_SIZE + total];
    let header = RawMetadataHeader {
        signature: *b"metadata",
        reserved: U16::new(0),
        entry_count: U16::new(items.len() as u16),
        reserved2: [0; 20],
    };
    out[..32].copy_from_slice(header.as_bytes());
    let mut offset = TABLE_SIZE;
    for (i, (guid, flags, bytes)) in items.iter().enumerate() {
        let entry = RawMetadataEntry {
            item_id: guid.0,
            offset: U32::new(offset as u32),
            length: U32::new(bytes.len() as u32),
            flags: U32::new(*flags),
            reserved2: U32::new(0),
        };
        out[32 + 32 * i..64 + 32 * i].copy_from_slice(entry.as_bytes());
        out[offset..offset + bytes.len()].copy_from_slice(bytes);
        offset += bytes.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn structures_have_the_spec_sizes() {
        assert_eq!(size_of::<RawMetadataHeader>(), 32);
        assert_eq!(size_of::<RawMetadataEntry>(), 32);
        // QEMU's first item, the file parameters, sits at 64 KiB with 8 bytes.
        let params = DiskParameters {
            block_size: 8 << 20,
            file_flags: 0,
            virtual_size: 64 << 20,
            page_83: Guid::random(),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent_locator: None,
        };
        let bytes = build_metadata(&params);
        assert_eq!(&bytes[..8], b"metadata");
        assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 5);
        assert_eq!(&bytes[32..48], &FILE_PARAMETERS.0);
        assert_eq!(
            u32::from_le_bytes(bytes[48..52].try_into().unwrap()),
            64 << 10
        );
        assert_eq!(u32::from_le_bytes(bytes[52..56].try_into().unwrap()), 8);
        assert_eq!(
            u32::from_le_bytes(bytes[56..60].try_into().unwrap()),
            FLAG_IS_REQUIRED
        );
        assert_eq!(
            u32::from_le_bytes(bytes[65536..65540].try_into().unwrap()),
            8 << 20
        );
    }
}
