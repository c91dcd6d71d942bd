//! The VHDX disk-image format: dynamic, fixed and differencing images with a crash-safe metadata log.
//!
//! Work in progress: the format is being written; see the project's issues.

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "vhdx";
