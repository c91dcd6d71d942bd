//! [`change_snapshots`]: `qemu-img snapshot -c / -d / -a` (internal snapshots are a QCOW2 feature).

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, LockMode, Operation, Result, SnapshotSelector};

use crate::format::ImageFormat;
#[cfg(feature = "qcow2")]
use crate::offline::open_qcow2;
use crate::offline::{context, image_format};

/// What [`change_snapshots`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOp {
    /// Take a disk-only snapshot of the current disk with this name (`-c`).
    Create(String),
    /// Delete a snapshot (`-d`).
    Delete(SnapshotSelector),
    /// Revert the current disk to a snapshot (`-a`).
    Apply(SnapshotSelector),
}

/// The image and the operation for [`change_snapshots`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotParams {
    /// The image.
    pub path: PathBuf,
    /// Its format; `None` detects it.
    pub format: Option<ImageFormat>,
    /// The operation.
    pub op: SnapshotOp,
    /// Advisory locking while the image is changed.
    pub lock: LockMode,
}

/// Creates, deletes or applies an internal snapshot of the image `params` names, which must not be in use (it
/// is opened writable and locked; its backing file is not opened). Applying a snapshot taken at another disk
/// size resizes the image to that size first, as QEMU does. Formats without internal snapshots fail with
/// "Operation not supported", as in qemu-img.
///
/// ```
/// use blk_core::SnapshotSelector;
/// use blk_factory::{change_snapshots, create_disk_file, CreateParams, ImageFormat, SnapshotOp, SnapshotParams};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// create_disk_file(&CreateParams::new(&path, ImageFormat::Qcow2, Some(1 << 20)))?;
/// let params = |op| SnapshotParams { path: path.clone(), format: None, op, lock: blk_core::LockMode::Auto };
/// change_snapshots(&params(SnapshotOp::Create("before-upgrade".into())))?;
/// change_snapshots(&params(SnapshotOp::Apply(SnapshotSelector::parse("before-upgrade"))))?;
/// change_snapshots(&params(SnapshotOp::Delete(SnapshotSelector::Id("1".into()))))?;
/// # Ok(())
/// # }
/// ```
pub fn change_snapshots(params: &SnapshotParams) -> Result<()> {
    let format = image_format(&params.path, params.format, Operation::Write)?;
    let ctx = |e: Error| context(e, &params.path, format, Operation::Write);
    match format {
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => {
            let open_image = || open_qcow2(&params.path, params.lock).map_err(ctx);
            let mut image = open_image()?;
            if let SnapshotOp::Apply(selector) = &params.op {
                // As QEMU: a snapshot taken at another disk size brings that size back (resized first).
                let size = image.snapshot_disk_size(selector).map_err(ctx)?;
                if size != blk_core::DiskFile::logical_size(&image) {
                    drop(image);
                    let resize = crate::ResizeParams {
                        format: Some(format),
                        shrink: true,
                        lock: params.lock,
                        ..crate::ResizeParams::new(&params.path, size)
                    };
                    crate::resize_disk_file(&resize)?;
                    image = open_image()?;
                }
            }
            match &params.op {
                SnapshotOp::Create(name) => image.create_snapshot(name),
                SnapshotOp::Delete(selector) => image.delete_snapshot(selector),
                SnapshotOp::Apply(selector) => image.apply_snapshot(selector),
            }
            .map_err(ctx)?;
            blk_core::DiskFile::flush(&image).map_err(ctx)
        }
        _ => Err(ctx(Error::new(
            ErrorKind::Unsupported,
            "Operation not supported",
        ))),
    }
}
