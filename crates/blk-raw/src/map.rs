//! The allocation map of a raw image: holes of the host file read as zeros, everything else is data.
//!
//! Raw images map guest offset `x` to host offset `x`, so every run carries `host_offset: Some(offset)`, exactly
//! like `qemu-img map --output=json` prints raw files (`"present": true` always, holes as
//! `"zero": true, "data": false`). The runs come from `SEEK_DATA`/`SEEK_HOLE`, as in qemu's file driver.

use blk_core::{Extent, HostFile, Result};

use crate::raw::is_unsupported;

/// The first run of equal status among the `len` bytes at `offset` of `file`, which the caller has checked lie
/// within the disk.
///
/// A file system without `SEEK_DATA` makes everything data (always correct, only not sparse). A range past the
/// end of a file truncated under us is a hole.
pub(crate) fn first_extent(file: &HostFile, offset: u64, len: u64) -> Result<Extent> {
    let all_data = Extent::data(offset, len, Some(offset));
    if len == 0 {
        return Ok(all_data);
    }
    let end = offset.saturating_add(len);
    let data = match file.next_data(offset) {
        Ok(data) => data,
        Err(e) if is_unsupported(&e) => return Ok(all_data),
        Err(e) => return Err(e),
    };
    match data {
        // No data at or after `offset`: a hole up to (and past) the end of the file.
        None => Ok(Extent::zero(offset, len, Some(offset))),
        Some(data) if data > offset => {
            Ok(Extent::zero(offset, data.min(end) - offset, Some(offset)))
        }
        // SEEK_DATA never goes backwards; should a file system do so, claim data.
        Some(data) if data < offset => Ok(all_data),
        Some(_) => {
            let hole = match file.next_hole(offset) {
                Ok(hole) => hole,
                Err(e) if is_unsupported(&e) => None,
                Err(e) => return Err(e),
            };
            let run_end = match hole {
                Some(hole) if hole > offset => hole.min(end),
                // Truncated between the two seeks, or no answer: claim data, which is always correct.
                _ => end,
            };
            Ok(Extent::data(offset, run_end - offset, Some(offset)))
        }
    }
}
