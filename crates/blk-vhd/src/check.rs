//! `blk check` for VHDs (qemu-img has no check for vpc and exits 63; blk checks the metadata).
//!
//! An image whose footer or dynamic header checksum is wrong, or whose BAT points past the end of the file,
//! into the footer, into metadata or at overlapping blocks, fails to open (with an error naming the field), so
//! `check` never sees it. On an open image `check` counts as corruptions:
//! - an end footer that is missing or damaged (bad cookie or checksum), or that differs from the copy at 0;
//! - a damaged footer copy at offset 0 (the image was opened through its end footer);
//! - a differencing disk's parent locator whose data lies outside the file.
//!
//! Space between the last allocated block and the end footer (an allocation interrupted after it moved the
//! footer) counts as leaked blocks; `RepairMode::Leaks` or `All` moves the footer back and cuts the file.
//!
//! `RepairMode::All` on a writable image rewrites the footer (end and copy) from the valid one, the end footer
//! right after the last allocated block, and cuts the file after it (what lay past it belonged to no block). The counters
//! follow qemu-img's: `total_clusters` = blocks covering the disk, `allocated_clusters` = allocated BAT entries,
//! `fragmented_clusters` = allocated blocks not following their guest predecessor in the file,
//! `image_end_offset` = where the end footer ends.

use blk_core::{CheckReport, RepairMode, Result};
use zerocopy::IntoBytes;

use crate::bat::UNALLOCATED;
use crate::footer::{Footer, FOOTER_SIZE};
use crate::parent::locator_is_valid;
use crate::vhd::Vhd;

impl Vhd {
    pub(crate) fn check_image(&self, repair: RepairMode) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let len = self.file.len()?;
        let Some(sparse) = &self.shared.sparse else {
            report.image_end_offset = Some(len);
            return Ok(report);
        };
        let footer = &self.shared.footer;
        let mut bytes = [0u8; 512];
        let mut footer_damaged = false;

        self.file.read_exact_at(0, &mut bytes)?;
        let copy = Footer::parse(&bytes);
        if copy.validate(0).is_err() {
            report.corruptions += 1;
            report
                .messages
                .push("the footer copy at offset 0 is damaged".to_string());
            footer_damaged = true;
        }
        // Held to the end of the footer and leak checks: a repair moves the footer the allocator knows of.
        let mut alloc = sparse.lock_allocator();
        let next_block = alloc.next;
        if len >= FOOTER_SIZE {
            self.file.read_exact_at(len - FOOTER_SIZE, &mut bytes)?;
        } else {
            bytes = [0; 512];
        }
        let end = Footer::parse(&bytes);
        if end.validate(0).is_err() {
            report.corruptions += 1;
            report.messages.push(format!(
                "the footer at the end of the file ({:#x}) is missing or damaged",
                len.saturating_sub(FOOTER_SIZE)
            ));
            footer_damaged = true;
        } else if copy.validate(0).is_ok() && end.as_bytes() != copy.as_bytes() {
            report.corruptions += 1;
            report
                .messages
                .push("the footer copy at offset 0 differs from the end footer".to_string());
            footer_damaged = true;
        }
        if footer_damaged && repair == RepairMode::All && !self.file.is_read_only() {
            self.file.write_all_at(0, footer.as_bytes())?;
            self.file.write_all_at(next_block, footer.as_bytes())?;
            // The end footer must be the file's last 512 bytes: what lies past it is no block's (an
            // interrupted allocation's leftovers) and goes.
            if len > next_block + FOOTER_SIZE {
                self.file.set_len(next_block + FOOTER_SIZE)?;
            }
            self.file.sync_data()?;
            alloc.grown = None;
            report.corruptions_fixed += report.corruptions;
            report.corruptions = 0;
            report.messages.push("rewrote both footers".to_string());
        }

        let span = sparse.bitmap_size + sparse.block_size;
        // The footer sits right after the last block, or, while this open grows the file ahead, at the end
        // of the grown part (no leak).
        let footer_place = alloc.grown.unwrap_or(next_block);
        let past_blocks = len.saturating_sub(FOOTER_SIZE).saturating_sub(next_block);
        if !footer_damaged && past_blocks > footer_place - next_block {
            // Space between the last block and the end footer: an allocation interrupted after it moved the
            // footer (the BAT never pointed there). The next allocation reuses it; a repair gives it back.
            let leaked = past_blocks.div_ceil(span);
            if matches!(repair, RepairMode::Leaks | RepairMode::All) && !self.file.is_read_only() {
                self.file.write_all_at(next_block, footer.as_bytes())?;
                self.file.set_len(next_block + FOOTER_SIZE)?;
                self.file.sync_data()?;
                alloc.grown = None;
                report.leaks_fixed += leaked;
                report.messages.push(format!(
                    "moved the end footer back to {next_block:#x} over {past_blocks} bytes no block used"
                ));
            } else {
                report.leaks += leaked;
                report.messages.push(format!(
                    "{past_blocks} bytes between the last block ({next_block:#x}) and the end footer belong to no block"
                ));
            }
        }

        for (i, l) in sparse.header.parent_locators.iter().enumerate() {
            if self.parent.is_some() && l.platform_code.get() != 0 && !locator_is_valid(l, len) {
                report.corruptions += 1;
                report.messages.push(format!(
                    "parent locator {i}: data ({} bytes at {:#x}) lies outside the file",
                    l.platform_data_length.get(),
                    l.platform_data_offset.get()
                ));
            }
        }

        let bat = sparse.entries();
        let mut allocated = 0;
        let mut fragmented = 0;
        let mut previous_end = None;
        for &e in bat.iter().filter(|&&e| e != UNALLOCATED) {
            let start = u64::from(e) * 512;
            // Padding up to the next aligned place (see `block_start`) is no fragmentation.
            if previous_end.is_some_and(|p| p != start && sparse.block_start(p) != start) {
                fragmented += 1;
            }
            previous_end = Some(start + span);
            allocated += 1;
        }
        report.total_clusters = Some(self.shared.size.div_ceil(sparse.block_size));
        report.allocated_clusters = Some(allocated);
        report.fragmented_clusters = Some(fragmented);
        let footer_end = len.clamp(next_block + FOOTER_SIZE, footer_place + FOOTER_SIZE);
        report.image_end_offset = Some(footer_end);
        Ok(report)
    }
}
