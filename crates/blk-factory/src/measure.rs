//! Measuring new images: [`measure`], `qemu-img measure` for raw and QCOW2 targets, of a size or of a copy of
//! an open image.

use blk_core::{parse_bool_param, parse_size_param, DiskFile, Error, ErrorKind, Operation, Result};
#[cfg(feature = "qcow2")]
use blk_core::{ExtentKind, InfoValue};

use crate::create::create_options;
use crate::format::ImageFormat;

/// The options of qemu's file protocol driver, which qemu-img measure accepts for every target format.
const FILE_OPTIONS: &[(&str, &str)] = &[
    ("size", "size"),
    ("preallocation", "str"),
    ("nocow", "bool (on/off)"),
    ("extent_size_hint", "size"),
];

/// What to measure: a new image of a given size, or a copy of an open image.
#[derive(Clone, Copy)]
pub enum MeasureSource<'a> {
    /// A new, empty image of this many bytes (`--size`).
    Size(u64),
    /// A copy of this image (open it read-only with [`open_disk_file`](crate::open_disk_file) and
    /// [`NamedImagePolicy::AllowRecordedFormat`](crate::NamedImagePolicy), so its backing chain counts too).
    Image(&'a dyn DiskFile),
}

impl std::fmt::Debug for MeasureSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeasureSource::Size(size) => f.debug_tuple("Size").field(size).finish(),
            MeasureSource::Image(disk) => {
                f.debug_tuple("Image").field(&disk.logical_size()).finish()
            }
        }
    }
}

/// A measurement request, as `qemu-img measure -O FMT -o OPTIONS (--size N | FILE)`.
#[derive(Debug, Clone)]
pub struct MeasureParams<'a> {
    /// The format of the image to be created.
    pub format: ImageFormat,
    /// Its creation options (`-o`), as `create` takes them.
    pub options: Vec<(String, String)>,
    /// The size or the input image.
    pub source: MeasureSource<'a>,
}

impl<'a> MeasureParams<'a> {
    /// A request for `format` without options.
    pub fn new(format: ImageFormat, source: MeasureSource<'a>) -> MeasureParams<'a> {
        MeasureParams {
            format,
            options: Vec::new(),
            source,
        }
    }
}

/// How big the new image would be (qemu's `BlockMeasureInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// Bytes needed for the data to be copied (or none, for a size) plus metadata.
    pub required: u64,
    /// Bytes with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for the input's persistent bitmaps, when both the input and the target can hold them (a QCOW2 v3
    /// input and target).
    pub bitmaps: Option<u64>,
}

/// Measures as `qemu-img measure` does.
///
/// The options are first checked against the target format's creation options (unknown keys, malformed
/// sizes, booleans and numbers fail with [`ErrorKind::InvalidInput`]). Raw: the size rounded up to 512
/// bytes, or the input's exact size, for both figures. QCOW2: see [`blk_qcow::measure()`]; the input's data
/// is found with [`DiskFile::map`] over its whole chain, in the target's cluster size. Other formats fail
/// with [`ErrorKind::UnsupportedFeature`] ("does not support size measurement").
///
/// ```
/// use blk_factory::measure::{measure, MeasureParams, MeasureSource};
/// use blk_factory::ImageFormat;
/// let m = measure(&MeasureParams::new(ImageFormat::Raw, MeasureSource::Size(1000))).unwrap();
/// assert_eq!((m.required, m.fully_allocated, m.bitmaps), (1024, 1024, None));
/// ```
pub fn measure(params: &MeasureParams<'_>) -> Result<Measure> {
    let format = params.format;
    let ctx = |e: Error| {
        e.with_format(format.name())
            .with_operation(Operation::Create)
    };
    check_option_types(format, &params.options).map_err(ctx)?;
    match format {
        ImageFormat::Raw => measure_raw(params.source).map_err(ctx),
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => measure_qcow2(params).map_err(ctx),
        #[cfg(not(feature = "qcow2"))]
        ImageFormat::Qcow2 => Err(ctx(format.not_compiled_in())),
        _ => Err(ctx(Error::new(
            ErrorKind::UnsupportedFeature,
            format!(
                "Block driver '{}' does not support size measurement",
                format.name()
            ),
        ))),
    }
}

/// qemu_opts_do_parse: every key must exist for the format (or the file driver) and its value must have the
/// option's type.
fn check_option_types(format: ImageFormat, options: &[(String, String)]) -> Result<()> {
    // A format compiled out has no option list here; measuring it fails afterwards anyway.
    let known = create_options(format).unwrap_or_default();
    for (key, value) in options {
        let value_type = known
            .iter()
            .find(|o| o.name == key)
            .map(|o| o.value_type)
            .or_else(|| {
                FILE_OPTIONS
                    .iter()
                    .find(|(name, _)| name == key)
                    .map(|(_, t)| *t)
            })
            .ok_or_else(|| invalid_options(format, format!("Invalid parameter '{key}'")))?;
        let checked = match value_type {
            "size" => parse_size_param(key, value).map(|_| ()),
            "num" => value.parse::<u64>().map(|_| ()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("Parameter '{key}' expects a number"),
                )
            }),
            t if t.starts_with("bool") => parse_bool_param(key, value).map(|_| ()),
            _ => Ok(()),
        };
        checked.map_err(|e| invalid_options(format, e.message().to_string()))?;
    }
    Ok(())
}

/// qemu-img's two lines ("Invalid parameter 'x'", "Invalid options for file format 'raw'") as one.
fn invalid_options(format: ImageFormat, cause: String) -> Error {
    let cause = cause.lines().next().unwrap_or_default();
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "Invalid options for file format '{}': {cause}",
            format.name()
        ),
    )
}

/// QEMU's `raw_measure`: both figures are the size (rounded up to a sector for `--size`).
fn measure_raw(source: MeasureSource<'_>) -> Result<Measure> {
    let size = match source {
        MeasureSource::Size(size) => size
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "image size too large"))?,
        MeasureSource::Image(disk) => disk.logical_size(),
    };
    Ok(Measure {
        required: size,
        fully_allocated: size,
        bitmaps: None,
    })
}

#[cfg(feature = "qcow2")]
fn measure_qcow2(params: &MeasureParams<'_>) -> Result<Measure> {
    let size = match params.source {
        MeasureSource::Size(size) => Some(size),
        MeasureSource::Image(_) => None,
    };
    let options = blk_qcow::Qcow2MeasureOptions::from_key_values(size, &params.options)?;
    let input = match params.source {
        MeasureSource::Size(_) => None,
        MeasureSource::Image(disk) => Some(blk_qcow::Qcow2MeasureInput {
            virtual_size: disk.logical_size(),
            data_bytes: if options.has_backing_file {
                0 // all of it counts anyway
            } else {
                data_clusters(disk, options.cluster_size)?
            },
            bitmaps: persistent_bitmaps(disk)?,
        }),
    };
    let m = blk_qcow::measure(&options, input.as_ref())?;
    Ok(Measure {
        required: m.required,
        fully_allocated: m.fully_allocated,
        bitmaps: m.bitmaps,
    })
}

/// The bytes of `cluster_size` clusters that hold data anywhere in `disk`'s chain (zero and unallocated
/// runs count nothing), as QEMU's block-status walk counts them.
#[cfg(feature = "qcow2")]
fn data_clusters(disk: &dyn DiskFile, cluster_size: u64) -> Result<u64> {
    let size = disk.logical_size();
    let mut count = blk_qcow::DataClusterCount::new(cluster_size);
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
#[cfg(feature = "qcow2")]
fn persistent_bitmaps(disk: &dyn DiskFile) -> Result<Option<Vec<blk_qcow::MeasuredBitmap>>> {
    let info = disk.image_info()?;
    let Some((kind, data)) = &info.format_specific else {
        return Ok(None);
    };
    let field = |name: &str| data.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let is_v3 = matches!(field("compat"), Some(InfoValue::String(c)) if c == "1.1");
    if info.format != "qcow2" || kind != "qcow2" || !is_v3 {
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
                bitmaps.push(blk_qcow::MeasuredBitmap {
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

    fn options(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn raw_and_unsupported_targets() {
        let m = measure(&MeasureParams::new(
            ImageFormat::Raw,
            MeasureSource::Size(1 << 30),
        ))
        .unwrap();
        assert_eq!((m.required, m.fully_allocated), (1 << 30, 1 << 30));
        let mut p = MeasureParams::new(ImageFormat::Raw, MeasureSource::Size(1));
        p.options = options(&[("preallocation", "bogus"), ("nocow", "on")]);
        assert_eq!(measure(&p).unwrap().required, 512);
        p.options = options(&[("bogus", "1")]);
        assert_eq!(measure(&p).unwrap_err().kind(), ErrorKind::InvalidInput);
        let vpc = measure(&MeasureParams::new(
            ImageFormat::Vpc,
            MeasureSource::Size(1),
        ))
        .unwrap_err();
        assert_eq!(vpc.kind(), ErrorKind::UnsupportedFeature);
        assert!(vpc
            .to_string()
            .contains("does not support size measurement"));
    }

    #[cfg(feature = "qcow2")]
    #[test]
    fn qcow2_of_a_size() {
        let mut p = MeasureParams::new(ImageFormat::Qcow2, MeasureSource::Size(1 << 30));
        p.options = options(&[("nocow", "on"), ("compression_type", "bogus")]);
        let m = measure(&p).unwrap();
        assert_eq!(
            (m.required, m.fully_allocated, m.bitmaps),
            (393216, 1074135040, None)
        );
        p.options = options(&[("refcount_bits", "abc")]);
        assert!(measure(&p)
            .unwrap_err()
            .to_string()
            .contains("expects a number"));
    }
}
