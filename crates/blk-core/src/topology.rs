//! What the guest is told about the disk's block geometry.

/// Block geometry presented to the guest (virtio-blk `blk_size`, `physical_block_exp`, `min_io_size`,
/// `opt_io_size`, discard granularity).
///
/// This is the guest-visible geometry only. The host's O_DIRECT alignment (`STATX_DIOALIGN`, e.g. 4 KiB on a
/// reflinked file) is a property of the host file ([`crate::DirectIoAlignment`]) and never leaks in here: a disk
/// needing 4 KiB host alignment still shows 512-byte sectors and bounces unaligned requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskTopology {
    /// The smallest unit the guest may address, in bytes (512 or 4096).
    pub logical_block_size: u32,
    /// The unit the device writes atomically, in bytes.
    pub physical_block_size: u32,
    /// The smallest I/O that avoids a read-modify-write, in bytes.
    pub minimum_io_size: u32,
    /// The preferred I/O size, in bytes (0 when unknown).
    pub optimal_io_size: u32,
    /// The unit discards are tracked in, in bytes (0 when discard is not supported).
    pub discard_granularity: u32,
}

impl Default for DiskTopology {
    fn default() -> DiskTopology {
        DiskTopology {
            logical_block_size: 512,
            physical_block_size: 512,
            minimum_io_size: 512,
            optimal_io_size: 0,
            discard_granularity: 0,
        }
    }
}

impl DiskTopology {
    /// `log2(physical_block_size / logical_block_size)`, as virtio-blk's `physical_block_exp` wants it.
    pub fn physical_block_exp(&self) -> u8 {
        let ratio = (self.physical_block_size / self.logical_block_size.max(1)).max(1);
        // ilog2 of a u32 is at most 31, so the cast cannot truncate.
        ratio.ilog2() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent() {
        let t = DiskTopology {
            physical_block_size: 4096,
            ..DiskTopology::default()
        };
        assert_eq!(t.physical_block_exp(), 3);
        assert_eq!(DiskTopology::default().physical_block_exp(), 0);
    }
}
