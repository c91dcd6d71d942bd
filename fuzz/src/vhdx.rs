//! The `vhdx` harness (being written with the format).

/// Treats `data` as a vhdx image.
pub fn vhdx(data: &[u8]) {
    let _ = (data, blk_vhdx::FORMAT_NAME);
}
