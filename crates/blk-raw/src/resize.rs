//! [`resize()`]: a raw image's new size, as `qemu-img resize -f raw` sets it.

use std::path::Path;

use blk_core::{Error, ErrorKind, HostFile, HostOpenOptions, Operation, Result};

use crate::options::Preallocation;
use crate::preallocation::extend;
use crate::FORMAT_NAME;

/// How [`resize()`] changes the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawResizeOptions {
    /// How to open the file (it is opened writable whatever `read_only` says; the lock mode applies).
    pub host: HostOpenOptions,
    /// Allow a smaller size (qemu-img's `--shrink`): the data past the new end is lost.
    pub shrink: bool,
    /// How the added range is allocated (qemu-img's `--preallocation`); only for growing.
    pub preallocation: Preallocation,
}

/// Sets the size of the raw image at `path` to `new_size` bytes, as `qemu-img resize -f raw` does: the file
/// gets exactly that length (no rounding), a smaller size needs [`RawResizeOptions::shrink`], and a block
/// device cannot grow (a smaller size leaves it unchanged).
///
/// ```
/// use blk_raw::{Preallocation, Raw, RawCreateOptions, RawResizeOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.img");
/// drop(Raw::create(&path, &RawCreateOptions { size: 1 << 20, preallocation: Preallocation::Off })?);
/// blk_raw::resize(&path, 2 << 20, &RawResizeOptions::default())?;
/// let err = blk_raw::resize(&path, 1 << 20, &RawResizeOptions::default()).unwrap_err();
/// assert!(err.to_string().contains("--shrink"));
/// # Ok(())
/// # }
/// ```
pub fn resize(path: impl AsRef<Path>, new_size: u64, options: &RawResizeOptions) -> Result<()> {
    let path = path.as_ref();
    let ctx = |e: Error| {
        e.with_format(FORMAT_NAME)
            .with_path(path)
            .with_operation(Operation::Resize)
    };
    let host = HostOpenOptions {
        read_only: false,
        ..options.host
    };
    let file = HostFile::open(path, host).map_err(ctx)?;
    let length = file.len().map_err(ctx)?;
    // The size qemu compares with is the one it reports: whole sectors.
    let current = length.div_ceil(512) * 512;
    if new_size < current && !options.shrink {
        return Err(ctx(Error::new(
            ErrorKind::InvalidInput,
            "Use the --shrink option to perform a shrink operation.",
        )));
    }
    if new_size < length && options.preallocation != Preallocation::Off {
        return Err(ctx(Error::new(
            ErrorKind::InvalidInput,
            "Preallocation is only possible when growing an image",
        )));
    }
    if file.is_block_device() {
        if new_size > length {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                "Cannot grow device files",
            )));
        }
        return Ok(());
    }
    if new_size <= length {
        file.set_len(new_size).map_err(ctx)?;
    } else {
        extend(&file, length, new_size, options.preallocation).map_err(ctx)?;
    }
    file.sync_data().map_err(ctx)
}
