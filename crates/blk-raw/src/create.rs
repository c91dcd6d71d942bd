//! [`Raw::create`]: a new raw image, sparse or preallocated as qemu's file driver makes it.

use std::path::Path;

use blk_core::{Error, ErrorKind, HostFile, HostOpenOptions, Operation, Result};

use crate::options::{Preallocation, RawCreateOptions};
use crate::preallocation::extend;
use crate::raw::Raw;
use crate::FORMAT_NAME;

/// The sector size qemu rounds new images up to.
const SECTOR: u64 = 512;

/// What qemu's `allocate_first_block` writes for images of at least this size (`MAX_BLOCKSIZE`).
const FIRST_BLOCK: u64 = 4096;

impl Raw {
    /// Creates (or truncates) the raw image at `path` and returns it opened for writing, locked exclusively.
    /// An existing file another process holds open (and locked) is left alone: the call fails with
    /// [`ErrorKind::Locked`].
    ///
    /// The size is rounded up to a multiple of 512 bytes, as `qemu-img create -f raw` does. With
    /// [`Preallocation::Falloc`] the blocks are reserved with `fallocate` (failing where the file system cannot),
    /// with [`Preallocation::Full`] zeros are written over the whole image and synced.
    pub fn create(path: impl AsRef<Path>, options: &RawCreateOptions) -> Result<Raw> {
        let path = path.as_ref();
        let ctx = |e: Error| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Create)
        };
        let size = options
            .size
            .checked_next_multiple_of(SECTOR)
            .ok_or_else(|| ctx(too_large(None)))?;
        // HostFile::create locks before truncating: an image in use fails with `Locked` and is left intact.
        let file = HostFile::create(path, HostOpenOptions::default()).map_err(ctx)?;
        preallocate(&file, size, options.preallocation).map_err(|e| {
            if e.errno() == libc::EFBIG {
                ctx(too_large(Some(e)))
            } else {
                ctx(e)
            }
        })?;
        Raw::from_host_file(file)
    }
}

/// qemu-img's message for a size the file system cannot hold.
fn too_large(cause: Option<Error>) -> Error {
    let err = Error::new(
        ErrorKind::InvalidInput,
        format!("The image size is too large for file format '{FORMAT_NAME}'"),
    );
    match cause {
        Some(cause) => err.with_source(cause),
        None => err,
    }
}

/// Writes zeros over the first block of a new image, as qemu's file driver does (`allocate_first_block`), so
/// that a later O_DIRECT open can probe the alignment on allocated storage, and so that `qemu-img map` shows a
/// blk-created image exactly like a qemu-created one (data in the first 4 KiB, or the first 512 bytes of a
/// smaller image). Like qemu, failures are ignored: this is an optimization.
fn allocate_first_block(file: &HostFile, size: u64) {
    let len = if size < FIRST_BLOCK {
        SECTOR
    } else {
        FIRST_BLOCK
    };
    if size > 0 {
        // `len` is 512 or 4096.
        let _ = file.write_all_at(0, &[0u8; FIRST_BLOCK as usize][..len as usize]);
    }
}

/// Gives the empty `file` its `size` and allocation.
fn preallocate(file: &HostFile, size: u64, mode: Preallocation) -> Result<()> {
    extend(file, 0, size, mode)?;
    if mode != Preallocation::Full {
        allocate_first_block(file, size);
    }
    Ok(())
}
