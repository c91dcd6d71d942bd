//! [`Vhd::create`]: new fixed, dynamic and differencing images laid out as `qemu-img create -f vpc` lays them
//! out (footer, header, BAT byte for byte but the time stamp and unique id).
//!
//! Dynamic (VHD spec, "Dynamic Disk Header Format"; QEMU's `create_dynamic_disk`): footer copy at 0, dynamic
//! header at 512, BAT at 1536 (all 0xFFFFFFFF, padded to 512 bytes), footer after it; 2 MiB blocks.
//! Fixed: the data (a hole) followed by the footer. Differencing (QEMU cannot make these): as dynamic, with the
//! parent's unique id, time stamp and name in the header, and three parent locators (`W2ku` absolute and `W2ru`
//! relative in UTF-16LE, `MacX` a `file://` URL in UTF-8) stored between the header and the BAT, each padded to
//! 512 bytes, so the BAT still ends where QEMU expects the first block.

use std::path::{Path, PathBuf};

use blk_core::{
    resolve_relative_to, Error, ErrorKind, HostFile, HostOpenOptions, ImageOpener, NamedImage,
    NamedImageRole, Operation, Result,
};
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::dynamic_header::{DynamicHeader, ParentLocatorEntry};
use crate::footer::{random_uuid, vhd_timestamp_now, DiskType, Footer, VHD_EPOCH};
use crate::geometry::{uses_current_size, Geometry};
use crate::options::{Subformat, VhdCreateOptions};
use crate::parent::{read_footer_at_path, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU};
use crate::vhd::Vhd;
use crate::FORMAT_NAME;

/// The block size QEMU gives dynamic disks: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// Offset of the first structure after the footer copy and the dynamic header.
const AFTER_HEADER: u64 = 1536;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

fn round_up_512(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

/// What a differencing disk records about its parent.
struct ParentRecord {
    unique_id: [u8; 16],
    timestamp: u32,
    name: String,
    locators: Vec<(u32, Vec<u8>)>,
}

impl Vhd {
    /// Creates (overwrites) the image at `path` as `options` say. With a `backing_file`, the parent is opened
    /// through `opener` (read-only, format `vpc`) for its size, and its footer read from the same path for its
    /// unique id and geometry.
    ///
    /// Sizes round up to a CHS-representable size as qemu-img does (1 GiB becomes 1073995776 bytes) unless
    /// `force_size`; more than 2040 GiB fails with [`ErrorKind::InvalidInput`].
    pub fn create(
        path: impl AsRef<Path>,
        options: &VhdCreateOptions,
        opener: &dyn ImageOpener,
    ) -> Result<()> {
        let path = path.as_ref();
        create_image(path, options, opener).map_err(|e| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Create)
        })
    }
}

fn create_image(path: &Path, options: &VhdCreateOptions, opener: &dyn ImageOpener) -> Result<()> {
    if let Some(backing) = &options.backing_file {
        return create_differencing(path, backing, options, opener);
    }
    let size = options
        .size
        .ok_or_else(|| invalid("Image creation needs a size parameter"))?;
    let (geometry, sectors) = Geometry::rounded_for_size(size, options.force_size)
        .ok_or_else(|| invalid("The image size is too large for file format 'vpc'"))?;
    let total = sectors * 512;
    let disk_type = match options.subformat {
        Subformat::Dynamic => DiskType::Dynamic,
        Subformat::Fixed => DiskType::Fixed,
    };
    let footer = Footer::new(
        disk_type,
        total,
        geometry,
        options.force_size,
        random_uuid(),
        vhd_timestamp_now(),
    );
    let file = HostFile::create(path, HostOpenOptions::default())?;
    if disk_type == DiskType::Fixed {
        file.set_len(total + 512)?;
        file.write_all_at(total, footer.as_bytes())?;
    } else {
        write_sparse(&file, &footer, sectors, None)?;
    }
    file.sync_data()
}

/// Writes footer copy, header (with the parent's record), locators, BAT and end footer.
fn write_sparse(
    file: &HostFile,
    footer: &Footer,
    sectors: u64,
    parent: Option<&ParentRecord>,
) -> Result<()> {
    let entries = sectors.div_ceil(u64::from(DEFAULT_BLOCK_SIZE) / 512);
    let entries = u32::try_from(entries).map_err(|_| invalid("disk too large"))?;
    let mut at = AFTER_HEADER;
    let mut locator_entries = Vec::new();
    if let Some(parent) = parent {
        for (platform, data) in &parent.locators {
            let space = round_up_512(data.len() as u64);
            file.write_all_at(at, data)?;
            locator_entries.push(ParentLocatorEntry {
                platform_code: U32::new(*platform),
                platform_data_space: U32::new(space as u32),
                platform_data_length: U32::new(data.len() as u32),
                reserved: U32::new(0),
                platform_data_offset: U64::new(at),
            });
            at += space;
        }
    }
    let mut header = DynamicHeader::new(at, entries, DEFAULT_BLOCK_SIZE);
    if let Some(parent) = parent {
        header.parent_unique_id = parent.unique_id;
        header.parent_timestamp = U32::new(parent.timestamp);
        header.set_parent_name(&parent.name);
        for (slot, entry) in header.parent_locators.iter_mut().zip(locator_entries) {
            *slot = entry;
        }
        header.update_checksum();
    }
    let bat_bytes = round_up_512(u64::from(entries) * 4);
    // Bounded: entries <= 2040 GiB / 2 MiB, a 4 MiB table at most.
    let bat = vec![0xffu8; bat_bytes as usize];
    file.write_all_at(0, footer.as_bytes())?;
    file.write_all_at(512, header.as_bytes())?;
    file.write_all_at(at, &bat)?;
    file.write_all_at(at + bat_bytes, footer.as_bytes())
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The relative locator for `backing` as the user named it (relative to the child's directory).
fn relative_name(backing: &str, absolute: &Path, child: &Path) -> Option<String> {
    if !Path::new(backing).is_absolute() {
        let windows = backing.replace('/', "\\");
        return Some(if windows.starts_with('.') {
            windows
        } else {
            format!(".\\{windows}")
        });
    }
    let child_dir = child.parent().and_then(|d| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    })?;
    (absolute.parent() == Some(child_dir.as_path()))
        .then(|| {
            absolute
                .file_name()
                .map(|n| format!(".\\{}", n.to_string_lossy()))
        })
        .flatten()
}

fn create_differencing(
    path: &Path,
    backing: &str,
    options: &VhdCreateOptions,
    opener: &dyn ImageOpener,
) -> Result<()> {
    let resolved = resolve_relative_to(path, Path::new(backing));
    let request = NamedImage {
        path: resolved.clone(),
        format: Some(FORMAT_NAME.to_string()),
        role: NamedImageRole::Parent,
        read_only: true,
        depth: 1,
    };
    let parent = opener.open_named(&request)?;
    let size = parent.logical_size();
    drop(parent);
    if let Some(requested) = options.size {
        if requested != size {
            return Err(invalid(format!(
                "a differencing disk has its parent's size ({size} bytes), not {requested}"
            )));
        }
    }
    let parent_footer = read_footer_at_path(&resolved)?;
    let absolute: PathBuf = std::fs::canonicalize(&resolved).unwrap_or(resolved.clone());
    let mtime = std::fs::metadata(&resolved)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().saturating_sub(VHD_EPOCH) as u32)
        .unwrap_or(0);
    let mut locators = vec![(PLATFORM_W2KU, utf16le(&absolute.to_string_lossy()))];
    if let Some(relative) = relative_name(backing, &absolute, path) {
        locators.push((PLATFORM_W2RU, utf16le(&relative)));
    }
    locators.push((PLATFORM_MACX, file_url(&absolute).into_bytes()));
    let record = ParentRecord {
        unique_id: parent_footer.unique_id,
        timestamp: mtime,
        name: absolute
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        locators,
    };
    // The child shows the parent's size: same geometry, and the size from the footer when the parent's is.
    let force = uses_current_size(&parent_footer);
    let mut footer = Footer::new(
        DiskType::Differencing,
        size,
        parent_footer.geometry(),
        force,
        random_uuid(),
        vhd_timestamp_now(),
    );
    if !force && parent_footer.geometry().sectors() * 512 != size {
        footer.creator_app = *b"qem2";
        footer.update_checksum();
    }
    let file = HostFile::create(path, HostOpenOptions::default())?;
    write_sparse(&file, &footer, size / 512, Some(&record))?;
    file.sync_data()
}
