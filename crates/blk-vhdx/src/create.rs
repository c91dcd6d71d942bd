//! [`Vhdx::create`]: a new image laid out as QEMU lays it out (MS-VHDX 2.1): file identifier, headers at 64 and
//! 128 KiB, region tables at 192 and 256 KiB, the log at 1 MiB, then the BAT, the metadata region, and data
//! 5 MiB past the BAT's end.

use std::path::Path;

use blk_core::{
    resolve_relative_to, Error, HostFile, HostOpenOptions, ImageOpener, NamedImage, NamedImageRole,
    Operation, Result,
};

use crate::bat::{self, Geometry, PAYLOAD_FULLY_PRESENT, PAYLOAD_ZERO};
use crate::guid::Guid;
use crate::header::{RawHeader, FILE_SIGNATURE, HEADER_OFFSETS, HEADER_SECTION_END, MIB};
use crate::metadata::{build_metadata, DiskParameters, HAS_PARENT, LEAVE_BLOCKS_ALLOCATED};
use crate::options::{Subformat, VhdxCreateOptions};
use crate::parent::read_data_write_guid;
use crate::parent_locator::ParentLocator;
use crate::region::{build_table, Region, REGION_TABLE_OFFSETS};
use crate::vhdx::Vhdx;
use crate::FORMAT_NAME;

/// What the parent of a new differencing image gives it.
struct ParentFacts {
    size: u64,
    sector_size: u32,
    locator: ParentLocator,
}

fn parent_facts(path: &Path, name: &str, opener: &dyn ImageOpener) -> Result<ParentFacts> {
    let parent_path = resolve_relative_to(path, Path::new(name));
    let disk = opener.open_named(&NamedImage {
        path: parent_path.clone(),
        format: Some(FORMAT_NAME.to_string()),
        role: NamedImageRole::Parent,
        read_only: true,
        depth: 1,
    })?;
    let guid = read_data_write_guid(&parent_path)?;
    Ok(ParentFacts {
        size: disk.logical_size(),
        sector_size: disk.topology().logical_block_size,
        locator: ParentLocator::new(guid, name, None),
    })
}

impl Vhdx {
    /// Creates (overwrites) the image at `path`; with `backing_file`, a differencing image whose parent is
    /// opened through `opener` (read-only, format `vhdx`) for its size, sector size and data write GUID.
    pub fn create(
        path: impl AsRef<Path>,
        options: &VhdxCreateOptions,
        opener: &dyn ImageOpener,
    ) -> Result<()> {
        let path = path.as_ref();
        let ctx = |e: Error| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Create)
        };
        let mut options = options.clone();
        options.normalize().map_err(ctx)?;
        let parent = match &options.backing_file {
            Some(name) => Some(parent_facts(path, name, opener).map_err(ctx)?),
            None => None,
        };
        if let Some(p) = &parent {
            options.logical_sector_size = p.sector_size;
            if options.size.is_none() {
                options.size = Some(p.size);
            }
        }
        let size = options.size.unwrap_or(0);
        write_image(path, &options, size, parent).map_err(ctx)
    }
}

fn write_image(
    path: &Path,
    options: &VhdxCreateOptions,
    size: u64,
    parent: Option<ParentFacts>,
) -> Result<()> {
    let block_size = match options.block_size {
        0 => VhdxCreateOptions::auto_block_size(size),
        b => b,
    };
    let has_parent = parent.is_some();
    let geometry = Geometry::from_sizes(
        size,
        block_size,
        u64::from(options.logical_sector_size),
        has_parent,
    );
    let log = Region {
        offset: HEADER_SECTION_END,
        length: options.log_size,
    };
    let bat_region = Region {
        offset: log.end().div_ceil(MIB) * MIB,
        length: (geometry.bat_bytes().div_ceil(MIB) * MIB).max(MIB),
    };
    let metadata_region = Region {
        offset: bat_region.end(),
        length: MIB,
    };
    let data_offset = bat_region.end() + 5 * MIB;

    let file = HostFile::create(path, HostOpenOptions::default())?;
    let mut identifier = FILE_SIGNATURE.to_vec();
    let creator = format!("blk v{}", env!("CARGO_PKG_VERSION"));
    identifier.extend(creator.encode_utf16().flat_map(u16::to_le_bytes));
    file.write_all_at(0, &identifier)?;

    let sequence = u64::from(u32::from_le_bytes(
        Guid::random().0[..4].try_into().unwrap_or([0; 4]),
    ));
    let log_length = u32::try_from(log.length).unwrap_or(u32::MAX);
    let mut header = RawHeader::new(sequence, log.offset, log_length);
    file.write_all_at(HEADER_OFFSETS[0], &header.sector_bytes())?;
    header.sequence_number = (sequence + 1).into();
    file.write_all_at(HEADER_OFFSETS[1], &header.sector_bytes())?;

    let table = build_table(bat_region, metadata_region);
    for offset in REGION_TABLE_OFFSETS {
        file.write_all_at(offset, &table)?;
    }

    let mut flags = 0;
    if options.subformat == Subformat::Fixed {
        flags |= LEAVE_BLOCKS_ALLOCATED;
    }
    if has_parent {
        flags |= HAS_PARENT;
    }
    let params = DiskParameters {
        block_size: u32::try_from(block_size).unwrap_or(u32::MAX),
        file_flags: flags,
        virtual_size: size,
        page_83: Guid::random(),
        logical_sector_size: options.logical_sector_size,
        physical_sector_size: options.physical_sector_size,
        parent_locator: parent.map(|p| p.locator),
    };
    file.write_all_at(metadata_region.offset, &build_metadata(&params))?;

    let fixed = options.subformat == Subformat::Fixed;
    let state = if has_parent {
        None
    } else if options.block_state_zero {
        Some(PAYLOAD_ZERO)
    } else if fixed {
        Some(PAYLOAD_FULLY_PRESENT)
    } else {
        None
    };
    let file_len = if fixed {
        data_offset + geometry.data_blocks * block_size
    } else {
        data_offset
    };
    file.set_len(file_len)?;
    if let Some(state) = state {
        let mut bat = vec![0u8; geometry.bat_bytes() as usize];
        for block in 0..geometry.data_blocks {
            let offset = if state == PAYLOAD_FULLY_PRESENT {
                data_offset + block * block_size
            } else {
                0
            };
            let at = geometry.payload_index(block) * 8;
            bat[at..at + 8].copy_from_slice(&bat::entry(state, offset).to_le_bytes());
        }
        file.write_all_at(bat_region.offset, &bat)?;
    }
    file.sync_data()
}
