//! [`ImageAdmin`] for [`Vhdx`]: `info` and `check` in qemu-img's terms for vhdx, and zero initialisation.

use blk_core::{CheckReport, ImageAdmin, ImageInfo, Operation, RepairMode, Result};

use crate::bat;
use crate::vhdx::Vhdx;
use crate::FORMAT_NAME;

impl ImageAdmin for Vhdx {
    /// What `qemu-img info` shows for vhdx: cluster size = block size, no format-specific data; a
    /// differencing image also shows its parent as backing file (format `vhdx`).
    fn image_info(&self) -> Result<ImageInfo> {
        let parent = self.shared.parent.as_ref();
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.shared.path.clone(),
            virtual_size: self.shared.geometry.virtual_size,
            actual_size: self
                .file
                .allocated_size()
                .map_err(|e| self.context(e, Operation::Info))?,
            cluster_size: Some(self.shared.geometry.block_size),
            dirty: false,
            backing_filename: parent.map(|p| p.recorded.clone()),
            full_backing_filename: parent.map(|p| p.path.clone()),
            backing_format: parent.map(|_| FORMAT_NAME.to_string()),
            snapshots: Vec::new(),
            format_specific: None,
        })
    }

    /// qemu-img check for vhdx (`vhdx_co_check`): a log replayed at open counts as one fixed corruption; BAT
    /// entries past the end of the file or overlapping metadata (and, here, each other) are corruptions, not
    /// repaired. The open already replayed the log when it was writable (`-r all` opens writable).
    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        let _ = repair;
        let mut report = CheckReport::default();
        if self.shared.log_replayed {
            report.corruptions_fixed += 1;
            report.messages.push("the log was replayed".to_string());
        }
        let file_len = self
            .file
            .len()
            .map_err(|e| self.context(e, Operation::Check))?;
        let problems = bat::check_entries(
            &self.shared.bat_snapshot(),
            &self.shared.geometry,
            file_len,
            &self.shared.fixed_regions(),
        );
        report.corruptions += problems.len() as u64;
        report
            .messages
            .extend(problems.into_iter().map(|p| p.message));
        Ok(report)
    }

    /// True for an image without parent whose blocks hold no data in this file.
    fn has_zero_init(&self) -> bool {
        let has_parent = self.shared.parent.is_some();
        !has_parent
            && !(0..self.shared.bat.len()).any(|index| {
                bat::PayloadBlock::of(self.shared.entry(index), has_parent)
                    .host()
                    .is_some()
            })
    }
}
