//! The parent locator of a differencing image (MS-VHDX 2.6.2.6): the VHDX locator type and its key-value
//! pairs `parent_linkage`, `parent_linkage2`, `relative_path`, `volume_path`, `absolute_win32_path`.

use blk_core::Result;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{corrupt, unsupported};
use crate::guid::Guid;

/// The VHDX parent locator type, B04AEFB7-D19E-4A81-B789-25B8E9445913 (2.6.2.6.3).
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// The locator header (2.6.2.6.1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawLocatorHeader {
    locator_type: [u8; 16],
    reserved: U16,
    key_value_count: U16,
}

/// A key-value entry (2.6.2.6.2).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawLocatorEntry {
    key_offset: U32,
    value_offset: U32,
    key_length: U16,
    value_length: U16,
}

/// A parsed VHDX parent locator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// The key-value pairs, in file order.
    pub entries: Vec<(String, String)>,
}

fn utf16(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

impl ParentLocator {
    /// A locator naming a parent by its data write GUID and a relative path (written with `\`).
    pub fn new(
        parent_linkage: Guid,
        relative_path: &str,
        absolute_path: Option<&str>,
    ) -> ParentLocator {
        let mut entries = vec![
            ("parent_linkage".to_string(), parent_linkage.braced()),
            (
                "relative_path".to_string(),
                relative_path.replace('/', "\\"),
            ),
        ];
        if let Some(absolute) = absolute_path {
            entries.push(("absolute_win32_path".to_string(), absolute.to_string()));
        }
        ParentLocator { entries }
    }

    /// Parses the item at file offset `at` (for error messages).
    pub fn parse(item: &[u8], at: u64) -> Result<ParentLocator> {
        let Ok((header, _)) = RawLocatorHeader::read_from_prefix(item) else {
            return Err(corrupt(at, "the parent locator is shorter than its header"));
        };
        if Guid(header.locator_type) != VHDX_LOCATOR_TYPE {
            return Err(unsupported(
                at,
                format!(
                    "parent locator type {:?} is not the VHDX locator type",
                    Guid(header.locator_type)
                ),
            ));
        }
        let count = usize::from(header.key_value_count.get());
        let mut entries = Vec::new();
        for i in 0..count {
            let entry_at = 20 + 12 * i;
            let Some(Ok((entry, _))) = item.get(entry_at..).map(RawLocatorEntry::read_from_prefix)
            else {
                return Err(corrupt(
                    at + entry_at as u64,
                    "parent locator entry outside the item",
                ));
            };
            let field = |offset: u32, length: u16| {
                let start = offset as usize;
                let end = start + usize::from(length);
                if offset == 0 || length == 0 {
                    return None;
                }
                item.get(start..end).and_then(utf16)
            };
            let (Some(key), Some(value)) = (
                field(entry.key_offset.get(), entry.key_length.get()),
                field(entry.value_offset.get(), entry.value_length.get()),
            ) else {
                return Err(corrupt(
                    at + entry_at as u64,
                    "parent locator key or value empty, outside the item or not UTF-16",
                ));
            };
            if entries.iter().any(|(k, _): &(String, String)| *k == key) {
                return Err(corrupt(
                    at + entry_at as u64,
                    format!("parent locator key '{key}' appears twice"),
                ));
            }
            entries.push((key, value));
        }
        let locator = ParentLocator { entries };
        if locator.parent_linkage().is_none() {
            return Err(corrupt(
                at,
                "the parent locator has no valid parent_linkage GUID",
            ));
        }
        if locator.paths().is_empty() {
            return Err(corrupt(at, "the parent locator names no parent path"));
        }
        Ok(locator)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `parent_linkage` as a GUID.
    pub fn parent_linkage(&self) -> Option<Guid> {
        self.get("parent_linkage").and_then(Guid::parse)
    }

    /// `parent_linkage2` as a GUID.
    pub fn parent_linkage2(&self) -> Option<Guid> {
        self.get("parent_linkage2").and_then(Guid::parse)
    }

    /// The paths to try, in the spec's order: relative_path, volume_path, absolute_win32_path (2.6.2.6.3).
    pub fn paths(&self) -> Vec<(&'static str, &str)> {
        ["relative_path", "volume_path", "absolute_win32_path"]
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
            .collect()
    }

    /// The on-disk item.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header_len = 20 + 12 * self.entries.len();
        let mut strings: Vec<u8> = Vec::new();
        let mut raw_entries = Vec::new();
        let encode =
            |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect() };
        for (key, value) in &self.entries {
            let k = encode(key);
            let v = encode(value);
            let key_offset = header_len + strings.len();
            strings.extend_from_slice(&k);
            let value_offset = header_len + strings.len();
            strings.extend_from_slice(&v);
            raw_entries.push(RawLocatorEntry {
                key_offset: U32::new(key_offset as u32),
                value_offset: U32::new(value_offset as u32),
                key_length: U16::new(k.len() as u16),
                value_length: U16::new(v.len() as u16),
            });
        }
        let header = RawLocatorHeader {
            locator_type: VHDX_LOCATOR_TYPE.0,
            reserved: U16::new(0),
            key_value_count: U16::new(self.entries.len() as u16),
        };
        let mut out = header.as_bytes().to_vec();
        for entry in &raw_entries {
            out.extend_from_slice(entry.as_bytes());
        }
        out.extend_from_slice(&strings);
        out
    }
}

/// Turns a Windows-style relative path from the locator into a host path (`\` separators become `/`).
pub fn host_relative_path(windows: &str) -> String {
    windows.replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_round_trips() {
        let linkage = Guid::random();
        let locator =
            ParentLocator::new(linkage, "base/parent.vhdx", Some("\\\\?\\c:\\parent.vhdx"));
        let bytes = locator.to_bytes();
        assert_eq!(&bytes[..16], &VHDX_LOCATOR_TYPE.0);
        let back = ParentLocator::parse(&bytes, 0).unwrap();
        assert_eq!(back, locator);
        assert_eq!(back.parent_linkage(), Some(linkage));
        assert_eq!(back.get("relative_path"), Some("base\\parent.vhdx"));
        assert_eq!(back.paths().len(), 2);
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(
            ParentLocator::parse(&bad, 0).unwrap_err().kind(),
            blk_core::ErrorKind::UnsupportedFeature
        );
        assert!(ParentLocator::parse(&bytes[..30], 0).is_err());
    }
}
