//! The `qcow2` harness (being written with the format).

/// Treats `data` as a qcow2 image.
pub fn qcow2(data: &[u8]) {
    let _ = (data, blk_qcow::FORMAT_NAME);
}
