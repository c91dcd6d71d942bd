//! What the offline image operations (`resize`, `rebase`, `amend`, `snapshot`) share: the image's format, given
//! or detected, a capability check with qemu-img's message, and the image opened for a metadata change.

use std::path::Path;
use std::sync::Arc;

use blk_core::{Error, ErrorKind, LockMode, OpenOptions, OpenedImage, Operation, Result};

use crate::detect::detect_format;
use crate::format::ImageFormat;
use crate::named::{FactoryOpener, NamedImagePolicy};
use crate::open::DiskFileParams;

/// The format of the image at `path` (`format`, or detected); errors carry the path and `operation`.
pub(crate) fn image_format(
    path: &Path,
    format: Option<ImageFormat>,
    operation: Operation,
) -> Result<ImageFormat> {
    match format {
        Some(format) => Ok(format),
        None => detect_format(path).map_err(|e| e.with_path(path).with_operation(operation)),
    }
}

/// `err` with the image's path, format and the operation.
pub(crate) fn context(err: Error, path: &Path, format: ImageFormat, operation: Operation) -> Error {
    err.with_format(format.name())
        .with_path(path)
        .with_operation(operation)
}

/// `Err(message)` unless `supported`: an operation the format does not have, refused before any file is
/// opened (with qemu-img's message).
pub(crate) fn require(supported: bool, message: impl FnOnce() -> String) -> Result<()> {
    if supported {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Unsupported, message()))
}

/// Opens the image at `path` writable and locked as `lock` says, for an offline metadata change: without its
/// backing file (never needed, and it may be the one being replaced), with the other files it names (an
/// external data file).
pub(crate) fn open_for_change(
    path: &Path,
    format: ImageFormat,
    lock: LockMode,
) -> Result<OpenedImage> {
    let params = DiskFileParams::new(path)
        .format(Some(format))
        .lock(lock)
        .named_images(NamedImagePolicy::AllowRecordedFormat)
        .skip_backing(true);
    let options = OpenOptions::new(params.host_options())
        .opener(Arc::new(FactoryOpener::for_params(&params)));
    format.descriptor().open(path, &options)
}

/// [`open_for_change`] of an encrypted image, unlocked with `key_secret` (QCOW2's `encrypt.key-secret`).
pub(crate) fn open_for_change_unlocked(
    path: &Path,
    format: ImageFormat,
    lock: LockMode,
    key_secret: Option<blk_core::Secret>,
) -> Result<OpenedImage> {
    let params = DiskFileParams::new(path)
        .format(Some(format))
        .lock(lock)
        .named_images(NamedImagePolicy::AllowRecordedFormat)
        .skip_backing(true);
    let options = OpenOptions::new(params.host_options())
        .opener(Arc::new(FactoryOpener::for_params(&params)))
        .key_secret(key_secret);
    format.descriptor().open(path, &options)
}
