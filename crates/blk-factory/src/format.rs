//! The image formats blk knows, by qemu-img's names.

use std::fmt;
use std::str::FromStr;

use blk_core::{Error, ErrorKind};

/// An image format, named as qemu-img names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A plain image: guest offset = host offset.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// Microsoft Virtual PC / VHD (qemu-img calls it `vpc`).
    Vpc,
    /// Microsoft VHDX.
    Vhdx,
}

impl ImageFormat {
    /// Every format blk knows, compiled in or not.
    pub const ALL: [ImageFormat; 4] = [
        ImageFormat::Raw,
        ImageFormat::Qcow2,
        ImageFormat::Vpc,
        ImageFormat::Vhdx,
    ];

    /// The qemu-img name: `raw`, `qcow2`, `vpc`, `vhdx`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vhdx => "vhdx",
        }
    }

    /// Whether images of the format can hold compressed clusters (what `convert -c` needs): QCOW2 only. An
    /// open image says the same through `DiskFile::compressed_write_size`.
    pub fn supports_compression(self) -> bool {
        self == ImageFormat::Qcow2
    }

    /// Whether this build of blk-factory can open the format (its Cargo feature is enabled).
    pub fn is_compiled_in(self) -> bool {
        match self {
            ImageFormat::Raw => true,
            ImageFormat::Qcow2 => cfg!(feature = "qcow2"),
            ImageFormat::Vpc => cfg!(feature = "vhd"),
            ImageFormat::Vhdx => cfg!(feature = "vhdx"),
        }
    }

    /// The error for a format this build cannot open.
    #[allow(dead_code)] // unused when every format is compiled in
    pub(crate) fn not_compiled_in(self) -> Error {
        Error::new(
            ErrorKind::UnsupportedFeature,
            format!(
                "this build of blk does not support the {} format",
                self.name()
            ),
        )
        .with_format(self.name())
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageFormat {
    type Err = Error;

    /// Parses a qemu-img format name (`vhd` is accepted for `vpc`).
    fn from_str(name: &str) -> Result<ImageFormat, Error> {
        match name {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "vpc" | "vhd" => Ok(ImageFormat::Vpc),
            "vhdx" => Ok(ImageFormat::Vhdx),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("Unknown file format '{name}'"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in ImageFormat::ALL {
            assert_eq!(f.name().parse::<ImageFormat>().unwrap(), f);
        }
        assert_eq!("vhd".parse::<ImageFormat>().unwrap(), ImageFormat::Vpc);
        assert_eq!(
            "qcow".parse::<ImageFormat>().unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
