//! `ImageAdmin::amend`: `qemu-img amend -o ...` (QEMU's `qcow2_amend_options`) for the options blk can change in
//! place: `compat` (upgrade to 1.1; downgrade to 0.10, zero clusters expanded), `lazy_refcounts`,
//! `refcount_bits` (only to its current width). Creation-only options and the backing file (QEMU: use
//! `rebase`) are refused with QEMU's messages; `size` is the caller's (a resize after the amend).

use blk_core::{parse_bool_param, Error, ErrorKind, Result};

use crate::bitmaps::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use crate::image::extensions::Extensions;
use crate::image::features::{COMPAT_LAZY_REFCOUNTS, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2};
use crate::image::header::{V2_HEADER_SIZE, V3_HEADER_SIZE};
use crate::image::header_update::rewrite_header;
use crate::image::Qcow2;
use crate::metadata::tables::{COPIED, L1_OFFSET_MASK, L2_OFFSET_MASK, ZERO};
use crate::metadata::Metadata;

/// Options only `create` takes (QEMU: "This option is only supported for image creation").
const CREATION_ONLY: &[&str] = &[
    "cluster_size",
    "preallocation",
    "extended_l2",
    "compression_type",
    "encryption",
];

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsupportedFeature, message)
}

/// What an amend asks for, parsed and checked before anything changes.
#[derive(Debug, Default)]
struct Amendment {
    version: Option<u32>,
    lazy_refcounts: Option<bool>,
    refcount_bits: Option<u64>,
}

fn parse(options: &[(String, String)]) -> Result<Amendment> {
    let mut a = Amendment::default();
    for (key, value) in options {
        match key.as_str() {
            "compat" => {
                a.version = Some(match value.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => return Err(invalid(format!("Unknown compatibility level {value}"))),
                })
            }
            "lazy_refcounts" => a.lazy_refcounts = Some(parse_bool_param(key, value)?),
            "refcount_bits" => {
                a.refcount_bits = Some(value.parse().map_err(|_| {
                    invalid(format!(
                        "Parameter 'refcount_bits' expects a number, not '{value}'"
                    ))
                })?)
            }
            "backing_file" | "backing_fmt" => {
                return Err(invalid(
                    "Cannot amend the backing file. You can use 'qemu-img rebase' instead.",
                ))
            }
            k if k.starts_with("encrypt.") && k != "encrypt.format" => {
                // The image is not encrypted (blk opens no encrypted image).
                return Err(invalid(
                    "Can't amend encryption options - encryption not present",
                ));
            }
            k if CREATION_ONLY.contains(&k) || k.starts_with("encrypt.") => {
                return Err(invalid(format!(
                    "Invalid parameter '{k}': this option is only supported for image creation"
                )))
            }
            "data_file" | "data_file_raw" => {
                return Err(unsupported(format!("blk cannot amend '{key}'")))
            }
            _ => return Err(invalid(format!("Invalid parameter '{key}'"))),
        }
    }
    Ok(a)
}

/// Applies `qemu-img amend -o` options (`size` excluded: resize the image after this) to the image, which
/// must be open writable with no guest I/O running. Everything is checked first; the header cluster is then
/// rewritten once (and the backing file changed), so a failure changes nothing.
pub(crate) fn amend(image: &Qcow2, options: &[(String, String)]) -> Result<()> {
    let a = parse(options)?;
    let mut meta = image.lock_metadata();
    let mut header = meta.header.clone();
    let version = a.version.unwrap_or(header.version);
    let refcount_bits = 1u64 << header.refcount_order;
    if let Some(bits) = a.refcount_bits {
        if !bits.is_power_of_two() || bits > 64 {
            return Err(invalid(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if version < 3 && bits != 16 {
            return Err(invalid(
                "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
            ));
        }
        if bits != refcount_bits {
            return Err(unsupported(format!(
                "blk cannot change refcount_bits ({refcount_bits} to {bits})"
            )));
        }
    }
    let lazy = a
        .lazy_refcounts
        .unwrap_or(header.compatible & COMPAT_LAZY_REFCOUNTS != 0);
    if version < 3 && a.lazy_refcounts == Some(true) {
        return Err(invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
        ));
    }
    if version == 2 && header.version >= 3 {
        check_downgrade(&meta, refcount_bits)?;
        expand_zero_clusters(image, &mut meta)?;
        header.version = 2;
        header.header_length = V2_HEADER_SIZE as u32;
        header.incompatible = 0;
        header.compatible = 0;
        header.autoclear = 0;
        header.compression_type = 0;
        header.extensions.feature_names.clear();
        header.extensions.has_feature_table = false;
    } else if version == 3 && header.version < 3 {
        header.version = 3;
        header.header_length = V3_HEADER_SIZE as u32;
        // As a new v3 image: QEMU writes the feature name table when it fits next to a backing file name.
        if image.shared.geometry.cluster_size > 4096 {
            header.extensions.feature_names = Extensions::qemu_feature_table();
            header.extensions.has_feature_table = true;
        }
    }
    if header.version >= 3 {
        if lazy {
            header.compatible |= COMPAT_LAZY_REFCOUNTS;
        } else {
            header.compatible &= !COMPAT_LAZY_REFCOUNTS;
        }
    }
    if header == meta.header {
        return Ok(());
    }
    rewrite_header(image, &mut meta, header)
}

/// QEMU's `qcow2_downgrade` preconditions that blk checks rather than fixes.
fn check_downgrade(meta: &Metadata, refcount_bits: u64) -> Result<()> {
    let h = &meta.header;
    if refcount_bits != 16 {
        return Err(invalid(
            "Cannot downgrade an image with refcount_bits != 16 (blk cannot change refcount_bits)",
        ));
    }
    if h.incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(invalid("Cannot downgrade an image with a data file"));
    }
    if h.incompatible & INCOMPAT_EXTL2 != 0 {
        return Err(invalid(
            "Cannot downgrade an image with extended L2 entries",
        ));
    }
    if h.compression_type != 0 {
        return Err(invalid(
            "Cannot downgrade an image with zstd compression type",
        ));
    }
    if h.autoclear & AUTOCLEAR_BITMAPS != 0
        && h.extensions
            .other
            .iter()
            .any(|(kind, _)| *kind == EXT_BITMAPS)
    {
        return Err(invalid("Cannot downgrade an image with bitmaps"));
    }
    if h.nb_snapshots > 0 {
        return Err(unsupported(
            "blk cannot downgrade an image with internal snapshots",
        ));
    }
    Ok(())
}

/// v2 has no zero flag: QEMU's `qcow2_expand_zero_clusters` for the active L2 tables (the image has no
/// internal snapshots, [`check_downgrade`] refuses them). A zero cluster with a host cluster keeps it, zeroed;
/// one without becomes unallocated when no backing file shows through, else gets a new host cluster of zeros.
fn expand_zero_clusters(image: &Qcow2, meta: &mut Metadata) -> Result<()> {
    let file = &image.shared.file;
    let g = image.shared.geometry.clone();
    let has_backing = meta
        .header
        .backing_file
        .as_ref()
        .is_some_and(|name| !name.is_empty());
    let clusters = g.size.div_ceil(g.cluster_size);
    // The cluster size is at most 2 MiB (checked at open).
    let zeros = vec![0u8; g.cluster_size as usize];
    for l1_index in 0..g.l1_size {
        let l1_entry = meta.l1.get(l1_index as usize).copied().unwrap_or(0);
        if l1_entry & L1_OFFSET_MASK == 0 {
            continue;
        }
        let first = l1_index * g.l2_entries;
        for gc in first..(first + g.l2_entries).min(clusters) {
            let entry = meta.l2_entry(file, gc)?;
            if entry & ZERO == 0 {
                continue;
            }
            let host = match entry & L2_OFFSET_MASK {
                0 if !has_backing => {
                    meta.set_l2_entry(file, gc, 0)?;
                    continue;
                }
                0 => meta.allocate_clusters(file, 1)?,
                host => host,
            };
            file.write_all_at(host, &zeros)?;
            // Without snapshots every host cluster has refcount 1.
            meta.set_l2_entry(file, gc, host | COPIED)?;
        }
    }
    meta.flush(file)?;
    file.sync_data()
}
