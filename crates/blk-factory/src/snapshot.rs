//! [`change_snapshots`]: `qemu-img snapshot -c / -d / -a`, for formats with internal snapshots (QCOW2).

use std::path::PathBuf;

use blk_core::{Error, LockMode, Operation, Result, SnapshotSelector};

use crate::format::ImageFormat;
use crate::offline::{context, image_format, open_for_change, require};

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
/// create_disk_file(&CreateParams::new(&path, "qcow2".parse::<ImageFormat>()?, Some(1 << 20)))?;
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
    require(format.capabilities().internal_snapshots, || {
        "Operation not supported".to_string()
    })
    .map_err(ctx)?;
    let open = || open_for_change(&params.path, format, params.lock).map_err(ctx);
    let mut image = open()?;
    if let SnapshotOp::Apply(selector) = &params.op {
        // As QEMU: a snapshot taken at another disk size brings that size back (resized first).
        let size = image.admin.snapshot_disk_size(selector).map_err(ctx)?;
        if size != image.disk.logical_size() {
            drop(image);
            let resize = crate::ResizeParams {
                format: Some(format),
                shrink: true,
                lock: params.lock,
                ..crate::ResizeParams::new(&params.path, size)
            };
            crate::resize_disk_file(&resize)?;
            image = open()?;
        }
    }
    match &params.op {
        SnapshotOp::Create(name) => image.admin.create_snapshot(name),
        SnapshotOp::Delete(selector) => image.admin.delete_snapshot(selector),
        SnapshotOp::Apply(selector) => image.admin.apply_snapshot(selector),
    }
    .map_err(ctx)?;
    image.disk.flush().map_err(ctx)
}
