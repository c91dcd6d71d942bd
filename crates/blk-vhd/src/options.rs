//! Open and create options: [`VhdOpenOptions`], [`VhdCreateOptions`], [`Subformat`] and qemu-img's `-o` keys
//! for vpc ([`CREATE_OPTIONS`]).

use std::sync::Arc;

use blk_core::{
    parse_bool_param, parse_size_param, single_size, CreateOptionInfo, DenyNamedImages, Error,
    ErrorKind, HostOpenOptions, ImageOpener, Operation, Result,
};

use crate::FORMAT_NAME;

/// How to open a VHD image.
#[derive(Debug, Clone)]
pub struct VhdOpenOptions {
    /// How to open the image file.
    pub host: HostOpenOptions,
    /// Opens a differencing disk's parent (read-only, format `vpc`); the default refuses.
    pub opener: Arc<dyn ImageOpener>,
}

impl VhdOpenOptions {
    /// Options with the given host options and opener.
    pub fn new(host: HostOpenOptions, opener: Arc<dyn ImageOpener>) -> VhdOpenOptions {
        VhdOpenOptions { host, opener }
    }
}

impl Default for VhdOpenOptions {
    /// Read-write, locked, and refusing to open parents.
    fn default() -> VhdOpenOptions {
        VhdOpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages))
    }
}

/// Which kind of VHD `create` makes (qemu-img's `subformat`; a backing file makes a differencing disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// Sparse, growing as blocks are written (qemu's default).
    #[default]
    Dynamic,
    /// Fully allocated: the data followed by the footer.
    Fixed,
}

/// What a new VHD image looks like.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VhdCreateOptions {
    /// The requested size in bytes; rounded up to a CHS-representable size unless `force_size`. `None` takes
    /// the parent's size (differencing disks only).
    pub size: Option<u64>,
    /// Dynamic or fixed.
    pub subformat: Subformat,
    /// Keep the size exactly (creator `qem2`, maximum geometry), qemu's `force_size=on`.
    pub force_size: bool,
    /// The parent of a differencing disk, as given (relative names are relative to the new image's directory).
    pub backing_file: Option<String>,
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
        .with_format(FORMAT_NAME)
        .with_operation(Operation::Create)
}

/// qemu's boolean option values, with this format's error context.
fn parse_bool(name: &str, value: &str) -> Result<bool> {
    parse_bool_param(name, value)
        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Create))
}

/// The options `create -f vpc -o ...` accepts, in qemu-img's `-o help` order and words. `backing_file` and
/// `backing_fmt` (from `-b`/`-F`) are accepted too, for differencing disks, but qemu-img does not list them.
pub static CREATE_OPTIONS: &[CreateOptionInfo] = &[
    CreateOptionInfo {
        name: "extent_size_hint",
        value_type: "size",
        help: "Extent size hint for the image file, 0 to disable",
    },
    CreateOptionInfo {
        name: "force_size",
        value_type: "bool (on/off)",
        help: "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
    },
    CreateOptionInfo {
        name: "nocow",
        value_type: "bool (on/off)",
        help: "Turn off copy-on-write (valid only on btrfs)",
    },
    CreateOptionInfo {
        name: "preallocation",
        value_type: "str",
        help: "Preallocation mode (allowed values: off, falloc, full)",
    },
    CreateOptionInfo {
        name: "size",
        value_type: "size",
        help: "Virtual disk size",
    },
    CreateOptionInfo {
        name: "subformat",
        value_type: "str",
        help: "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
    },
];

impl VhdCreateOptions {
    /// Parses qemu-img's `-o` options for vpc, with `size` the positional size argument if one was given.
    ///
    /// Keys: `size`, `subformat` (`dynamic` or `fixed`), `force_size` (bool), `backing_file` (makes a
    /// differencing disk; not with `subformat=fixed`), `backing_fmt` (must be `vpc`), and the file options
    /// `extent_size_hint`, `nocow`, `preallocation` (validated and ignored). Any other key fails with
    /// [`ErrorKind::InvalidInput`] "Invalid parameter 'KEY'". The size is required unless a backing file gives
    /// it.
    ///
    /// ```
    /// use blk_vhd::{Subformat, VhdCreateOptions};
    /// let o = VhdCreateOptions::from_key_values(Some(1 << 20), &[("subformat".into(), "fixed".into())]).unwrap();
    /// assert_eq!(o.subformat, Subformat::Fixed);
    /// assert!(VhdCreateOptions::from_key_values(Some(1), &[("foo".into(), "1".into())]).is_err());
    /// ```
    pub fn from_key_values(
        size: Option<u64>,
        options: &[(String, String)],
    ) -> Result<VhdCreateOptions> {
        let mut option_size = None;
        let mut parsed = VhdCreateOptions::default();
        let ctx = |e: Error| e.with_format(FORMAT_NAME).with_operation(Operation::Create);
        for (key, value) in options {
            match key.as_str() {
                "size" => option_size = Some(parse_size_param(key, value).map_err(ctx)?),
                "subformat" => {
                    parsed.subformat = match value.as_str() {
                        "dynamic" => Subformat::Dynamic,
                        "fixed" => Subformat::Fixed,
                        _ => {
                            return Err(invalid(format!(
                                "Parameter 'subformat' does not accept value '{value}'"
                            )))
                        }
                    }
                }
                "force_size" => parsed.force_size = parse_bool(key, value)?,
                "backing_file" => parsed.backing_file = Some(value.clone()),
                "backing_fmt" => {
                    if value != FORMAT_NAME {
                        return Err(invalid(format!(
                            "the parent of a differencing VHD must be a vpc image, not '{value}'"
                        )));
                    }
                }
                "extent_size_hint" => {
                    parse_size_param(key, value).map_err(ctx)?;
                }
                "nocow" => {
                    parse_bool(key, value)?;
                }
                "preallocation" => {
                    if !matches!(value.as_str(), "off" | "falloc" | "full") {
                        return Err(invalid(format!("invalid parameter value: {value}")));
                    }
                }
                _ => return Err(invalid(format!("Invalid parameter '{key}'"))),
            }
        }
        parsed.size =
            single_size(size, option_size).map_err(|e| invalid(e.message().to_string()))?;
        if parsed.backing_file.is_some() && parsed.subformat == Subformat::Fixed {
            return Err(invalid(
                "a differencing VHD (backing_file) cannot be subformat=fixed".to_string(),
            ));
        }
        if parsed.size.is_none() && parsed.backing_file.is_none() {
            return Err(invalid("Image creation needs a size parameter".to_string()));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_rejects() {
        let o = VhdCreateOptions::from_key_values(
            None,
            &kv(&[("size", "16M"), ("force_size", "on"), ("nocow", "off")]),
        )
        .unwrap();
        assert_eq!(o.size, Some(16 << 20));
        assert!(o.force_size);
        let o = VhdCreateOptions::from_key_values(
            None,
            &kv(&[("backing_file", "p.vhd"), ("backing_fmt", "vpc")]),
        )
        .unwrap();
        assert_eq!(o.backing_file.as_deref(), Some("p.vhd"));
        assert_eq!(o.size, None);
        let msg = |size, pairs: &[(&str, &str)]| {
            let e = VhdCreateOptions::from_key_values(size, &kv(pairs)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            e.message().to_string()
        };
        assert_eq!(msg(Some(1), &[("foo", "1")]), "Invalid parameter 'foo'");
        assert_eq!(
            msg(Some(1), &[("subformat", "bad")]),
            "Parameter 'subformat' does not accept value 'bad'"
        );
        assert_eq!(msg(None, &[]), "Image creation needs a size parameter");
        assert!(msg(Some(1), &[("backing_fmt", "qcow2")]).contains("vpc"));
        assert!(msg(Some(1), &[("backing_file", "x"), ("subformat", "fixed")]).contains("fixed"));
        assert_eq!(
            msg(Some(1), &[("size", "1")]),
            "The image size must be specified only once"
        );
        assert_eq!(CREATE_OPTIONS.len(), 6);
    }
}
