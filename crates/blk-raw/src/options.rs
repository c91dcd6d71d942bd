//! How to create a raw image: [`RawCreateOptions`], [`Preallocation`], and qemu-img's `-o` options for raw.

use std::fmt;
use std::str::FromStr;

use blk_core::{
    parse_bool_param, parse_size_param, single_size, CreateOptionInfo, Error, ErrorKind, Operation,
    Result,
};

use crate::FORMAT_NAME;

/// How much of a new raw image to allocate up front (qemu's `preallocation` for the file driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Sparse: set the length only.
    #[default]
    Off,
    /// Reserve the blocks with `fallocate` without writing them.
    Falloc,
    /// Write zeros over the whole image.
    Full,
}

impl Preallocation {
    /// The name qemu-img uses: `off`, `falloc`, `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

impl fmt::Display for Preallocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preallocation {
    type Err = Error;

    /// Parses qemu's names; `metadata` (a qcow2-only mode) and anything else fail with
    /// [`ErrorKind::InvalidInput`] and qemu-img's messages.
    fn from_str(text: &str) -> Result<Preallocation> {
        match text {
            "off" => Ok(Preallocation::Off),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            "metadata" => Err(invalid(format!("Unsupported preallocation mode: {text}"))),
            _ => Err(invalid(format!("invalid parameter value: {text}"))),
        }
    }
}

/// What a new raw image looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCreateOptions {
    /// The guest-visible size in bytes ([`Raw::create`](crate::Raw::create) rounds it up to 512 bytes, as qemu
    /// does).
    pub size: u64,
    /// How much to allocate up front.
    pub preallocation: Preallocation,
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

/// The options `create -f raw -o ...` accepts, in qemu-img's `-o help` order and words.
pub const CREATE_OPTIONS: &[CreateOptionInfo] = &[
    CreateOptionInfo {
        name: "extent_size_hint",
        value_type: "size",
        help: "Extent size hint for the image file, 0 to disable",
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
];

impl RawCreateOptions {
    /// Parses qemu-img's `-o` options for raw, with `size` the positional size argument if one was given.
    ///
    /// Keys, as `qemu-img create -f raw -o help` lists them:
    /// - `size`: qemu's size syntax (`16M`, `1.5G`, `0x1000`, see [`parse_size_param`]); giving it both here and
    ///   as `size` fails ("The image size must be specified only once"), and one of them is required;
    /// - `preallocation`: `off`, `falloc` or `full` (`metadata` is qcow2-only and rejected, as qemu does);
    /// - `extent_size_hint` (a size) and `nocow` (a boolean): validated and ignored, as qemu ignores them off
    ///   XFS and btrfs.
    ///
    /// Any other key fails with [`ErrorKind::InvalidInput`] "Invalid parameter 'KEY'". A key given twice takes
    /// its last value.
    ///
    /// ```
    /// use blk_raw::{Preallocation, RawCreateOptions};
    /// let opts = [("preallocation".to_string(), "falloc".to_string())];
    /// let parsed = RawCreateOptions::from_key_values(Some(16 << 20), &opts).unwrap();
    /// assert_eq!(parsed, RawCreateOptions { size: 16 << 20, preallocation: Preallocation::Falloc });
    /// let err = RawCreateOptions::from_key_values(Some(1), &[("foo".into(), "1".into())]).unwrap_err();
    /// assert_eq!(err.kind(), blk_core::ErrorKind::InvalidInput);
    /// assert!(err.to_string().contains("Invalid parameter 'foo'"));
    /// ```
    pub fn from_key_values(
        size: Option<u64>,
        options: &[(String, String)],
    ) -> Result<RawCreateOptions> {
        let mut option_size = None;
        let mut preallocation = None;
        for (key, value) in options {
            match key.as_str() {
                "size" => {
                    option_size = Some(parse_size_param(key, value).map_err(|e| {
                        e.with_format(FORMAT_NAME).with_operation(Operation::Create)
                    })?)
                }
                "preallocation" => preallocation = Some(value.as_str()),
                "extent_size_hint" => {
                    parse_size_param(key, value).map_err(|e| {
                        e.with_format(FORMAT_NAME).with_operation(Operation::Create)
                    })?;
                }
                "nocow" => {
                    parse_bool(key, value)?;
                }
                _ => return Err(invalid(format!("Invalid parameter '{key}'"))),
            }
        }
        let size = single_size(size, option_size)
            .map_err(|e| invalid(e.message().to_string()))?
            .ok_or_else(|| invalid("Image creation needs a size parameter".to_string()))?;
        let preallocation = match preallocation {
            Some(text) => text.parse()?,
            None => Preallocation::Off,
        };
        Ok(RawCreateOptions {
            size,
            preallocation,
        })
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

    fn message(size: Option<u64>, pairs: &[(&str, &str)]) -> String {
        let err = RawCreateOptions::from_key_values(size, &kv(pairs)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.format(), Some("raw"));
        err.message().to_string()
    }

    #[test]
    fn parses_sizes_and_modes() {
        let parse = |size, pairs: &[(&str, &str)]| {
            RawCreateOptions::from_key_values(size, &kv(pairs)).unwrap()
        };
        assert_eq!(
            parse(None, &[("size", "16M")]),
            RawCreateOptions {
                size: 16 << 20,
                preallocation: Preallocation::Off
            }
        );
        assert_eq!(parse(Some(5), &[]).size, 5);
        assert_eq!(
            parse(None, &[("size", "1K"), ("size", "2K")]).size,
            2048,
            "last value wins"
        );
        for (text, mode) in [
            ("off", Preallocation::Off),
            ("falloc", Preallocation::Falloc),
            ("full", Preallocation::Full),
        ] {
            let parsed = parse(Some(1), &[("preallocation", text)]);
            assert_eq!(parsed.preallocation, mode);
            assert_eq!(mode.to_string(), text);
        }
        let parsed = parse(
            Some(1),
            &[
                ("extent_size_hint", "1M"),
                ("nocow", "on"),
                ("preallocation", "falloc"),
                ("preallocation", "full"),
            ],
        );
        assert_eq!(parsed.preallocation, Preallocation::Full);
        assert_eq!(Preallocation::default(), Preallocation::Off);
    }

    // Messages as qemu-img 10.0 prints them for `create -f raw`.
    #[test]
    fn rejects_like_qemu() {
        assert_eq!(message(Some(1), &[("foo", "1")]), "Invalid parameter 'foo'");
        assert_eq!(
            message(Some(1), &[("cluster_size", "64k")]),
            "Invalid parameter 'cluster_size'"
        );
        assert_eq!(message(None, &[]), "Image creation needs a size parameter");
        assert_eq!(
            message(Some(1), &[("size", "1k")]),
            "The image size must be specified only once"
        );
        assert_eq!(
            message(Some(1), &[("preallocation", "metadata")]),
            "Unsupported preallocation mode: metadata"
        );
        assert_eq!(
            message(Some(1), &[("preallocation", "foo")]),
            "invalid parameter value: foo"
        );
        assert_eq!(
            message(Some(1), &[("nocow", "maybe")]),
            "Parameter 'nocow' expects 'on' or 'off'"
        );
        assert!(message(Some(1), &[("extent_size_hint", "3x")])
            .starts_with("Parameter 'extent_size_hint' expects a non-negative number below 2^64"));
        assert_eq!(
            message(None, &[("size", "-1")]),
            "Value '-1' is out of range for parameter 'size'"
        );
    }
}
