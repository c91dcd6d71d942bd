//! The image formats this build knows: `FORMATS`, one registration per format crate, and [`ImageFormat`], a
//! format by its qemu-img name.
//!
//! Nothing else in the factory or the CLI names a format: detection, open, create, measure, resize and the
//! operations' capability checks all go through the registered [`FormatDescriptor`]s.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use blk_core::{Error, ErrorKind, FormatCapabilities, FormatDescriptor};

/// The formats compiled in, in probe order (a tie in [`detect_format`](crate::detect_format)'s scores goes to
/// the earlier one). Raw is always there; every other format sits behind its Cargo feature. Adding a format
/// is one line here.
static FORMATS: &[&dyn FormatDescriptor] = &[
    blk_raw::FORMAT,
    #[cfg(feature = "qcow2")]
    blk_qcow::FORMAT,
    #[cfg(feature = "vhd")]
    blk_vhd::FORMAT,
    #[cfg(feature = "vhdx")]
    blk_vhdx::FORMAT,
];

/// An image format compiled into this build, named as qemu-img names it.
///
/// ```
/// use blk_factory::ImageFormat;
/// let raw: ImageFormat = "raw".parse().unwrap();
/// assert_eq!(raw, ImageFormat::RAW);
/// assert!(ImageFormat::all().any(|f| f.name() == "raw"));
/// assert!("bogus".parse::<ImageFormat>().is_err());
/// ```
#[derive(Clone, Copy)]
pub struct ImageFormat(&'static dyn FormatDescriptor);

impl ImageFormat {
    /// Raw images, which every build has.
    pub const RAW: ImageFormat = ImageFormat(blk_raw::FORMAT);

    /// Every format compiled in, in probe order.
    pub fn all() -> impl Iterator<Item = ImageFormat> {
        FORMATS.iter().map(|&descriptor| ImageFormat(descriptor))
    }

    /// The format named `name` (qemu-img's name or an alias, such as `vhd` for `vpc`), if compiled in.
    pub fn by_name(name: &str) -> Option<ImageFormat> {
        ImageFormat::all().find(|f| f.name() == name || f.0.aliases().contains(&name))
    }

    /// The qemu-img name: `raw`, `qcow2`, `vpc`, `vhdx`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// What the format can do beyond guest I/O and `info`.
    pub fn capabilities(self) -> FormatCapabilities {
        self.0.capabilities()
    }

    /// Whether images of the format can hold compressed clusters (what `convert -c` needs). An open image
    /// says the same through `ImageAdmin::compressed_write_size`.
    pub fn supports_compression(self) -> bool {
        self.capabilities().compression
    }

    /// The format crate's registration.
    pub fn descriptor(self) -> &'static dyn FormatDescriptor {
        self.0
    }
}

impl PartialEq for ImageFormat {
    fn eq(&self, other: &ImageFormat) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ImageFormat {}

impl Hash for ImageFormat {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ImageFormat").field(&self.name()).finish()
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageFormat {
    type Err = Error;

    /// Parses a qemu-img format name or alias of a format compiled in.
    fn from_str(name: &str) -> Result<ImageFormat, Error> {
        ImageFormat::by_name(name).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("Unknown file format '{name}'"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in ImageFormat::all() {
            assert_eq!(f.name().parse::<ImageFormat>().unwrap(), f);
        }
        #[cfg(feature = "vhd")]
        assert_eq!("vhd".parse::<ImageFormat>().unwrap().name(), "vpc");
        assert_eq!(
            "qcow".parse::<ImageFormat>().unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ImageFormat::all()
            .flat_map(|f| std::iter::once(f.name()).chain(f.descriptor().aliases().iter().copied()))
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "two formats answer to one name");
    }
}
