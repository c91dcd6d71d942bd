//! Creating an image ([`Qcow2::create`](crate::Qcow2::create)): a new image laid out as `qemu-img create` does (header in cluster 0, refcount table
//! from cluster 1, refcount blocks, then the L1 table), with qemu's preallocation modes. Preallocation leaves
//! every subcluster bitmap 0, as qemu-img does.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    DenyNamedImages, Error, ErrorKind, HostFile, HostOpenOptions, ImageOpener, NamedImage,
    NamedImageRole, Operation, Result,
};

use crate::image::backing::backing_path;
use crate::image::extensions::{Extensions, FeatureName, EXT_DATA_FILE};
use crate::image::features::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE,
    INCOMPAT_EXTL2,
};
use crate::image::header::{Header, MAX_L1_BYTES, V2_HEADER_SIZE, V3_HEADER_SIZE};
use crate::image::options::{CompressionType, Preallocation, Qcow2CreateOptions, Qcow2OpenOptions};
use crate::image::Qcow2;
use crate::metadata::refcount::block_set;
use crate::metadata::tables::{set_entry, COPIED};
use crate::FORMAT_NAME;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Creates (overwrites) a qcow2 image at `path` ([`Qcow2::create`](crate::Qcow2::create)).
pub(crate) fn create(
    path: &Path,
    options: &Qcow2CreateOptions,
    opener: &dyn ImageOpener,
) -> Result<()> {
    create_impl(path, options, opener).map_err(|e| {
        e.with_format(FORMAT_NAME)
            .with_path(path)
            .with_operation(Operation::Create)
    })
}

fn create_impl(path: &Path, o: &Qcow2CreateOptions, opener: &dyn ImageOpener) -> Result<()> {
    let size = match (o.size, &o.backing_file) {
        (Some(size), _) => size,
        (None, Some(name)) => {
            let backing = opener.open_named(&NamedImage {
                path: backing_path(path, name),
                format: o.backing_format.clone(),
                role: NamedImageRole::Backing,
                read_only: true,
                depth: 1,
            })?;
            backing.logical_size()
        }
        (None, None) => return Err(invalid("Image creation needs a size parameter")),
    };
    // qemu-img's own limit, also for library callers that skip the CLI's size parsing (the rounding below
    // cannot overflow under it).
    if size > i64::MAX as u64 {
        return Err(invalid("Image size must be less than 8 EiB!"));
    }
    let size = size.div_ceil(512) * 512;
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    let cluster_bits = cs.trailing_zeros();
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    let refcount_order = o.refcount_bits.trailing_zeros();
    let l2_entries = cs / if o.extended_l2 { 16 } else { 8 };
    let l1_size = size.div_ceil(cs).div_ceil(l2_entries);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(invalid("Image size is too large for this cluster size"));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    // A LUKS header (made before the layout: its size depends on the key length) in clusters after the L1
    // table, as QEMU allocates them.
    let luks = match &o.encryption {
        Some(e) => Some(crate::encryption::key_slots::new_header(
            e.cipher,
            e.hash,
            e.secret.bytes(),
            e.iter_time_ms,
        )?),
        None => None,
    };
    let luks_len = luks.as_ref().map_or(0, |area| area.len() as u64);
    let luks_clusters = luks_len.div_ceil(cs);
    let rb_entries = (cs * 8) >> refcount_order;
    // Refcount table at cluster 1, blocks after it, L1 after them; grow until everything is described.
    let (mut table_clusters, mut blocks) = (1u64, 1u64);
    loop {
        let total = 1 + table_clusters + blocks + l1_clusters + luks_clusters;
        let need_blocks = total.div_ceil(rb_entries);
        let need_table = (need_blocks * 8).div_ceil(cs);
        if need_blocks == blocks && need_table == table_clusters {
            break;
        }
        blocks = need_blocks.max(blocks);
        table_clusters = need_table.max(table_clusters);
    }
    // qemu's order: header, refcount table, the first refcount block, the L1 table, further refcount blocks.
    let l1_offset = (2 + table_clusters) * cs;
    let block_at = |b: u64| {
        if b == 0 {
            (1 + table_clusters) * cs
        } else {
            (1 + table_clusters + 1 + l1_clusters + luks_clusters + (b - 1)) * cs
        }
    };
    let luks_offset = (2 + table_clusters + l1_clusters) * cs;
    let total = 1 + table_clusters + blocks + l1_clusters + luks_clusters;
    let v3 = o.version >= 3;
    let zstd = o.compression_type == CompressionType::Zstd;
    let header = Header {
        version: o.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: if luks.is_some() {
            crate::encryption::CRYPT_LUKS
        } else {
            0
        },
        l1_size: l1_size as u32,
        // An empty image has no L1 table (QEMU records offset 0).
        l1_table_offset: if l1_size == 0 { 0 } else { l1_offset },
        refcount_table_offset: cs,
        refcount_table_clusters: table_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: if zstd { INCOMPAT_COMPRESSION } else { 0 }
            | if o.extended_l2 { INCOMPAT_EXTL2 } else { 0 }
            | if o.data_file.is_some() {
                INCOMPAT_DATA_FILE
            } else {
                0
            },
        compatible: if o.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear: if o.data_file_raw {
            AUTOCLEAR_DATA_FILE_RAW
        } else {
            0
        },
        refcount_order,
        header_length: if v3 { V3_HEADER_SIZE } else { V2_HEADER_SIZE } as u32,
        compression_type: u8::from(zstd),
        backing_file: o.backing_file.clone(),
        extensions: Extensions {
            backing_format: o.backing_format.clone(),
            // QEMU writes the feature name table only with clusters above 4 KiB (it would leave too little
            // room for a backing file name in smaller ones).
            feature_names: if v3 && cs > 4096 {
                Extensions::qemu_feature_table()
            } else {
                Vec::<FeatureName>::new()
            },
            has_feature_table: v3 && cs > 4096,
            data_file: o.data_file.is_some(),
            data_file_name: o.data_file.clone(),
            other: o
                .data_file
                .iter()
                .map(|name| (EXT_DATA_FILE, name.as_bytes().to_vec()))
                .chain(luks.iter().map(|_| {
                    let mut pointer = luks_offset.to_be_bytes().to_vec();
                    pointer.extend_from_slice(&luks_len.to_be_bytes());
                    (crate::image::extensions::EXT_CRYPTO, pointer)
                }))
                .collect(),
            ..Extensions::default()
        },
    };
    let mut image = vec![0u8; (total * cs) as usize];
    let mut header = header;
    header.extensions.crypto = luks.is_some();
    let mut head = header.serialize();
    if head.len() as u64 >= cs && header.extensions.has_feature_table {
        // qemu leaves the feature name table out when it does not fit (512-byte clusters).
        header.extensions.has_feature_table = false;
        header.extensions.feature_names.clear();
        head = header.serialize();
    }
    if head.len() as u64 > cs {
        return Err(invalid(
            "the header, its extensions and the backing file name do not fit in one cluster",
        ));
    }
    image[..head.len()].copy_from_slice(&head);
    for b in 0..blocks {
        let block_offset = block_at(b);
        set_entry(&mut image[cs as usize..], b as usize, block_offset);
        let block = &mut image[block_offset as usize..(block_offset + cs) as usize];
        for c in b * rb_entries..((b + 1) * rb_entries).min(total) {
            block_set(block, c - b * rb_entries, refcount_order, 1);
        }
    }
    // Like qemu-img, the file ends right after the L1 table unless refcount blocks follow it.
    let file_end = if blocks > 1 {
        total * cs
    } else if luks.is_some() {
        luks_offset + luks_clusters * cs
    } else {
        l1_offset + l1_size * 8
    };
    if let Some(area) = &luks {
        image[luks_offset as usize..luks_offset as usize + area.len()].copy_from_slice(area);
    }
    if let Some(name) = &o.data_file {
        // qemu-img creates the raw data file with the virtual size (relative to its working directory; here
        // next to the image, where opening looks for it).
        let data = HostFile::create(
            crate::image::data_file::data_file_path(path, name),
            HostOpenOptions::default(),
        )?;
        data.set_len(size)?;
        if matches!(o.preallocation, Preallocation::Falloc | Preallocation::Full) {
            data.allocate(0, size)?;
        }
        data.sync_data()?;
    }
    let file = HostFile::create(path, HostOpenOptions::default())?;
    file.write_all_at(0, image.get(..file_end as usize).unwrap_or(&image))?;
    file.sync_data()?;
    drop(file);
    if o.preallocation != Preallocation::Off {
        let opener: Arc<dyn ImageOpener> = Arc::new(DenyNamedImages);
        preallocate(path, o.preallocation, o.data_file.is_some(), 0, opener)?;
    }
    Ok(())
}

/// Allocates every guest cluster from `first_cluster` on that has no L2 entry yet (refcount 1, L2 entries
/// set), then reserves or zeroes the file. With an external data file, every L2 entry maps the guest cluster
/// to the same offset there (not refcounted), and the image file only gets its L2 tables. `create` starts at
/// cluster 0 of a new image; `resize` at the first cluster of the grown area. The image is opened with
/// `opener` (resize's skips the backing file).
pub(crate) fn preallocate(
    path: &Path,
    mode: Preallocation,
    data_file: bool,
    first_cluster: u64,
    opener: Arc<dyn ImageOpener>,
) -> Result<()> {
    let options = Qcow2OpenOptions::new(HostOpenOptions::default(), opener);
    let image = Qcow2::open_without_data_file(path, &options)?;
    let g = image.geometry().clone();
    let clusters = g.size.div_ceil(g.cluster_size);
    let file = image.host_file();
    {
        let mut meta = image.lock_metadata();
        let mut gc = first_cluster;
        while gc < clusters {
            // A run of clusters without an entry, inside one L2 table.
            if meta.l2_entry(file, gc)? != 0 {
                gc += 1;
                continue;
            }
            let table_end = (gc / g.l2_entries + 1) * g.l2_entries;
            let mut n = 1;
            while gc + n < table_end.min(clusters) && meta.l2_entry(file, gc + n)? == 0 {
                n += 1;
            }
            // Give the range its L2 table first, so the data follows it as in qemu's layout.
            meta.set_l2_entry(file, gc, 0)?;
            let host = if data_file {
                gc * g.cluster_size
            } else {
                meta.allocate_clusters(file, n)?
            };
            for i in 0..n {
                meta.set_l2_entry(file, gc + i, (host + i * g.cluster_size) | COPIED)?;
            }
            gc += n;
        }
        meta.flush(file)?;
    }
    let end = file.len()?;
    if data_file {
        return file.sync_data();
    }
    let data_end = {
        let mut meta = image.lock_metadata();
        let mut last = 0;
        for c in (0..clusters).rev() {
            let raw = meta.l2_entry(file, c)?;
            if raw != 0 {
                last = (raw & crate::metadata::tables::L2_OFFSET_MASK) + g.cluster_size;
                break;
            }
        }
        last
    };
    let end = end.max(data_end);
    match mode {
        Preallocation::Falloc => file.allocate(0, end)?,
        Preallocation::Full => {
            let len = file.len()?;
            if end > len {
                file.zero_range(len, end - len, true, false)?;
            }
            file.allocate(0, end)?;
        }
        _ => {
            if file.len()? < end {
                file.set_len(end)?;
            }
        }
    }
    file.sync_data()
}
