//! The VHD (vpc) disk-image format: fixed, dynamic and differencing images.
//!
//! Work in progress: the format is being written; see the project's issues.

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "vpc";
