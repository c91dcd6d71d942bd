//! Fixtures shared by blk's criterion benchmarks (`benches/*.rs`, run with `cargo xtask bench`).
//!
//! The benchmarks measure blk's own overhead on hot paths, so their images live in the host page cache: a
//! [`page_cached_raw`] image is written in full (no holes) right before the measurement, and reads of it never
//! wait for the disk. See `docs/performance.md` for what is measured and how results are compared.

use std::path::PathBuf;

use blk_core::{DiskFile, MappedDisk, Result};
use blk_raw::{Preallocation, Raw, RawCreateOptions};
use tempfile::TempDir;

/// The size of the benchmark images: 64 MiB, small enough to stay in the page cache.
pub const IMAGE_SIZE: u64 = 64 << 20;

/// The request size: 4 KiB, the usual guest page and file-system block.
pub const BLOCK: usize = 4096;

/// A raw image in a temporary directory, deleted when this is dropped.
#[derive(Debug)]
pub struct CachedImage {
    /// The open image.
    pub disk: MappedDisk<Raw>,
    /// The image's path.
    pub path: PathBuf,
    /// Keeps the directory (and the image) alive.
    _dir: TempDir,
}

/// Creates a raw image of `size` bytes in a fresh temporary directory and writes every byte of it (a
/// non-zero pattern, so no range is a hole), leaving it in the host page cache.
pub fn page_cached_raw(size: u64) -> Result<CachedImage> {
    let dir = tempfile::Builder::new().prefix("blk-bench-").tempdir()?;
    let path = dir.path().join("bench.raw");
    let disk = MappedDisk::new(Raw::create(
        &path,
        &RawCreateOptions {
            size,
            preallocation: Preallocation::Off,
        },
    )?);
    const CHUNK: usize = 1 << 20;
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        // At most CHUNK (1 MiB), so the cast cannot truncate.
        let len = (size - offset).min(CHUNK as u64) as usize;
        for (i, byte) in chunk[..len].iter_mut().enumerate() {
            // Varies per chunk and position; `| 1` keeps every byte non-zero.
            *byte = ((offset >> 20) as u8).wrapping_add(i as u8) | 1;
        }
        disk.write_all_at(offset, &chunk[..len])?;
        offset += len as u64;
    }
    Ok(CachedImage {
        disk,
        path,
        _dir: dir,
    })
}

/// Every `block`-aligned offset of a `size`-byte disk once, in a scattered but reproducible order: block
/// `i * STRIDE mod n`, with an odd stride, which visits each block exactly once when the block count is a
/// power of two (as `qemu-img bench` scatters requests with a large odd `--step`).
pub fn scattered_offsets(size: u64, block: u64) -> Vec<u64> {
    const STRIDE: u64 = 7919;
    let blocks = (size / block.max(1)).max(1);
    (0..blocks)
        .map(|i| (i.wrapping_mul(STRIDE) % blocks) * block)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_offsets_visit_every_block_once() {
        let mut offsets = scattered_offsets(IMAGE_SIZE, BLOCK as u64);
        assert_eq!(offsets.len() as u64, IMAGE_SIZE / BLOCK as u64);
        assert_ne!(offsets[1], BLOCK as u64, "not sequential");
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len() as u64, IMAGE_SIZE / BLOCK as u64);
        assert!(offsets
            .iter()
            .all(|o| o % BLOCK as u64 == 0 && *o < IMAGE_SIZE));
    }

    #[test]
    fn cached_image_has_no_zero_bytes() {
        let image = page_cached_raw(3 << 20).unwrap();
        let mut buf = vec![0u8; BLOCK];
        for offset in [0, (1 << 20) + 512, (3 << 20) - BLOCK as u64] {
            image.disk.read_exact_at(offset, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b != 0));
        }
        assert_eq!(image.disk.logical_size(), 3 << 20);
        assert!(image.path.exists());
    }
}
