//! The external data file (incompatible bit 2, named by header extension 0x44415441): guest data clusters
//! live there at their L2 host offsets, the metadata stays in the qcow2 file. As QEMU does, a data cluster is
//! allocated at its guest offset (so with `data_file_raw` the data file is a raw image of the guest), is not
//! counted in the qcow2 file's refcounts, and is zeroed in the data file when freed. Compressed clusters are
//! refused.
//!
//! It is opened through the caller's [`ImageOpener`] (role `DataFile`, format `raw`, writable like the image,
//! the path relative to the image's directory; QEMU opens it relative to its working directory). An L2 entry
//! with offset 0 and the COPIED bit is guest cluster 0 there. Creating makes the data file (the virtual size)
//! next to the image; `data_file_raw` (kept on writable opens) forces metadata preallocation. `check` (and so
//! the repair of a dirty lazy-refcounts image on open) knows that data-file clusters are not refcounted.
//! Data-file offsets are not checked against anything (QEMU bounds them by nothing either): reads past the
//! data file's end give zeros.
//!
//! Guest data I/O to it is the mapper's and the slow path's. When the opened data file is a host file byte for
//! byte ([`DiskFile::identity_file`]: raw, as the factory opens it), each handle holds a descriptor of it as
//! its second host file (`DATA_HOST_FILE`) and the mapper's pieces there are host pieces, served on the
//! queue's host queue like the image file's; otherwise they are `Disk` pieces (index `DATA_FILE_DISK`) on the
//! worker pool. With
//! compressed clusters refused here, it is read as `CorruptImage` and written as `UnsupportedFeature`.

use std::path::{Path, PathBuf};

use blk_core::{resolve_relative_to, DiskFile, ImageOpener, NamedImage, NamedImageRole, Result};

/// An open external data file.
#[derive(Debug)]
pub(crate) struct DataFile {
    /// The open data file (raw).
    pub(crate) disk: Box<dyn DiskFile>,
    /// The name recorded in the image.
    pub(crate) name: String,
}

/// The data file's path: the recorded name resolved against the image's directory.
pub(crate) fn data_file_path(image: &Path, name: &str) -> PathBuf {
    resolve_relative_to(image, Path::new(name))
}

/// Opens the data file named `name` by the image at `image` as raw, writable unless `read_only`.
pub(crate) fn open(
    opener: &dyn ImageOpener,
    image: &Path,
    name: &str,
    read_only: bool,
) -> Result<DataFile> {
    let disk = opener.open_named(&NamedImage {
        path: data_file_path(image, name),
        format: Some("raw".to_string()),
        role: NamedImageRole::DataFile,
        read_only,
        depth: 1,
    })?;
    Ok(DataFile {
        disk,
        name: name.to_string(),
    })
}
