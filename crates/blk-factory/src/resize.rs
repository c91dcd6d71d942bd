//! [`resize_disk_file`]: `qemu-img resize`, for the formats that can resize (raw and QCOW2).

use std::path::PathBuf;

use blk_core::{LockMode, Operation, ResizeRequest, Result};

use crate::format::ImageFormat;
use crate::offline::{context, image_format};

/// What [`resize_disk_file`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeParams {
    /// The image.
    pub path: PathBuf,
    /// Its format; `None` detects it.
    pub format: Option<ImageFormat>,
    /// The new virtual size in bytes.
    pub size: u64,
    /// Allow a smaller size (qemu-img's `--shrink`).
    pub shrink: bool,
    /// qemu-img's `--preallocation` for the added range: `off`, `falloc` or `full` (raw only; `None` is off).
    pub preallocation: Option<String>,
    /// Advisory locking while the image is changed.
    pub lock: LockMode,
}

impl ResizeParams {
    /// Resizing `path` to `size` bytes: format detected, growing only, no preallocation, locked.
    pub fn new(path: impl Into<PathBuf>, size: u64) -> ResizeParams {
        ResizeParams {
            path: path.into(),
            format: None,
            size,
            shrink: false,
            preallocation: None,
            lock: LockMode::Auto,
        }
    }
}

/// Changes the virtual size of the image `params` names, as `qemu-img resize` does: the image must not be in
/// use (it is opened writable and locked), a smaller size needs [`ResizeParams::shrink`], and only raw and
/// QCOW2 images can be resized (VHD and VHDX fail as in qemu-img: "Image format driver does not support
/// resize"). Files named inside the image are not opened.
///
/// ```
/// use blk_factory::{create_disk_file, resize_disk_file, CreateParams, ImageFormat, ResizeParams};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.img");
/// create_disk_file(&CreateParams::new(&path, ImageFormat::RAW, Some(1 << 20)))?;
/// resize_disk_file(&ResizeParams::new(&path, 4 << 20))?;
/// assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
/// # Ok(())
/// # }
/// ```
pub fn resize_disk_file(params: &ResizeParams) -> Result<()> {
    let format = image_format(&params.path, params.format, Operation::Resize)?;
    let request = ResizeRequest {
        path: &params.path,
        size: params.size,
        shrink: params.shrink,
        preallocation: params.preallocation.as_deref(),
        lock: params.lock,
    };
    format
        .descriptor()
        .resize(&request)
        .map_err(|e| context(e, &params.path, format, Operation::Resize))
}
