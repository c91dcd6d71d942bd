//! Differencing disks' parents: decoding the parent locators (VHD spec, "Parent Locator Entries" and the
//! dynamic header's "Parent Unique ID" / "Parent Unicode Name"), opening the parent through the caller's
//! [`ImageOpener`], and checking its identity.
//!
//! Locators are tried in the order `W2ru` (relative Windows path, UTF-16LE), `W2ku` (absolute Windows path,
//! UTF-16LE), `MacX` (a `file://` URL, UTF-8), `Mac ` (UTF-8), then the parent's unicode name. Backslashes
//! become slashes; relative names are relative to the child's directory. The parent is opened only through
//! the opener, read-only, with format `vpc`; then its footer is read from the same path (read-only, unlocked:
//! the opener's handle holds the lock) to compare its unique id with the child's record.

use std::path::{Path, PathBuf};

use blk_core::{
    resolve_relative_to, DiskFile, Error, ErrorKind, HostFile, HostOpenOptions, ImageOpener,
    LockMode, NamedImage, NamedImageRole, Result,
};

use crate::bat::Region;
use crate::dynamic_header::{DynamicHeader, ParentLocatorEntry};
use crate::footer::{format_uuid, Footer, FOOTER_SIZE};
use crate::FORMAT_NAME;

/// blk's cap on one parent locator's data: 64 KiB (a path of 32 Ki UTF-16 units).
pub const MAX_LOCATOR_BYTES: u32 = 64 << 10;

/// `W2ru`: relative Windows path, UTF-16LE.
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// `W2ku`: absolute Windows path, UTF-16LE.
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// `MacX`: a file URL, UTF-8.
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");
/// `Mac `: a Mac OS alias, taken as UTF-8 text.
pub const PLATFORM_MAC: u32 = u32::from_be_bytes(*b"Mac ");

/// The parent a differencing disk was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    /// The name as recorded in the locator that was used.
    pub recorded: String,
    /// The resolved path that was opened.
    pub path: PathBuf,
}

/// The validated data regions of the header's parent locators (platform code not 0, data within the file and
/// the cap). Locators failing validation are skipped (and reported by `check`).
pub fn locator_regions(header: &DynamicHeader, file_len: u64) -> Vec<Region> {
    header
        .parent_locators
        .iter()
        .filter(|l| locator_is_valid(l, file_len))
        .map(|l| {
            let start = l.platform_data_offset.get();
            Region {
                start,
                end: start + u64::from(l.platform_data_length.get()),
                what: "parent locator data",
            }
        })
        .collect()
}

/// Whether a locator is in use and its data lies within the file and the cap.
pub fn locator_is_valid(l: &ParentLocatorEntry, file_len: u64) -> bool {
    let len = l.platform_data_length.get();
    l.platform_code.get() != 0
        && len > 0
        && len <= MAX_LOCATOR_BYTES
        && l.platform_data_offset
            .get()
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= file_len)
}

fn decode_utf16le(data: &[u8]) -> Option<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path a locator's data names, or `None` when it does not decode.
pub fn decode_locator(platform: u32, data: &[u8]) -> Option<String> {
    let text = match platform {
        PLATFORM_W2RU | PLATFORM_W2KU => decode_utf16le(data)?.replace('\\', "/"),
        PLATFORM_MACX => {
            let text = std::str::from_utf8(data).ok()?.trim_end_matches('\0');
            let path = text
                .strip_prefix("file://localhost")
                .or_else(|| text.strip_prefix("file://"))?;
            percent_decode(path)
        }
        PLATFORM_MAC => std::str::from_utf8(data)
            .ok()?
            .trim_end_matches('\0')
            .to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The candidate parent names, in the order they are tried.
fn candidates(file: &HostFile, header: &DynamicHeader, file_len: u64) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for platform in [PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX, PLATFORM_MAC] {
        for l in header.parent_locators.iter() {
            if l.platform_code.get() != platform || !locator_is_valid(l, file_len) {
                continue;
            }
            // Bounded by MAX_LOCATOR_BYTES.
            let mut data = vec![0u8; l.platform_data_length.get() as usize];
            file.read_exact_at(l.platform_data_offset.get(), &mut data)?;
            if let Some(name) = decode_locator(platform, &data) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    let unicode = header.parent_name();
    if !unicode.is_empty() && !names.contains(&unicode) {
        names.push(unicode);
    }
    Ok(names)
}

/// Reads a VHD's footer from `path` (at 0 for sparse disks, else at the end) for its unique id.
pub fn read_footer_at_path(path: &Path) -> Result<Footer> {
    let options = HostOpenOptions {
        read_only: true,
        direct: false,
        lock: LockMode::None,
    };
    let file = HostFile::open(path, options)?;
    let len = file.len()?;
    if len < FOOTER_SIZE {
        return Err(
            Error::new(ErrorKind::InvalidFormat, "too small for a VHD image").with_path(path),
        );
    }
    let mut bytes = [0u8; 512];
    file.read_exact_at(0, &mut bytes)?;
    let copy = Footer::parse(&bytes);
    if copy.validate(0).is_ok() {
        return Ok(copy);
    }
    file.read_exact_at(len - FOOTER_SIZE, &mut bytes)?;
    let footer = Footer::parse(&bytes);
    footer
        .validate(len - FOOTER_SIZE)
        .map_err(|e| e.with_path(path))?;
    Ok(footer)
}

/// Finds and opens the parent of the differencing disk at `child_path`.
pub fn open_parent(
    child_path: &Path,
    file: &HostFile,
    header: &DynamicHeader,
    child_footer: &Footer,
    file_len: u64,
    opener: &dyn ImageOpener,
) -> Result<(Box<dyn DiskFile>, ParentInfo)> {
    let names = candidates(file, header, file_len)?;
    if names.is_empty() {
        return Err(Error::new(
            ErrorKind::CorruptImage,
            "differencing disk without a parent locator or parent name",
        ));
    }
    let own = std::fs::canonicalize(child_path).ok();
    let mut not_found = Vec::new();
    for name in names {
        // Components drop the `.` of `./parent.vhd` (a W2ru locator's usual form).
        let path: PathBuf = resolve_relative_to(child_path, Path::new(&name))
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        if own.is_some() && std::fs::canonicalize(&path).ok() == own {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!("parent loop: the differencing disk names itself ('{name}') as its parent"),
            ));
        }
        let request = NamedImage {
            path: path.clone(),
            format: Some(FORMAT_NAME.to_string()),
            role: NamedImageRole::Parent,
            read_only: true,
            depth: 1,
        };
        let disk = match opener.open_named(&request) {
            Ok(disk) => disk,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                not_found.push(path.display().to_string());
                continue;
            }
            Err(e) => {
                return Err(Error::new(
                    e.kind(),
                    format!("cannot open the parent '{}': {e}", path.display()),
                )
                .with_source(e))
            }
        };
        let parent_footer = read_footer_at_path(&path)?;
        if parent_footer.unique_id == child_footer.unique_id {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "parent loop: the parent '{}' has the differencing disk's own unique id {}",
                    path.display(),
                    format_uuid(&child_footer.unique_id)
                ),
            ));
        }
        if parent_footer.unique_id != header.parent_unique_id {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "parent '{}' has unique id {}, but the differencing disk expects {}",
                    path.display(),
                    format_uuid(&parent_footer.unique_id),
                    format_uuid(&header.parent_unique_id)
                ),
            )
            .with_offset(40));
        }
        return Ok((
            disk,
            ParentInfo {
                recorded: name,
                path,
            },
        ));
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!("parent not found (tried {})", not_found.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_locators() {
        let utf16: Vec<u8> = ".\\dir\\p.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(
            decode_locator(PLATFORM_W2RU, &utf16).unwrap(),
            "./dir/p.vhd"
        );
        assert_eq!(
            decode_locator(PLATFORM_MACX, b"file://localhost/a%20b/p.vhd\0").unwrap(),
            "/a b/p.vhd"
        );
        assert_eq!(
            decode_locator(PLATFORM_MACX, b"file:///x.vhd").unwrap(),
            "/x.vhd"
        );
        assert_eq!(decode_locator(PLATFORM_MACX, b"/x.vhd"), None);
        assert_eq!(decode_locator(0, b"x"), None);
        assert_eq!(decode_locator(PLATFORM_W2KU, &[0, 0]), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
