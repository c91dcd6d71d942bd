//! The QCOW2 disk-image format (versions 2 and 3): clusters, L1/L2 tables, refcounts, compression and backing chains.
//!
//! Work in progress: the format is being written; see the project's issues.

/// The format's name, as qemu-img spells it.
pub const FORMAT_NAME: &str = "qcow2";
