//! Internal snapshots: opening one read-only, creating, deleting and applying them (`qemu-img snapshot`), and
//! the snapshot table `info` and `check` read.
//!
//! The operations that change snapshots are offline: each holds the metadata lock from start to end, and
//! refuses to start while a guest write is between its data write and its L2 link (the in-flight table is
//! not empty). Guest I/O must not run concurrently with them (a write that starts after would be served by the
//! new tables, but a read racing an apply may see either disk). Each keeps QEMU's order, so a crash at any
//! point leaks clusters and never corrupts. The clusters an operation freed are then punched out of the file
//! in a second hold of the lock (`discarding_freed`; those reused meanwhile are kept).
//!
//! | module | what it holds |
//! |---|---|
//! | `table` | the snapshot table: parsing (for `info` and `check`), serializing, rewriting it (QEMU's `qcow2_write_snapshots`) |
//! | `l1` | a snapshot's L1 table: checked, read, written |
//! | `refcounts` | the walk adding to the refcounts of everything an L1 table reaches and recomputing the COPIED flags (QEMU's `qcow2_update_snapshot_refcount`) |
//! | `open` | opening a snapshot read-only (its L1 table in place of the active one) |
//! | `create` | `qemu-img snapshot -c` |
//! | `delete` | `qemu-img snapshot -d` |
//! | `apply` | `qemu-img snapshot -a` |

pub(crate) mod apply;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod l1;
pub(crate) mod open;
mod refcounts;
pub(crate) mod table;

use blk_core::{Error, ErrorKind, Result};

use crate::image::Qcow2;
use crate::metadata::Metadata;
use crate::FORMAT_NAME;

/// Runs the snapshot operation `op` (which takes the metadata lock itself) with the clusters it frees
/// collected, and when it succeeded discards those still free from the image file after flushing the
/// metadata that no longer references them: QEMU's `pass-discard-snapshot`, on by default (qemu-img has no
/// way to turn it off), punches them (`fallocate` `PUNCH_HOLE`). After a failure nothing is discarded.
pub(crate) fn discarding_freed(image: &Qcow2, op: impl FnOnce() -> Result<()>) -> Result<()> {
    image.lock_metadata().collect_freed();
    let result = op();
    let mut meta = image.lock_metadata();
    match result {
        Ok(()) => {
            let file = image.host_file();
            meta.flush(file)
                .and_then(|()| meta.discard_freed(file))
                .inspect_err(|_| meta.freed = None)
        }
        Err(e) => {
            meta.freed = None;
            Err(e)
        }
    }
}

/// An error of `kind` with the format's name.
pub(crate) fn op_error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message).with_format(FORMAT_NAME)
}

/// Checks what every snapshot operation needs: a writable open, no external data file (QEMU refuses
/// internal snapshots there: "Operation not supported"), no guest write in flight.
pub(crate) fn preconditions(image: &Qcow2, meta: &Metadata) -> Result<()> {
    image.writable(blk_core::Operation::Write, 0)?;
    if meta.g.data_file {
        return Err(op_error(
            ErrorKind::Unsupported,
            "Operation not supported: internal snapshots of an image with an external data file",
        ));
    }
    if !meta.in_flight.is_empty() {
        return Err(op_error(
            ErrorKind::InvalidInput,
            "snapshot operations need an image without guest I/O in progress",
        ));
    }
    Ok(())
}
