//! Rewriting the header cluster (QEMU's `qcow2_update_header`): for `rebase` and `amend`.

use blk_core::{Error, ErrorKind, Result};

use crate::image::header::Header;
use crate::image::Qcow2;
use crate::metadata::Metadata;

/// Writes `header` over cluster 0 (the rest of the cluster cleared, as QEMU does) after everything cached
/// reached the disk, syncs, and keeps it as the in-memory header. Refuses a header that does not fit in the
/// cluster, and images whose tables start in cluster 0 (they would be overwritten).
pub(crate) fn rewrite_header(image: &Qcow2, meta: &mut Metadata, header: Header) -> Result<()> {
    let file = &image.shared.file;
    let cluster_size = image.shared.geometry.cluster_size;
    for (what, offset, used) in [
        ("L1 table", header.l1_table_offset, true),
        ("refcount table", header.refcount_table_offset, true),
        (
            "snapshot table",
            header.snapshots_offset,
            header.nb_snapshots > 0,
        ),
    ] {
        if used && offset < cluster_size {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!("the {what} starts in the header cluster (at {offset:#x})"),
            ));
        }
    }
    let bytes = header.serialize();
    if bytes.len() as u64 > cluster_size {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the header needs {} bytes, more than the {cluster_size}-byte header cluster",
                bytes.len()
            ),
        ));
    }
    meta.flush(file)?;
    let mut cluster0 = bytes;
    cluster0.resize(cluster_size as usize, 0);
    file.write_all_at(0, &cluster0)?;
    file.sync_data()?;
    meta.header = header;
    Ok(())
}
