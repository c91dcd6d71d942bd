//! What the device offers: its virtio feature bits and its config space (`struct virtio_blk_config`), built
//! from the disk and the [`BlkOptions`](crate::BlkOptions).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The offset of the `wce` (writeback cache enabled) byte in the config space, the one field a driver writes.
pub const WCE_OFFSET: usize = 32;
/// The config space's length (through `write_zeroes_may_unmap` and its padding).
pub const CONFIG_LEN: usize = 60;

/// The values the config space advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkConfig {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Largest data descriptor, in bytes.
    pub size_max: u32,
    /// Most data descriptors per request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// log2(physical block / logical block).
    pub physical_block_exp: u8,
    /// Minimum I/O size in logical blocks.
    pub min_io_size: u16,
    /// Optimal I/O size in logical blocks.
    pub opt_io_size: u32,
    /// Writeback cache enabled (the driver may turn it off through `CONFIG_WCE`).
    pub writeback: bool,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest discard range, in sectors.
    pub max_discard_sectors: u32,
    /// Most ranges per discard request.
    pub max_discard_seg: u32,
    /// Discard alignment, in sectors.
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes range, in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most ranges per write-zeroes request.
    pub max_write_zeroes_seg: u32,
}

impl BlkConfig {
    /// The config space, little-endian, as `struct virtio_blk_config` lays it out.
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry (cylinders u16, heads u8, sectors u8): not offered.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = 0; // alignment_offset
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[WCE_OFFSET] = u8::from(self.writeback);
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = 1; // write_zeroes_may_unmap
        b
    }
}

/// The virtio feature bits the device offers (`read_only` adds `VIRTIO_BLK_F_RO` and drops discard and
/// write-zeroes).
pub fn device_features(read_only: bool) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
    ];
    let mut features = bits.iter().fold(0u64, |f, bit| f | 1 << bit);
    if read_only {
        features |= 1 << VIRTIO_BLK_F_RO;
    } else {
        features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    // VHOST_F_LOG_ALL: dirty-page logging for migration (with the LOG_SHMFD protocol feature); QEMU blocks
    // migration without it.
    features
        | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | vhost::vhost_user::message::VhostUserVirtioFeatures::LOG_ALL.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_virtio_blk_config() {
        let c = BlkConfig {
            capacity_sectors: 0x0102,
            size_max: 3,
            seg_max: 4,
            blk_size: 4096,
            physical_block_exp: 0,
            min_io_size: 1,
            opt_io_size: 0,
            writeback: true,
            num_queues: 2,
            max_discard_sectors: 5,
            max_discard_seg: 6,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 9,
            max_write_zeroes_seg: 10,
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..2], &[2, 1]);
        assert_eq!(b[20..24], 4096u32.to_le_bytes());
        assert_eq!(b[32], 1);
        assert_eq!(b[34], 2);
        assert_eq!(b[52], 10);
        assert!(
            std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_config>() >= CONFIG_LEN
        );
        let off = std::mem::offset_of!(virtio_bindings::virtio_blk::virtio_blk_config, wce);
        assert_eq!(off, WCE_OFFSET);
        let off = std::mem::offset_of!(
            virtio_bindings::virtio_blk::virtio_blk_config,
            write_zeroes_may_unmap
        );
        assert_eq!(off, 56);
    }
}
