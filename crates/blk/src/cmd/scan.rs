//! Byte scanning shared by `convert`, `compare` and `io`: zero detection and first differences at qemu's
//! 512-byte sector granularity.

/// qemu's sector size: the unit `compare` reports mismatches in and `convert -S` detects zeros in.
pub const SECTOR: usize = 512;

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// The start of the first 512-byte sector (relative to `buf`) holding a non-zero byte, as qemu-img's
/// `find_nonzero`.
pub fn first_nonzero_sector(buf: &[u8]) -> Option<usize> {
    buf.chunks(SECTOR)
        .position(|s| !is_zero(s))
        .map(|i| i * SECTOR)
}

/// The start of the first 512-byte sector (relative to the buffers) where `a` and `b` differ, as qemu-img's
/// `compare_buffers`.
pub fn first_different_sector(a: &[u8], b: &[u8]) -> Option<usize> {
    a.chunks(SECTOR)
        .zip(b.chunks(SECTOR))
        .position(|(x, y)| x != y)
        .map(|i| i * SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_difference_scans() {
        let mut buf = vec![0u8; 4096];
        assert!(is_zero(&buf));
        assert_eq!(first_nonzero_sector(&buf), None);
        buf[1500] = 1;
        assert!(!is_zero(&buf));
        assert_eq!(first_nonzero_sector(&buf), Some(1024));
        let other = vec![0u8; 4096];
        assert_eq!(first_different_sector(&buf, &other), Some(1024));
        assert_eq!(first_different_sector(&other, &other), None);
        assert!(!is_zero(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3
        ]));
    }
}
