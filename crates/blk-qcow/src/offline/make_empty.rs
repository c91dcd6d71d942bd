//! `ImageAdmin::make_empty`: every guest cluster unmapped (QEMU's `qcow2_make_empty`), for `commit`.

use blk_core::Result;

use crate::image::Qcow2;
use crate::offline::resize::discard_tail;

/// Clears every L2 entry (QEMU's full discard: entries become unallocated, not zero-flagged, so the
/// backing file shows through again) and frees the clusters they referenced, one L2 table at a time with
/// the cleared table on disk before the references drop; then writes everything back.
pub(crate) fn make_empty(image: &Qcow2) -> Result<()> {
    let mut meta = image.lock_metadata();
    // While a write is between allocating and linking a cluster it must not be emptied under it; the
    // callers (`commit`) hold the only handle, so none are in flight.
    discard_tail(image, &mut meta, 0)?;
    meta.flush(&image.shared.file)
}
