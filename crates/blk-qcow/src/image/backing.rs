//! The backing file: opened read-only through the caller's [`ImageOpener`]; the mapper reads it (`Disk`
//! pieces, index `BACKING_DISK`) with zeros past its end.

use std::path::{Path, PathBuf};

use blk_core::{
    resolve_relative_to, DiskFile, ExtentKind, ImageOpener, NamedImage, NamedImageRole, Result,
};

/// An open backing file and how the image names it.
#[derive(Debug)]
pub(crate) struct Backing {
    /// The open backing image.
    pub(crate) disk: Box<dyn DiskFile>,
    /// Its size (reads past it give zeros).
    pub(crate) size: u64,
}

/// The backing file's path: the recorded name resolved against the image's directory.
pub(crate) fn backing_path(image: &Path, name: &str) -> PathBuf {
    resolve_relative_to(image, Path::new(name))
}

/// Opens the backing file named `name` by the image at `image`, at chain depth `depth`.
pub(crate) fn open(
    opener: &dyn ImageOpener,
    image: &Path,
    name: &str,
    format: Option<String>,
    depth: u32,
) -> Result<Backing> {
    let disk = opener.open_named(&NamedImage {
        path: backing_path(image, name),
        format,
        role: NamedImageRole::Backing,
        read_only: true,
        depth,
    })?;
    let size = disk.logical_size();
    Ok(Backing { disk, size })
}

impl Backing {
    /// Whether guest bytes `start..end` are known to read as zeros without reading them: past the backing
    /// file's end, or in runs its `map` reports as zero or unallocated (QEMU's `is_zero`, by block status).
    pub(crate) fn reads_zero(&self, start: u64, end: u64) -> Result<bool> {
        let end = end.min(self.size);
        let mut pos = start;
        while pos < end {
            let extent = self.disk.map(pos, end - pos)?;
            if extent.kind == ExtentKind::Data || extent.length == 0 {
                return Ok(false);
            }
            pos = pos.saturating_add(extent.length);
        }
        Ok(true)
    }
}
