//! Header extensions: backing format, feature name table, external data file, bitmaps, crypto header, and
//! unknown ones (kept byte for byte so a rewritten header loses nothing).

use blk_core::{Error, ErrorKind, Result};

/// End of the extension area.
pub(crate) const EXT_END: u32 = 0;
/// Backing file format name.
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table.
pub(crate) const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Full disk encryption header pointer.
pub(crate) const EXT_CRYPTO: u32 = 0x0537_be77;
/// External data file name.
pub(crate) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// QEMU's cap on the backing format extension (it must fit a 16-byte buffer with its terminator).
const MAX_BACKING_FORMAT: usize = 15;

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub(crate) kind: u8,
    /// Bit number.
    pub(crate) bit: u8,
    /// The name (up to 46 bytes).
    pub(crate) name: String,
}

/// The parsed extension area.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// The backing file's format, if recorded.
    pub(crate) backing_format: Option<String>,
    /// The feature name table.
    pub(crate) feature_names: Vec<FeatureName>,
    /// Whether a feature name table was present (rewritten as read).
    pub(crate) has_feature_table: bool,
    /// Whether an external data file is named.
    pub(crate) data_file: bool,
    /// The external data file's name, as recorded.
    pub(crate) data_file_name: Option<String>,
    /// Whether a crypto header is present.
    pub(crate) crypto: bool,
    /// Every other extension (bitmaps included), `(type, data)`, kept verbatim in order.
    pub(crate) other: Vec<(u32, Vec<u8>)>,
}

fn corrupt(message: String, offset: u64) -> Error {
    Error::new(ErrorKind::InvalidFormat, message).with_offset(offset)
}

impl Extensions {
    /// Parses extensions from `area`, the bytes of cluster 0 from `start` (the header length) to `end` (the
    /// backing file name, or the cluster end).
    pub(crate) fn parse(area: &[u8], start: u64) -> Result<Extensions> {
        let mut ext = Extensions::default();
        let mut pos = 0usize;
        loop {
            let Some(head) = area.get(pos..pos + 8) else {
                // QEMU stops at the end of the area without an end marker.
                return Ok(ext);
            };
            let kind = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let at = start + pos as u64;
            if kind == EXT_END {
                return Ok(ext);
            }
            let data = area.get(pos + 8..pos + 8 + len).ok_or_else(|| {
                corrupt(
                    format!("header extension {kind:#x} of {len} bytes overruns the header area"),
                    at,
                )
            })?;
            match kind {
                EXT_BACKING_FORMAT => {
                    if len > MAX_BACKING_FORMAT {
                        return Err(corrupt(
                            format!(
                                "ERROR: ext_backing_format: len={len} too large (>={})",
                                MAX_BACKING_FORMAT + 1
                            ),
                            at,
                        ));
                    }
                    ext.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_NAMES => {
                    ext.has_feature_table = true;
                    for entry in data.chunks_exact(48) {
                        let name = &entry[2..];
                        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                        ext.feature_names.push(FeatureName {
                            kind: entry[0],
                            bit: entry[1],
                            name: String::from_utf8_lossy(&name[..end]).into_owned(),
                        });
                    }
                }
                EXT_DATA_FILE => {
                    ext.data_file = true;
                    ext.data_file_name = Some(String::from_utf8_lossy(data).into_owned());
                    ext.other.push((kind, data.to_vec()));
                }
                EXT_CRYPTO => {
                    ext.crypto = true;
                    ext.other.push((kind, data.to_vec()));
                }
                _ => ext.other.push((kind, data.to_vec())),
            }
            pos += 8 + len.div_ceil(8) * 8;
        }
    }

    /// Serializes the extensions (backing format, crypto header, data file name, feature names, then the
    /// others in order) with the end marker, as QEMU orders them.
    pub(crate) fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |kind: u32, data: &[u8]| {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(8) * 8, 0);
        };
        if let Some(format) = &self.backing_format {
            push(EXT_BACKING_FORMAT, format.as_bytes());
        }
        // QEMU's order: crypto header and data file name before the feature table, the rest after it.
        let early = |kind: u32| kind == EXT_CRYPTO || kind == EXT_DATA_FILE;
        for kind in [EXT_CRYPTO, EXT_DATA_FILE] {
            for (k, data) in self.other.iter().filter(|(k, _)| *k == kind) {
                push(*k, data);
            }
        }
        if self.has_feature_table {
            let mut table = Vec::new();
            for f in &self.feature_names {
                let mut entry = [0u8; 48];
                entry[0] = f.kind;
                entry[1] = f.bit;
                let name = f.name.as_bytes();
                let n = name.len().min(46);
                entry[2..2 + n].copy_from_slice(&name[..n]);
                table.extend_from_slice(&entry);
            }
            push(EXT_FEATURE_NAMES, &table);
        }
        for (kind, data) in self.other.iter().filter(|(k, _)| !early(*k)) {
            push(*kind, data);
        }
        push(EXT_END, &[]);
        out
    }

    /// The feature name table QEMU writes into new images.
    pub(crate) fn qemu_feature_table() -> Vec<FeatureName> {
        crate::image::features::QEMU_FEATURE_TABLE
            .iter()
            .map(|&(kind, bit, name)| FeatureName {
                kind,
                bit,
                name: name.to_string(),
            })
            .collect()
    }
}
