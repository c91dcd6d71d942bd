//! `ImageAdmin::amend`: `qemu-img amend -o ...` (QEMU's `qcow2_amend_options`) for the options blk can change in
//! place: `compat` (upgrade to 1.1; downgrade to 0.10, zero clusters expanded), `lazy_refcounts`,
//! `refcount_bits` (the refcount structure rebuilt with the new width, as QEMU's
//! `qcow2_change_refcount_order`), LUKS key slots of an encrypted image (`encrypt.state`, `encrypt.new-secret`,
//! `encrypt.old-secret`, `encrypt.keyslot`, `encrypt.iter-time`: see `encryption::key_slot_amend`). Creation-only options and the backing file (QEMU: use `rebase`) are
//! refused with QEMU's messages; `size` is the caller's (a resize after the amend).

use blk_core::{parse_bool_param, Error, ErrorKind, Result};

use crate::bitmaps::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use crate::encryption::key_slot_amend::{KeySlotAmendment, AMEND_KEYS as KEY_SLOT_KEYS};
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
    /// LUKS key slot changes (`encrypt.state`, `encrypt.new-secret`, ...).
    key_slots: Option<KeySlotAmendment>,
}

fn parse(options: &[(String, String)], encrypted: bool) -> Result<Amendment> {
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
            k if KEY_SLOT_KEYS.contains(&k) => {
                if !encrypted {
                    return Err(invalid(
                        "Can't amend encryption options - encryption not present",
                    ));
                }
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
    a.key_slots = KeySlotAmendment::parse(options)?;
    Ok(a)
}

/// Applies `qemu-img amend -o` options (`size` excluded: resize the image after this) to the image, which
/// must be open writable with no guest I/O running. Everything is checked first; the header cluster is then
/// rewritten once (and the backing file changed), so a failure changes nothing.
pub(crate) fn amend(image: &Qcow2, options: &[(String, String)], force: bool) -> Result<()> {
    let encryption = image.shared.encryption.as_deref();
    let a = parse(options, encryption.is_some())?;
    let mut meta = image.lock_metadata();
    if let (Some(key_slots), Some(encryption)) = (&a.key_slots, encryption) {
        key_slots.apply(&image.shared.file, encryption, force)?;
    }
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
    }
    // The width the image has once amended (a downgrade needs 16 bits).
    let target_bits = a.refcount_bits.unwrap_or(refcount_bits);
    let lazy = a
        .lazy_refcounts
        .unwrap_or(header.compatible & COMPAT_LAZY_REFCOUNTS != 0);
    if version < 3 && a.lazy_refcounts == Some(true) {
        return Err(invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
        ));
    }
    if version == 2 && header.version >= 3 {
        check_downgrade(&meta, target_bits)?;
    }
    if target_bits != refcount_bits {
        change_refcount_order(image, &mut meta, target_bits.trailing_zeros())?;
        header.refcount_order = meta.header.refcount_order;
        header.refcount_table_offset = meta.header.refcount_table_offset;
        header.refcount_table_clusters = meta.header.refcount_table_clusters;
    }
    if version == 2 && header.version >= 3 {
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
    // Deferred refcount blocks (lazy refcounts) on disk before a header that may no longer say dirty.
    meta.flush_all(&image.shared.file)?;
    rewrite_header(image, &mut meta, header)
}

/// QEMU's `qcow2_downgrade` preconditions that blk checks rather than fixes (`refcount_bits`: the width the
/// image will have).
fn check_downgrade(meta: &Metadata, refcount_bits: u64) -> Result<()> {
    let h = &meta.header;
    if refcount_bits != 16 {
        return Err(invalid("compat=0.10 requires refcount_bits=16"));
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

/// Where the header keeps the refcount table's offset (u64) and clusters (u32); the refcount order (u32) is
/// at `REFCOUNT_ORDER_FIELD`, in the same 52 bytes, so one write switches all three.
const REFTABLE_FIELDS: u64 = 48;
const REFCOUNT_ORDER_FIELD: u64 = 96;

/// Rebuilds the refcount structure with refcounts `2^order` bits wide (QEMU's `qcow2_change_refcount_order`),
/// keeping every refcount: refused first, with QEMU's message and nothing written, when one does not fit the
/// new width. New refcount blocks and a new table are written after the used end of the file, describing
/// themselves (refcount 1) and the old blocks and table as free; synced; then one header write switches the
/// width and the table; the old structures are then free clusters (not discarded, as QEMU's
/// `pass-discard-other` is off by default).
fn change_refcount_order(image: &Qcow2, meta: &mut Metadata, order: u32) -> Result<()> {
    use crate::image::header::{MAX_HOST_OFFSET, MAX_REFTABLE_BYTES};
    use crate::metadata::overlap::IGNORE_NONE;
    use crate::metadata::refcount::{block_set, REFTABLE_OFFSET_MASK};

    let file = &image.shared.file;
    meta.flush_all(file)?;
    let cs = meta.g.cluster_size;
    let max = if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    };
    let start = meta.file_end.div_ceil(cs);
    for c in 0..start {
        let refcount = meta.refcount(file, c)?;
        if refcount > max {
            return Err(invalid(format!(
                "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} has a refcount of {refcount}",
                1u64 << order,
                c * cs
            )));
        }
    }
    let old_table = (
        meta.header.refcount_table_offset / cs,
        u64::from(meta.header.refcount_table_clusters),
    );
    let mut old_blocks: Vec<u64> = meta
        .refcount_table
        .iter()
        .map(|e| (e & REFTABLE_OFFSET_MASK) / cs)
        .filter(|&c| c != 0)
        .collect();
    old_blocks.sort_unstable();
    let is_old = |c: u64| {
        (c >= old_table.0 && c < old_table.0 + old_table.1) || old_blocks.binary_search(&c).is_ok()
    };
    // The new blocks at `start`, the table after them, together described by the blocks.
    let rb_entries = (cs * 8) >> order;
    let mut blocks = 1u64;
    let (table_clusters, end) = loop {
        let table_clusters = (blocks * 8).div_ceil(cs);
        let end = start + blocks + table_clusters;
        let needed = end.div_ceil(rb_entries);
        if needed <= blocks {
            break (table_clusters, end);
        }
        blocks = needed;
    };
    if table_clusters * cs > MAX_REFTABLE_BYTES || end.saturating_mul(cs) >= MAX_HOST_OFFSET {
        return Err(invalid(
            "the refcount structure for the new width would exceed QEMU's limits",
        ));
    }
    let mut table = vec![0u64; (table_clusters * cs / 8) as usize];
    let mut block = vec![0u8; cs as usize];
    for (j, slot) in table.iter_mut().enumerate().take(blocks as usize) {
        block.fill(0);
        let first = j as u64 * rb_entries;
        for c in first..(first + rb_entries).min(end) {
            let refcount = if c >= start {
                1
            } else if is_old(c) {
                0
            } else {
                meta.refcount(file, c)?
            };
            block_set(&mut block, c - first, order, refcount);
        }
        let at = (start + j as u64) * cs;
        meta.guard_write(file, IGNORE_NONE, at, cs)?;
        file.write_all_at(at, &block)?;
        *slot = at;
    }
    let table_at = (start + blocks) * cs;
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
    meta.guard_write(file, IGNORE_NONE, table_at, bytes.len() as u64)?;
    file.write_all_at(table_at, &bytes)?;
    file.sync_data()?;
    // One write of header bytes 48..100: the table's offset and clusters, then (unchanged) the snapshot and
    // feature fields as on disk, then the refcount order.
    let mut fields = [0u8; (REFCOUNT_ORDER_FIELD + 4 - REFTABLE_FIELDS) as usize];
    file.read_exact_at(REFTABLE_FIELDS, &mut fields)?;
    fields[..8].copy_from_slice(&table_at.to_be_bytes());
    fields[8..12].copy_from_slice(&(table_clusters as u32).to_be_bytes());
    let order_at = (REFCOUNT_ORDER_FIELD - REFTABLE_FIELDS) as usize;
    fields[order_at..].copy_from_slice(&order.to_be_bytes());
    file.write_all_at(REFTABLE_FIELDS, &fields)?;
    file.sync_data()?;
    meta.header.refcount_table_offset = table_at;
    meta.header.refcount_table_clusters = table_clusters as u32;
    meta.header.refcount_order = order;
    meta.g.refcount_order = order;
    meta.g.rb_entries = rb_entries;
    meta.refcount_table = table;
    meta.rb_cache.clear();
    meta.refcount_table_changed();
    meta.reset_allocator();
    meta.file_end = end * cs;
    meta.host_len = meta.host_len.max(end * cs);
    Ok(())
}
