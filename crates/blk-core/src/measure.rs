//! `qemu-img measure`: how big a new image would be ([`Measure`]), for a size or a copy of an open image
//! ([`MeasureSource`]); formats answer in [`FormatDescriptor::measure`](crate::FormatDescriptor::measure).

use crate::disk_file::DiskFile;
use crate::image_admin::ImageAdmin;

/// What to measure: a new image of a given size, or a copy of an open image.
#[derive(Clone, Copy)]
pub enum MeasureSource<'a> {
    /// A new, empty image of this many bytes (`--size`).
    Size(u64),
    /// A copy of an open image (opened read-only with the files it names, so its backing chain counts too).
    Image {
        /// Its data plane: size and allocation map.
        disk: &'a dyn DiskFile,
        /// Its description (persistent bitmaps count too).
        admin: &'a dyn ImageAdmin,
    },
}

impl std::fmt::Debug for MeasureSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeasureSource::Size(size) => f.debug_tuple("Size").field(size).finish(),
            MeasureSource::Image { disk, .. } => {
                f.debug_tuple("Image").field(&disk.logical_size()).finish()
            }
        }
    }
}

/// How big the new image would be (qemu's `BlockMeasureInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// Bytes needed for the data to be copied (or none, for a size) plus metadata.
    pub required: u64,
    /// Bytes with every cluster allocated.
    pub fully_allocated: u64,
    /// Bytes for the input's persistent bitmaps, when both the input and the target can hold them (a QCOW2 v3
    /// input and target).
    pub bitmaps: Option<u64>,
}
