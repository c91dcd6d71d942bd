//! Measuring new images: [`measure`], `qemu-img measure` of a size or of a copy of an open image, for the
//! formats that can measure (the format's descriptor answers).

use blk_core::{parse_bool_param, parse_size_param, Error, ErrorKind, Operation, Result};
pub use blk_core::{Measure, MeasureSource};

use crate::create::create_options;
use crate::format::ImageFormat;

/// The options of qemu's file protocol driver, which qemu-img measure accepts for every target format.
const FILE_OPTIONS: &[(&str, &str)] = &[
    ("size", "size"),
    ("preallocation", "str"),
    ("nocow", "bool (on/off)"),
    ("extent_size_hint", "size"),
];

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

/// Measures as `qemu-img measure` does.
///
/// The options are first checked against the target format's creation options (unknown keys, malformed
/// sizes, booleans and numbers fail with [`ErrorKind::InvalidInput`]), then the format measures: raw gives the
/// size rounded up to 512 bytes, or the input's exact size, for both figures; QCOW2 counts the input's data
/// (found with [`DiskFile::map`](blk_core::DiskFile::map) over its whole chain) in the target's cluster size.
/// Other formats fail with [`ErrorKind::UnsupportedFeature`] ("does not support size measurement").
///
/// ```
/// use blk_factory::measure::{measure, MeasureParams, MeasureSource};
/// use blk_factory::ImageFormat;
/// let m = measure(&MeasureParams::new(ImageFormat::RAW, MeasureSource::Size(1000))).unwrap();
/// assert_eq!((m.required, m.fully_allocated, m.bitmaps), (1024, 1024, None));
/// ```
pub fn measure(params: &MeasureParams<'_>) -> Result<Measure> {
    let format = params.format;
    let ctx = |e: Error| {
        e.with_format(format.name())
            .with_operation(Operation::Create)
    };
    check_option_types(format, &params.options).map_err(ctx)?;
    format
        .descriptor()
        .measure(&params.options, params.source)
        .map_err(ctx)
}

/// qemu_opts_do_parse: every key must exist for the format (or the file driver) and its value must have the
/// option's type.
fn check_option_types(format: ImageFormat, options: &[(String, String)]) -> Result<()> {
    let known = create_options(format);
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
            ImageFormat::RAW,
            MeasureSource::Size(1 << 30),
        ))
        .unwrap();
        assert_eq!((m.required, m.fully_allocated), (1 << 30, 1 << 30));
        let mut p = MeasureParams::new(ImageFormat::RAW, MeasureSource::Size(1));
        p.options = options(&[("preallocation", "bogus"), ("nocow", "on")]);
        assert_eq!(measure(&p).unwrap().required, 512);
        p.options = options(&[("bogus", "1")]);
        assert_eq!(measure(&p).unwrap_err().kind(), ErrorKind::InvalidInput);
        #[cfg(feature = "vhd")]
        {
            let vpc = measure(&MeasureParams::new(
                ImageFormat::by_name("vpc").unwrap(),
                MeasureSource::Size(1),
            ))
            .unwrap_err();
            assert_eq!(vpc.kind(), ErrorKind::UnsupportedFeature);
            assert!(vpc
                .to_string()
                .contains("does not support size measurement"));
        }
    }

    #[cfg(feature = "qcow2")]
    #[test]
    fn qcow2_of_a_size() {
        let qcow2 = ImageFormat::by_name("qcow2").unwrap();
        let mut p = MeasureParams::new(qcow2, MeasureSource::Size(1 << 30));
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
