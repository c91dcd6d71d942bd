//! [`change_backing_file`]: the backing file an image records, as `qemu-img rebase` changes it (QCOW2 only;
//! the guest data is the caller's business).

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, LockMode, Operation, Result};

use crate::format::ImageFormat;
#[cfg(feature = "qcow2")]
use crate::offline::open_qcow2;
use crate::offline::{context, image_format};

/// What [`change_backing_file`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBackingParams {
    /// The image.
    pub path: PathBuf,
    /// Its format; `None` detects it.
    pub format: Option<ImageFormat>,
    /// The backing file name to record (as given: relative names are relative to the image's directory);
    /// `None` records no backing file.
    pub backing_file: Option<String>,
    /// The backing file's format (required with a backing file).
    pub backing_format: Option<ImageFormat>,
    /// Advisory locking while the header is rewritten.
    pub lock: LockMode,
}

/// Rewrites the backing file name and format the image `params` names records, without touching guest data
/// and without opening the old or the new backing file (`qemu-img rebase -u`). Only QCOW2 images have backing
/// files; other formats fail with "Operation not supported", as in qemu-img.
///
/// ```
/// use blk_factory::{change_backing_file, create_disk_file, ChangeBackingParams, CreateParams, ImageFormat};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// create_disk_file(&CreateParams::new(&path, ImageFormat::Qcow2, Some(1 << 20)))?;
/// change_backing_file(&ChangeBackingParams {
///     path: path.clone(),
///     format: Some(ImageFormat::Qcow2),
///     backing_file: Some("base.raw".into()),
///     backing_format: Some(ImageFormat::Raw),
///     lock: blk_core::LockMode::Auto,
/// })?;
/// # Ok(())
/// # }
/// ```
pub fn change_backing_file(params: &ChangeBackingParams) -> Result<()> {
    let format = image_format(&params.path, params.format, Operation::ChangeBacking)?;
    let ctx = |e: Error| context(e, &params.path, format, Operation::ChangeBacking);
    match format {
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => {
            // The image opens without its backing file (old or new); an external data file opens as usual.
            let image = open_qcow2(&params.path, params.lock).map_err(ctx)?;
            image
                .change_backing_file(
                    params.backing_file.as_deref(),
                    params.backing_format.map(ImageFormat::name),
                )
                .map_err(ctx)
        }
        _ => Err(ctx(Error::new(
            ErrorKind::Unsupported,
            "Operation not supported",
        ))),
    }
}
