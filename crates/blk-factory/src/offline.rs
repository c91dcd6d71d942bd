//! What the offline image operations (`resize`, `rebase`, `amend`, `snapshot`) share: the image's format,
//! given or detected and compiled in, and a QCOW2 image opened for a metadata change.

use std::path::Path;

use blk_core::{Error, Operation, Result};

use crate::detect::detect_format;
use crate::format::ImageFormat;

/// The format of the image at `path` (`format`, or detected), refused when this build lacks it; errors carry
/// the path, the format and `operation`.
pub(crate) fn image_format(
    path: &Path,
    format: Option<ImageFormat>,
    operation: Operation,
) -> Result<ImageFormat> {
    let format = match format {
        Some(format) => format,
        None => detect_format(path).map_err(|e| e.with_path(path).with_operation(operation))?,
    };
    if !format.is_compiled_in() {
        return Err(context(format.not_compiled_in(), path, format, operation));
    }
    Ok(format)
}

/// `err` with the image's path, format and the operation.
pub(crate) fn context(err: Error, path: &Path, format: ImageFormat, operation: Operation) -> Error {
    err.with_format(format.name())
        .with_path(path)
        .with_operation(operation)
}

/// Opens the QCOW2 image at `path` writable and locked as `lock` says, for an offline metadata change: without
/// its backing file (never needed, and it may be the one being replaced), with its external data file.
#[cfg(feature = "qcow2")]
pub(crate) fn open_qcow2(path: &Path, lock: blk_core::LockMode) -> Result<blk_qcow::Qcow2> {
    use crate::open::DiskFileParams;
    use crate::{FactoryOpener, NamedImagePolicy};
    let open = DiskFileParams::new(path)
        .format(Some(ImageFormat::Qcow2))
        .lock(lock)
        .named_images(NamedImagePolicy::AllowRecordedFormat)
        .skip_backing(true);
    let options = blk_qcow::Qcow2OpenOptions::new(
        open.host_options(),
        std::sync::Arc::new(FactoryOpener::for_params(&open)),
    );
    blk_qcow::Qcow2::open(path, &options)
}
