//! Probing a file with a format's descriptor, as the factory's detection does.

use std::path::Path;

use blk_core::{FormatDescriptor, HostFile, HostOpenOptions, LockMode, ProbeInput, Result};

/// The bytes of a file's start the probe sees (what the factory reads).
pub const PROBE_HEAD: usize = 512;

/// `format`'s probe score for the file at `path`, given its first [`PROBE_HEAD`] bytes (fewer when the file is
/// shorter), opened read-only without locks.
pub fn probe_file(format: &dyn FormatDescriptor, path: &Path) -> Result<u32> {
    let options = HostOpenOptions {
        lock: LockMode::None,
        ..crate::ro()
    };
    let file = HostFile::open(path, options)?;
    let len = file.len()?;
    let mut head = vec![0u8; PROBE_HEAD.min(len as usize)];
    file.read_exact_at(0, &mut head)?;
    format.probe(&ProbeInput {
        file: &file,
        len,
        head: &head,
    })
}
