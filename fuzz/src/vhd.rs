//! The `vhd` harness (being written with the format).

/// Treats `data` as a vhd image.
pub fn vhd(data: &[u8]) {
    let _ = (data, blk_vhd::FORMAT_NAME);
}
