//! `ImageAdmin::change_backing_file`: the backing file name and format recorded in the header, rewritten as
//! `qemu-img rebase` (QEMU's `qcow2_change_backing_file`) does.

use blk_core::{Error, ErrorKind, Result};

use crate::image::header::MAX_BACKING_NAME;
use crate::image::header_update::rewrite_header;
use crate::image::Qcow2;

/// Records `name` (of format `format`) as the image's backing file, or no backing file when `name` is
/// `None`, by rewriting the header cluster (unknown header extensions are kept). The guest data is not
/// touched: a caller that wants the guest view kept (`qemu-img rebase` without `-u`) copies the differences
/// into the image first. This handle keeps reading through the backing file it was opened with; the new
/// one is used from the next open.
///
/// A backing file needs its format (QEMU: "backing format must be specified"); names are at most 1023
/// bytes and must fit in the header cluster with the extensions.
pub(crate) fn change_backing_file(
    image: &Qcow2,
    name: Option<&str>,
    format: Option<&str>,
) -> Result<()> {
    let invalid = |message: String| Error::new(ErrorKind::InvalidInput, message);
    let name = name.filter(|n| !n.is_empty());
    if let Some(name) = name {
        if name.len() > MAX_BACKING_NAME as usize {
            return Err(invalid(format!(
                "the backing file name is {} bytes long, more than {MAX_BACKING_NAME}",
                name.len()
            )));
        }
        if format.is_none_or(str::is_empty) {
            return Err(invalid("backing format must be specified".to_string()));
        }
    }
    if image.shared.geometry.data_file_raw && name.is_some() {
        return Err(invalid(
            "Backing file and data-file-raw cannot be used at the same time".to_string(),
        ));
    }
    let mut meta = image.lock_metadata();
    let mut header = meta.header.clone();
    header.backing_file = name.map(str::to_string);
    header.extensions.backing_format = name.and(format).map(str::to_string);
    rewrite_header(image, &mut meta, header)
}
