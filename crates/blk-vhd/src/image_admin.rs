//! [`ImageAdmin`] for [`Vhd`]: `image_info` as `qemu-img info -f vpc` shows it, `check` (the `check` module),
//! and whether a new image reads as zeros.

use blk_core::{CheckReport, ImageAdmin, ImageInfo, Operation, RepairMode, Result};

use crate::footer::DiskType;
use crate::vhd::Vhd;
use crate::FORMAT_NAME;

impl ImageAdmin for Vhd {
    fn image_info(&self) -> Result<ImageInfo> {
        let parent = self.shared.parent.as_ref();
        let actual_size = self
            .file
            .allocated_size()
            .map_err(|e| self.context(e, Operation::Info, None))?;
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.file.path().to_path_buf(),
            virtual_size: self.shared.size,
            actual_size,
            cluster_size: self.block_size(),
            dirty: false,
            backing_filename: parent.map(|p| p.recorded.clone()),
            full_backing_filename: parent.map(|p| p.path.clone()),
            backing_format: parent.map(|_| FORMAT_NAME.to_string()),
            snapshots: Vec::new(),
            format_specific: None,
        })
    }

    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        self.check_image(repair)
            .map_err(|e| self.context(e, Operation::Check, None))
    }

    /// Dynamic disks read unallocated blocks as zeros; fixed ones are as zero as their file (a new one is a
    /// hole); differencing ones show their parent.
    fn has_zero_init(&self) -> bool {
        match self.shared.disk_type {
            DiskType::Dynamic => true,
            DiskType::Fixed => !self.file.is_block_device(),
            DiskType::Differencing => false,
        }
    }
}
