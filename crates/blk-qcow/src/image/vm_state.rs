//! The VM state area: where QEMU's `savevm` stores a running VM's state, past the guest range the L1 table
//! covers (QEMU's `qcow2_vm_state_offset`), mapped by the same L1 and L2 tables. `qemu-io read -b` reads it;
//! an image no VM saved into reads as zeros there.

use blk_core::{Error, ErrorKind, Result};

use crate::image::Qcow2;
use crate::metadata::read_zero_filled;
use crate::metadata::tables::{COMPRESSED, L2_OFFSET_MASK, ZERO};

impl Qcow2 {
    /// The guest offset the VM state starts at: the virtual size rounded up to what one L2 table maps.
    pub(crate) fn vm_state_offset(&self) -> u64 {
        let g = &self.shared.geometry;
        let coverage = g.cluster_size * g.l2_entries;
        g.size.div_ceil(coverage).saturating_mul(coverage)
    }

    /// Reads `buf.len()` bytes of the VM state at `pos`. Unallocated and zero clusters read as zeros (a backing
    /// file is not consulted: QEMU reads it there, where a backing file shorter than the VM state offset gives
    /// zeros too). Compressed VM state and images with extended L2 entries or an external data file are
    /// refused (`Unsupported`): QEMU writes neither compressed nor, in practice, such VM state.
    pub(crate) fn load_vm_state(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let g = self.shared.geometry.clone();
        let unsupported = |what: &str| {
            Error::new(
                ErrorKind::Unsupported,
                format!("blk does not read the VM state of {what}"),
            )
        };
        if g.extended_l2 || g.data_file {
            return Err(unsupported(
                "images with extended L2 entries or an external data file",
            ));
        }
        let start = self
            .vm_state_offset()
            .checked_add(pos)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "VM state offset overflows"))?;
        let file = &self.shared.file;
        let mut done = 0usize;
        while done < buf.len() {
            let guest = start + done as u64;
            let in_cluster = guest % g.cluster_size;
            // At most one cluster (<= 2 MiB), so the conversion cannot truncate.
            let n = ((g.cluster_size - in_cluster) as usize).min(buf.len() - done);
            let entry = self
                .lock_metadata()
                .l2_entry(file, guest / g.cluster_size)?;
            let out = &mut buf[done..done + n];
            if entry & COMPRESSED != 0 {
                return Err(unsupported("compressed clusters"));
            }
            let host = entry & L2_OFFSET_MASK;
            if entry & ZERO != 0 || host == 0 {
                out.fill(0);
            } else {
                let data = read_zero_filled(file, host + in_cluster, n)?;
                out.copy_from_slice(&data);
            }
            done += n;
        }
        Ok(())
    }
}
