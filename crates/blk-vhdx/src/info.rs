//! `info`, `check` and the real allocation status, in qemu-img's terms for vhdx.

use blk_core::{CheckReport, Extent, ExtentKind, ImageInfo, RepairMode, Result};

use crate::bat::{self, *};
use crate::vhdx::Vhdx;
use crate::FORMAT_NAME;

impl Vhdx {
    /// What `qemu-img info` shows for vhdx: cluster size = block size, no format-specific data; a
    /// differencing image also shows its parent as backing file (format `vhdx`).
    pub(crate) fn info(&self) -> Result<ImageInfo> {
        let parent = self.shared.parent.as_ref();
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: self.shared.path.clone(),
            virtual_size: self.shared.geometry.virtual_size,
            actual_size: self.file.allocated_size()?,
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
    pub(crate) fn check_image(&self, repair: RepairMode) -> Result<CheckReport> {
        let _ = repair;
        let mut report = CheckReport::default();
        if self.shared.log_replayed {
            report.corruptions_fixed += 1;
            report.messages.push("the log was replayed".to_string());
        }
        let file_len = self.file.len()?;
        let problems = {
            let table = self
                .shared
                .bat
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bat::check_entries(
                &table,
                &self.shared.geometry,
                file_len,
                &self.shared.fixed_regions(),
            )
        };
        report.corruptions += problems.len() as u64;
        report
            .messages
            .extend(problems.into_iter().map(|p| p.message));
        Ok(report)
    }

    /// The allocation status of the run starting at `offset` (at most `len` bytes) in this layer: data
    /// (with its host offset) for present blocks, zero for zero/unmapped/undefined blocks, unallocated for
    /// not-present blocks (whose data comes from the parent, at depth 1, in a differencing image). Partially
    /// present blocks show as data.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Extent> {
        let g = self.shared.geometry;
        blk_core::check_range(offset, len, g.virtual_size)?;
        let status = |pos: u64| {
            let e = self.shared.entry(g.payload_index(pos / g.block_size));
            match bat::state(e) {
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => (
                    ExtentKind::Data,
                    0,
                    Some(file_offset(e) + pos % g.block_size),
                ),
                PAYLOAD_NOT_PRESENT if self.shared.parent.is_some() => (ExtentKind::Data, 1, None),
                PAYLOAD_NOT_PRESENT => (ExtentKind::Unallocated, 0, None),
                _ => (ExtentKind::Zero, 0, None),
            }
        };
        let (kind, depth, host) = status(offset);
        let mut end = offset;
        loop {
            let next = ((end / g.block_size) + 1) * g.block_size;
            end = next.min(offset + len);
            if end >= offset + len {
                break;
            }
            let (k, d, h) = status(end);
            let contiguous = match (host, h) {
                (Some(a), Some(b)) => b == a + (end - offset),
                (None, None) => true,
                _ => false,
            };
            if k != kind || d != depth || !contiguous {
                break;
            }
        }
        Ok(Extent {
            offset,
            length: end - offset,
            kind,
            depth,
            host_offset: host,
            compressed: false,
        })
    }
}
