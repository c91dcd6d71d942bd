//! [`ImageAdmin`]: what `qemu-img` does to an open image apart from the guest's data plane.
//!
//! A VMM serves its guest through a [`DiskFile`](crate::DiskFile), which cannot change an image's metadata
//! except as guest I/O does. Reading an image's description, checking and repairing it, storing compressed
//! clusters, emptying a layer for `commit`, internal snapshots, amending options and rewriting the backing
//! file name are administration: a separate handle on the same open image, which the factory hands out
//! beside the disk (`blk_factory::open_image`) to the CLI, or to a VMM that needs a live operation.
//!
//! Every method has a default that refuses (with qemu-img's message where it has one), so a format implements
//! what it supports and nothing else.

use std::fmt::Debug;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::info::{CheckReport, ImageInfo, RepairMode, SnapshotSelector};

/// "Operation not supported", as qemu-img says it for a format without the operation.
fn not_supported(operation: Operation) -> Error {
    Error::new(ErrorKind::Unsupported, "Operation not supported").with_operation(operation)
}

/// Image administration on an open image (see the [module docs](self)).
///
/// Methods that change metadata must not run while the image serves guest writes unless the format says
/// they may (QCOW2's snapshot operations refuse while a write is in flight).
pub trait ImageAdmin: Send + Sync + Debug {
    /// The image's description for `blk info`.
    fn image_info(&self) -> Result<ImageInfo>;

    /// Checks the image's consistency (and repairs it as far as `repair` allows).
    ///
    /// Formats without metadata have nothing to check and return [`ErrorKind::Unsupported`], which the CLI
    /// reports with qemu-img's exit code 63.
    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        let _ = repair;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this image format does not support checks",
        )
        .with_operation(Operation::Check))
    }

    /// Reads `buf.len()` bytes at `pos` of the VM state a running VM saved into the image (QCOW2: past the guest
    /// range; `qemu-io read -b`). Formats without one refuse with [`ErrorKind::Unsupported`] (the default).
    fn read_vm_state(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let _ = buf;
        Err(
            Error::new(ErrorKind::Unsupported, "this image format has no VM state")
                .with_offset(pos)
                .with_operation(Operation::Read),
        )
    }

    /// The repair this open made of an image left dirty (a QCOW2 image with lazy refcounts that was not closed
    /// cleanly), as QEMU repairs it on a writable open; its `messages` are what qemu prints on stderr then.
    /// `None` when the open repaired nothing (the default).
    fn repaired_on_open(&self) -> Option<CheckReport> {
        None
    }

    /// The unit of [`write_compressed`](ImageAdmin::write_compressed) (the cluster size), or `None` when the
    /// format cannot store compressed data.
    fn compressed_write_size(&self) -> Option<u64> {
        None
    }

    /// Stores one unit of guest data compressed (qemu-img `convert -c`): `offset` is a multiple of
    /// [`compressed_write_size`](ImageAdmin::compressed_write_size) and `buf` is that long, or shorter only for
    /// the last unit of the disk. Data that does not shrink may be stored uncompressed.
    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let _ = buf;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this image format cannot store compressed data",
        )
        .with_offset(offset)
        .with_operation(Operation::Write))
    }

    /// Whether every guest byte that was never written reads as zeros in this layer and below: true for a
    /// freshly created image without backing file, so a copy into it may skip zeros (qemu's
    /// `bdrv_has_zero_init`).
    fn has_zero_init(&self) -> bool {
        false
    }

    /// Drops everything this layer stores, so that every read comes from the backing file again (qemu's
    /// `bdrv_make_empty`, what `commit` does to the committed image). Formats without layers return
    /// [`ErrorKind::Unsupported`].
    fn make_empty(&self) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this image format cannot be emptied",
        )
        .with_operation(Operation::Discard))
    }

    /// Takes an internal snapshot of the current disk named `name` (`qemu-img snapshot -c`).
    fn create_snapshot(&self, name: &str) -> Result<()> {
        let _ = name;
        Err(not_supported(Operation::Write))
    }

    /// Deletes an internal snapshot (`qemu-img snapshot -d`).
    fn delete_snapshot(&self, snapshot: &SnapshotSelector) -> Result<()> {
        let _ = snapshot;
        Err(not_supported(Operation::Write))
    }

    /// Reverts the current disk to an internal snapshot (`qemu-img snapshot -a`); the disk must already have
    /// the snapshot's size ([`snapshot_disk_size`](ImageAdmin::snapshot_disk_size)).
    fn apply_snapshot(&self, snapshot: &SnapshotSelector) -> Result<()> {
        let _ = snapshot;
        Err(not_supported(Operation::Write))
    }

    /// The virtual size the disk had when `snapshot` was taken.
    fn snapshot_disk_size(&self, snapshot: &SnapshotSelector) -> Result<u64> {
        let _ = snapshot;
        Err(not_supported(Operation::Info))
    }

    /// Changes creation options in place, as `qemu-img amend -o` does (`size` is a resize, which the factory
    /// does separately).
    fn amend(&self, options: &[(String, String)]) -> Result<()> {
        let _ = options;
        Err(not_supported(Operation::Write))
    }

    /// [`amend`](ImageAdmin::amend) with qemu-img's `--force` (QCOW2: overwrite an active LUKS key slot, erase
    /// the last active one). By default the same as `amend`.
    fn amend_with_force(&self, options: &[(String, String)], force: bool) -> Result<()> {
        let _ = force;
        self.amend(options)
    }

    /// Rewrites the backing file name and format the image records (`None`: no backing file), without
    /// touching guest data or opening either file (`qemu-img rebase -u`).
    fn change_backing_file(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        let _ = (name, format);
        Err(not_supported(Operation::ChangeBacking))
    }

    /// The image's persistent dirty bitmaps, when the format has them ([`crate::DirtyBitmaps`]).
    fn dirty_bitmaps(&self) -> Option<&dyn crate::DirtyBitmaps> {
        None
    }
}
