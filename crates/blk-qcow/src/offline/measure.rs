//! [`measure()`]: how big a new QCOW2 image would be, as `qemu-img measure -O qcow2` computes it (QEMU's
//! `qcow2_measure` and `qcow2_calc_prealloc_size`). Pure arithmetic: the caller reads the input image and
//! passes its size, its data in target-cluster granularity ([`DataClusterCount`]) and its persistent bitmaps.
//!
//! The options are parsed as leniently as QEMU's measure parses them ([`Qcow2MeasureOptions`]): only the
//! keys that change the numbers are interpreted and checked (`cluster_size`, `compat`, `refcount_bits`,
//! `extended_l2`, `preallocation`, `backing_file`, `encrypt.format`); combinations `create` refuses but that do
//! not change the numbers (lazy refcounts or zstd with `compat=0.10`, `data_file_raw` alone, ...) are
//! accepted, as qemu-img measure accepts them.

use blk_core::{
    parse_bool_param, parse_size_param, DiskFile, Error, ErrorKind, ExtentKind, ImageAdmin,
    InfoValue, Measure, MeasureSource, Operation, Result,
};

use crate::image::header::MAX_L1_BYTES;
use crate::image::options::{Preallocation, Qcow2CreateOptions};
use crate::FORMAT_NAME;

/// The bytes of one L1 or refcount-table entry.
const TABLE_ENTRY: u64 = 8;
/// The bytes of a bitmap directory entry without its name (QEMU's `Qcow2BitmapDirEntry`).
const BITMAP_DIR_ENTRY: u64 = 24;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
        .with_format(FORMAT_NAME)
        .with_operation(Operation::Create)
}

fn too_large() -> Error {
    invalid("The image size is too large (try using a larger cluster size)")
}

/// What `qemu-img measure -O qcow2 -o ...` takes from the options: the layout of the new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2MeasureOptions {
    /// The size from `--size` or `-o size=` (`None`: neither). With an input image only checked against
    /// QEMU's L1 cap; the input's size is measured.
    pub size: Option<u64>,
    /// 2 (`compat=0.10`) or 3.
    pub version: u32,
    /// The cluster size (a power of two, 512 B to 2 MiB).
    pub cluster_size: u64,
    /// The refcount width in bits (a power of two, at most 64; 16 for version 2).
    pub refcount_bits: u64,
    /// Extended L2 entries (16-byte L2 entries).
    pub extended_l2: bool,
    /// The preallocation mode: `falloc` and `full` make every data cluster required.
    pub preallocation: Preallocation,
    /// A backing file is named: an input image's data is then all counted (QEMU cannot know what the new
    /// backing file shares with it).
    pub has_backing_file: bool,
    /// Bytes of the LUKS header of an encrypted image (`encrypt.format=luks`), before rounding to clusters
    /// (0: not encrypted).
    pub luks_header: u64,
}

impl Default for Qcow2MeasureOptions {
    fn default() -> Qcow2MeasureOptions {
        Qcow2MeasureOptions::from(&Qcow2CreateOptions::default())
    }
}

impl From<&Qcow2CreateOptions> for Qcow2MeasureOptions {
    fn from(o: &Qcow2CreateOptions) -> Qcow2MeasureOptions {
        Qcow2MeasureOptions {
            size: o.size,
            version: o.version,
            cluster_size: o.cluster_size,
            refcount_bits: o.refcount_bits,
            extended_l2: o.extended_l2,
            preallocation: o.preallocation,
            has_backing_file: o.backing_file.is_some(),
            luks_header: o.encryption.as_ref().map_or(0, |e| {
                crate::encryption::key_slots::header_area_len(e.cipher.key_bytes())
            }),
        }
    }
}

impl Qcow2MeasureOptions {
    /// Reads the keys of `options` that change the measurement, with QEMU's checks and messages, in QEMU's
    /// order (extended L2, cluster size, compat, refcount width, preallocation). `size` is `--size`, which
    /// wins over `-o size=`. Other keys are ignored: the caller checks that they exist for the format.
    /// LUKS encryption (`encrypt.format=luks`) adds its header (sized by `encrypt.cipher-alg` and
    /// `encrypt.cipher-mode`).
    ///
    /// ```
    /// use blk_qcow::Qcow2MeasureOptions;
    /// let o = [("compat".to_string(), "0.10".to_string()), ("lazy_refcounts".into(), "on".into())];
    /// let parsed = Qcow2MeasureOptions::from_key_values(Some(1 << 30), &o).unwrap();
    /// assert_eq!((parsed.version, parsed.cluster_size), (2, 65536));
    /// ```
    pub fn from_key_values(
        size: Option<u64>,
        options: &[(String, String)],
    ) -> Result<Qcow2MeasureOptions> {
        // qemu_opt_get returns the last value given for a key.
        let value = |key: &str| {
            options
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let extended_l2 = match value("extended_l2") {
            Some(v) => parse_bool_param("extended_l2", v).map_err(with_context)?,
            None => false,
        };
        let cluster_size = match value("cluster_size") {
            Some(v) => parse_size_param("cluster_size", v).map_err(with_context)?,
            None => 65536,
        };
        if !cluster_size.is_power_of_two() || !(512..=(2 << 20)).contains(&cluster_size) {
            return Err(invalid(
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        if extended_l2 && cluster_size < 16384 {
            return Err(invalid(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
        let version = match value("compat") {
            None | Some("1.1") | Some("v3") => 3,
            Some("0.10") | Some("v2") => 2,
            Some(other) => return Err(invalid(format!("Invalid compatibility level: '{other}'"))),
        };
        let refcount_bits = match value("refcount_bits") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid("Parameter 'refcount_bits' expects a number"))?,
            None => 16,
        };
        if refcount_bits == 0 || !refcount_bits.is_power_of_two() || refcount_bits > 64 {
            return Err(invalid(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if version < 3 && refcount_bits != 16 {
            return Err(invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
        }
        let preallocation = match value("preallocation") {
            None | Some("off") => Preallocation::Off,
            Some("metadata") => Preallocation::Metadata,
            Some("falloc") => Preallocation::Falloc,
            Some("full") => Preallocation::Full,
            Some(other) => return Err(invalid(format!("invalid parameter value: {other}"))),
        };
        // The LUKS header's size depends only on the key length (cipher algorithm and mode).
        let luks_header = if value("encrypt.format") == Some("luks") {
            if value("encrypt.key-secret").is_none() {
                return Err(invalid(
                    "Parameter 'encrypt.key-secret' is required for cipher",
                ));
            }
            let bits = value("encrypt.cipher-alg")
                .and_then(crate::encryption::algorithms::BlockCipher::by_qemu_name)
                .map_or(256, |(_, bits)| u64::from(bits));
            let xts = matches!(value("encrypt.cipher-mode"), None | Some("xts"));
            let key_bytes = (bits / 8) as usize * if xts { 2 } else { 1 };
            crate::encryption::key_slots::header_area_len(key_bytes)
        } else {
            0
        };
        let size = match (size, value("size")) {
            (Some(size), _) => Some(size),
            (None, Some(v)) => Some(parse_size_param("size", v).map_err(with_context)?),
            (None, None) => None,
        };
        Ok(Qcow2MeasureOptions {
            size,
            version,
            cluster_size,
            refcount_bits,
            extended_l2,
            preallocation,
            has_backing_file: value("backing_file").is_some(),
            luks_header,
        })
    }
}

fn with_context(e: Error) -> Error {
    e.with_format(FORMAT_NAME).with_operation(Operation::Create)
}

/// Counts the target clusters that hold data, as QEMU's measure walks the input's block status: every
/// cluster that a data run touches counts whole, once; zero and unallocated runs count nothing.
///
/// ```
/// use blk_qcow::DataClusterCount;
/// let mut count = DataClusterCount::new(65536);
/// count.add_data(0, 100 * 1024); // two clusters
/// count.add_data(110 * 1024, 1); // inside the second: already counted
/// count.add_data(1 << 20, 4096); // a third
/// assert_eq!(count.bytes(), 3 * 65536);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataClusterCount {
    cluster_size: u64,
    /// The end of the last counted cluster: data runs before it are already counted.
    counted_end: u64,
    bytes: u64,
}

impl DataClusterCount {
    /// An empty count in clusters of `cluster_size` bytes (a power of two; 0 is taken as 1).
    pub fn new(cluster_size: u64) -> DataClusterCount {
        DataClusterCount {
            cluster_size: cluster_size.max(1),
            counted_end: 0,
            bytes: 0,
        }
    }

    /// Adds a run of data of `length` bytes at guest offset `offset`. Runs must come in ascending order
    /// (as a walk over the image gives them); a run before the counted end counts only its uncounted part.
    pub fn add_data(&mut self, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        let cs = self.cluster_size;
        let start = (offset / cs).saturating_mul(cs).max(self.counted_end);
        let end = offset
            .saturating_add(length)
            .div_ceil(cs)
            .saturating_mul(cs);
        if end > start {
            self.bytes = self.bytes.saturating_add(end - start);
            self.counted_end = end;
        }
    }

    /// The bytes of the counted clusters.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A persistent dirty bitmap of the input image, as the new image would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredBitmap {
    /// The bitmap's name (its length sizes the directory entry).
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
}

/// The input image of a measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2MeasureInput {
    /// The input's virtual size in bytes.
    pub virtual_size: u64,
    /// The bytes of target clusters holding the input's data (from [`DataClusterCount::bytes`], counted in
    /// [`Qcow2MeasureOptions::cluster_size`] clusters).
    pub data_bytes: u64,
    /// The input's persistent dirty bitmaps; `None` when its format cannot have any (only QCOW2 v3 can),
    /// which leaves the `bitmaps` figure out.
    pub bitmaps: Option<Vec<MeasuredBitmap>>,
}

/// The result of a measurement, qemu-img's `BlockMeasureInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Measure {
    /// Bytes the new image needs for the data to be copied and all metadata of a fully allocated image.
    pub required: u64,
    /// Bytes of the new image with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for the input's persistent bitmaps: `Some` when the input could have bitmaps and the target is
    /// version 3.
    pub bitmaps: Option<u64>,
}

/// Measures a new QCOW2 image with `options`, as `qemu-img measure -O qcow2` does: of `options.size` when
/// `input` is `None`, else of a copy of the input image.
///
/// `fully_allocated` is header, L1 and L2 tables, refcount metadata (QEMU's fixed point) and every data
/// cluster; `required` replaces the data clusters with the input's data clusters (none for `--size`; all
/// with a backing file or `falloc`/`full` preallocation). Fails with [`ErrorKind::InvalidInput`] when the size
/// would need an L1 table over QEMU's 32 MiB cap, or the figures overflow.
///
/// ```
/// use blk_qcow::{measure, Qcow2MeasureOptions};
/// let options = Qcow2MeasureOptions { size: Some(1 << 30), ..Qcow2MeasureOptions::default() };
/// let m = measure(&options, None).unwrap();
/// // qemu-img measure --size 1G -O qcow2
/// assert_eq!((m.required, m.fully_allocated, m.bitmaps), (393216, 1074135040, None));
/// ```
pub fn measure(
    options: &Qcow2MeasureOptions,
    input: Option<&Qcow2MeasureInput>,
) -> Result<Qcow2Measure> {
    let cs = options.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    let l2_entry = if options.extended_l2 { 16 } else { 8 };
    let size = round_up(options.size.unwrap_or(0), cs)?;
    let l2_tables = (size / cs).div_ceil(cs / l2_entry);
    if l2_tables.saturating_mul(TABLE_ENTRY) > MAX_L1_BYTES {
        return Err(too_large());
    }
    let (virtual_size, mut required) = match input {
        None => (size, 0),
        Some(input) => {
            let virtual_size = round_up(input.virtual_size, cs)?;
            let data = if options.has_backing_file {
                virtual_size
            } else {
                input.data_bytes.min(virtual_size)
            };
            (virtual_size, data)
        }
    };
    if matches!(
        options.preallocation,
        Preallocation::Full | Preallocation::Falloc
    ) {
        required = virtual_size;
    }
    let refcount_order = options.refcount_bits.trailing_zeros();
    let fully_allocated = prealloc_size(virtual_size, cs, refcount_order, l2_entry)?;
    let required = fully_allocated
        .checked_sub(virtual_size)
        .and_then(|meta| meta.checked_add(required))
        .ok_or_else(too_large)?;
    // The LUKS header's clusters, as QEMU adds them to both figures.
    let luks = round_up(options.luks_header, cs)?;
    let (required, fully_allocated) = (
        required.checked_add(luks).ok_or_else(too_large)?,
        fully_allocated.checked_add(luks).ok_or_else(too_large)?,
    );
    let bitmaps = match input {
        Some(Qcow2MeasureInput {
            bitmaps: Some(list),
            virtual_size,
            ..
        }) if options.version >= 3 => Some(bitmaps_size(list, *virtual_size, cs)?),
        _ => None,
    };
    Ok(Qcow2Measure {
        required,
        fully_allocated,
        bitmaps,
    })
}

fn round_up(value: u64, align: u64) -> Result<u64> {
    value
        .div_ceil(align)
        .checked_mul(align)
        .ok_or_else(too_large)
}

/// QEMU's `qcow2_calc_prealloc_size`: the file size of an image of `size` bytes (cluster-aligned) with every
/// cluster allocated.
fn prealloc_size(size: u64, cs: u64, refcount_order: u32, l2_entry: u64) -> Result<u64> {
    let overflow = || too_large();
    // The header cluster.
    let mut meta = cs;
    // The L2 tables, whole tables.
    let l2_entries = (size / cs).div_ceil(cs / l2_entry) * (cs / l2_entry);
    let l2_bytes = l2_entries.checked_mul(l2_entry).ok_or_else(overflow)?;
    meta = meta.checked_add(l2_bytes).ok_or_else(overflow)?;
    // The L1 table, whole clusters.
    let l1_entries = (l2_bytes / cs).div_ceil(cs / TABLE_ENTRY) * (cs / TABLE_ENTRY);
    meta = meta
        .checked_add(l1_entries.checked_mul(TABLE_ENTRY).ok_or_else(overflow)?)
        .ok_or_else(overflow)?;
    let clusters = meta.checked_add(size).ok_or_else(overflow)? / cs;
    meta = meta
        .checked_add(refcount_metadata_size(clusters, cs, refcount_order)?)
        .ok_or_else(overflow)?;
    meta.checked_add(size).ok_or_else(overflow)
}

/// QEMU's `qcow2_refcount_metadata_size` (without the generous increase): the bytes of refcount table and
/// blocks that count `clusters` clusters and themselves, found as a fixed point.
fn refcount_metadata_size(clusters: u64, cs: u64, refcount_order: u32) -> Result<u64> {
    let blocks_per_table_cluster = cs / TABLE_ENTRY;
    let refcounts_per_block = (cs * 8) >> refcount_order;
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        let counted = clusters
            .checked_add(table)
            .and_then(|c| c.checked_add(blocks))
            .ok_or_else(too_large)?;
        blocks = counted.div_ceil(refcounts_per_block);
        table = blocks.div_ceil(blocks_per_table_cluster);
        n = clusters + blocks + table; // <= counted + its own small share: checked above
        if n == last {
            break;
        }
    }
    blocks
        .checked_add(table)
        .and_then(|c| c.checked_mul(cs))
        .ok_or_else(too_large)
}

/// QEMU's `qcow2_get_persistent_dirty_bitmap_size`: each bitmap whole (its data clusters and its table's
/// clusters), plus the directory in whole clusters.
fn bitmaps_size(bitmaps: &[MeasuredBitmap], virtual_size: u64, cs: u64) -> Result<u64> {
    let mut total = 0u64;
    let mut directory = 0u64;
    for bitmap in bitmaps {
        if bitmap.granularity == 0 {
            return Err(invalid(format!(
                "bitmap '{}' has granularity 0",
                bitmap.name
            )));
        }
        let bytes = virtual_size.div_ceil(bitmap.granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        let table = round_up(clusters.saturating_mul(TABLE_ENTRY), cs)?;
        total = clusters
            .checked_mul(cs)
            .and_then(|data| total.checked_add(data))
            .and_then(|t| t.checked_add(table))
            .ok_or_else(too_large)?;
        let entry = round_up(BITMAP_DIR_ENTRY + bitmap.name.len() as u64, 8)?;
        directory = directory.saturating_add(entry);
    }
    total
        .checked_add(round_up(directory, cs)?)
        .ok_or_else(too_large)
}

/// `qemu-img measure -O qcow2 -o options` of `source` (the options were checked against
/// [`CREATE_OPTIONS`](crate::CREATE_OPTIONS) already): the input's data is found with
/// [`DiskFile::map`] over its whole chain, in the target's cluster size; its persistent bitmaps from its
/// [`ImageAdmin::image_info`].
pub(crate) fn measure_source(
    options: &[(String, String)],
    source: MeasureSource<'_>,
) -> Result<Measure> {
    let size = match source {
        MeasureSource::Size(size) => Some(size),
        MeasureSource::Image { .. } => None,
    };
    let options = Qcow2MeasureOptions::from_key_values(size, options)?;
    let input = match source {
        MeasureSource::Size(_) => None,
        MeasureSource::Image { disk, admin } => Some(Qcow2MeasureInput {
            virtual_size: disk.logical_size(),
            data_bytes: if options.has_backing_file {
                0 // all of it counts anyway
            } else {
                data_clusters(disk, options.cluster_size)?
            },
            bitmaps: persistent_bitmaps(admin)?,
        }),
    };
    let m = measure(&options, input.as_ref())?;
    Ok(Measure {
        required: m.required,
        fully_allocated: m.fully_allocated,
        bitmaps: m.bitmaps,
    })
}

/// The bytes of `cluster_size` clusters that hold data anywhere in `disk`'s chain (zero and unallocated
/// runs count nothing), as QEMU's block-status walk counts them.
fn data_clusters(disk: &dyn DiskFile, cluster_size: u64) -> Result<u64> {
    let size = disk.logical_size();
    let mut count = DataClusterCount::new(cluster_size);
    let mut offset = 0;
    while offset < size {
        let extent = disk.map(offset, size - offset)?;
        if extent.offset != offset || extent.length == 0 {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "the format mapped the range at {offset} to {} bytes at {}",
                    extent.length, extent.offset
                ),
            )
            .with_offset(offset)
            .with_operation(Operation::Map));
        }
        let length = extent.length.min(size - offset);
        if extent.kind == ExtentKind::Data {
            count.add_data(offset, length);
        }
        offset += length;
    }
    Ok(count.bytes())
}

/// The input's persistent bitmaps, or `None` when its format cannot have any (QEMU's
/// `bdrv_supports_persistent_dirty_bitmap`: QCOW2 version 3 only), from its `image_info`.
fn persistent_bitmaps(admin: &dyn ImageAdmin) -> Result<Option<Vec<MeasuredBitmap>>> {
    let info = admin.image_info()?;
    let Some((kind, data)) = &info.format_specific else {
        return Ok(None);
    };
    let field = |name: &str| data.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let is_v3 = matches!(field("compat"), Some(InfoValue::String(c)) if c == "1.1");
    if info.format != FORMAT_NAME || kind != FORMAT_NAME || !is_v3 {
        return Ok(None);
    }
    let mut bitmaps = Vec::new();
    if let Some(InfoValue::List(list)) = field("bitmaps") {
        for entry in list {
            let InfoValue::Map(fields) = entry else {
                continue;
            };
            let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if let (Some(InfoValue::String(name)), Some(InfoValue::U64(granularity))) =
                (get("name"), get("granularity"))
            {
                bitmaps.push(MeasuredBitmap {
                    name: name.clone(),
                    granularity: *granularity,
                });
            }
        }
    }
    Ok(Some(bitmaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(size: u64) -> Qcow2MeasureOptions {
        Qcow2MeasureOptions {
            size: Some(size),
            ..Qcow2MeasureOptions::default()
        }
    }

    fn parse(size: u64, options: &[(&str, &str)]) -> Result<Qcow2MeasureOptions> {
        let list: Vec<(String, String)> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Qcow2MeasureOptions::from_key_values(Some(size), &list)
    }

    #[test]
    fn qemu_figures_for_sizes() {
        // Values from qemu-img 10.0.2 measure --size N -O qcow2 [-o ...].
        let m = measure(&sized(1000), None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (327680, 393216));
        let o = parse(1 << 30, &[("cluster_size", "4k"), ("refcount_bits", "1")]).unwrap();
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (2146304, 1075888128));
        let o = parse(1 << 30, &[("extended_l2", "on")]).unwrap();
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (524288, 1074266112));
        let o = parse(1 << 30, &[("backing_file", "x"), ("preallocation", "full")]).unwrap();
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (1074135040, 1074135040));
    }

    #[test]
    fn input_data_and_bitmaps() {
        // qemu-img measure -O qcow2 of a 10 MiB image with 4 data clusters: 589824 / 10813440, bitmaps 0.
        let input = Qcow2MeasureInput {
            virtual_size: 10 << 20,
            data_bytes: 4 * 65536,
            bitmaps: Some(Vec::new()),
        };
        let m = measure(&Qcow2MeasureOptions::default(), Some(&input)).unwrap();
        assert_eq!(
            m,
            Qcow2Measure {
                required: 589824,
                fully_allocated: 10813440,
                bitmaps: Some(0)
            }
        );
        let v2 = parse(0, &[("compat", "0.10")]).unwrap();
        assert_eq!(measure(&v2, Some(&input)).unwrap().bitmaps, None);
        let one = Qcow2MeasureInput {
            bitmaps: Some(vec![MeasuredBitmap {
                name: "b0".into(),
                granularity: 65536,
            }]),
            ..input
        };
        // 160 bits: one data cluster, one table cluster, one directory cluster.
        assert_eq!(
            measure(&Qcow2MeasureOptions::default(), Some(&one))
                .unwrap()
                .bitmaps,
            Some(3 * 65536)
        );
    }

    #[test]
    fn option_errors() {
        let err = |o: &[(&str, &str)]| parse(1 << 30, o).unwrap_err().to_string();
        assert!(err(&[("cluster_size", "3k")]).contains("power of two"));
        assert!(err(&[("compat", "9")]).contains("Invalid compatibility level: '9'"));
        assert!(
            err(&[("compat", "0.10"), ("refcount_bits", "64")]).contains("compatibility level 1.1")
        );
        assert!(err(&[("refcount_bits", "3")]).contains("power of two"));
        assert!(err(&[("extended_l2", "on"), ("cluster_size", "4k")]).contains("16384"));
        assert!(err(&[("preallocation", "bogus")]).contains("invalid parameter value: bogus"));
        let huge = measure(&sized(i64::MAX as u64), None).unwrap_err();
        assert_eq!(huge.kind(), ErrorKind::InvalidInput);
        assert!(parse(1, &[("compat", "0.10"), ("lazy_refcounts", "on")]).is_ok());
    }

    #[test]
    fn cluster_count_edges() {
        let mut c = DataClusterCount::new(4096);
        c.add_data(4095, 2); // spans two clusters
        c.add_data(8000, 10); // inside the second
        c.add_data(u64::MAX - 10, 10); // no overflow
        assert!(c.bytes() >= 8192);
        let mut z = DataClusterCount::new(0);
        z.add_data(0, 0);
        assert_eq!(z.bytes(), 0);
    }
}
