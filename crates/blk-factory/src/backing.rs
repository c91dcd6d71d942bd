//! [`change_backing_file`]: the backing file an image records, as `qemu-img rebase` changes it (formats that
//! can rewrite it: QCOW2; the guest data is the caller's business).

use std::path::PathBuf;

use blk_core::{Error, LockMode, Operation, Result};

use crate::format::ImageFormat;
use crate::offline::{context, image_format, open_for_change, require};

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
/// and without opening the old or the new backing file (`qemu-img rebase -u`). Formats that cannot rewrite it
/// fail with "Operation not supported", as in qemu-img.
///
/// ```
/// use blk_factory::{change_backing_file, create_disk_file, ChangeBackingParams, CreateParams, ImageFormat};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// let qcow2: ImageFormat = "qcow2".parse()?;
/// create_disk_file(&CreateParams::new(&path, qcow2, Some(1 << 20)))?;
/// change_backing_file(&ChangeBackingParams {
///     path: path.clone(),
///     format: Some(qcow2),
///     backing_file: Some("base.raw".into()),
///     backing_format: Some(ImageFormat::RAW),
///     lock: blk_core::LockMode::Auto,
/// })?;
/// # Ok(())
/// # }
/// ```
pub fn change_backing_file(params: &ChangeBackingParams) -> Result<()> {
    let format = image_format(&params.path, params.format, Operation::ChangeBacking)?;
    let ctx = |e: Error| context(e, &params.path, format, Operation::ChangeBacking);
    require(format.capabilities().change_backing_file, || {
        "Operation not supported".to_string()
    })
    .map_err(ctx)?;
    // The image opens without its backing file (old or new); an external data file opens as usual.
    let image = open_for_change(&params.path, format, params.lock).map_err(ctx)?;
    image
        .admin
        .change_backing_file(
            params.backing_file.as_deref(),
            params.backing_format.map(ImageFormat::name),
        )
        .map_err(ctx)
}
