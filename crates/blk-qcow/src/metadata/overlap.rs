//! QEMU's overlap check on writes: a write that would land on the header, the L1 or refcount table or a cached
//! L2 table / refcount block (a lying L2 entry or refcount) is prevented, and, as QEMU's
//! `qcow2_signal_corruption` does, the image is marked corrupt (incompatible bit 1, v3) and every further
//! write is refused; reads go on.

use blk_core::{HostFile, Result};

use crate::image::features::INCOMPAT_CORRUPT;
use crate::metadata::{corrupt, Metadata};

impl Metadata {
    /// `check_data_write` for a guest data write about to happen: an overlap marks the image corrupt.
    pub(crate) fn guard_data_write(
        &mut self,
        file: &HostFile,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.refuse_after_corruption(offset)?;
        let checked = self.check_data_write(offset, len);
        self.signal_corruption(file, checked)
    }

    /// `check_metadata_write` for a metadata write about to happen: an overlap marks the image corrupt.
    pub(crate) fn guard_metadata_write(
        &mut self,
        file: &HostFile,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.refuse_after_corruption(offset)?;
        let checked = self.check_metadata_write(offset, len);
        self.signal_corruption(file, checked)
    }

    fn refuse_after_corruption(&self, offset: u64) -> Result<()> {
        if self.corruption_signaled {
            return Err(corrupt(
                "the image was marked corrupt after a prevented write over metadata; further writes are refused",
                offset,
            ));
        }
        Ok(())
    }

    /// Marks the image corrupt (once) when `checked` failed, and passes the result on.
    fn signal_corruption(&mut self, file: &HostFile, checked: Result<()>) -> Result<()> {
        if checked.is_err() && !self.corruption_signaled {
            self.corruption_signaled = true;
            // Best effort, as QEMU's: the write is refused whether or not the bit reaches the disk.
            let _ = self.update_incompatible(file, INCOMPAT_CORRUPT, 0);
        }
        checked
    }
}
