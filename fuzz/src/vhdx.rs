//! The `vhdx` harness: a valid small VHDX image built in a temporary file, patched by the fuzz input, then
//! opened read-only and writable, read whole, inspected and written.
//!
//! VHDX images are at least ~4 MiB, too large for a corpus of raw files, so the input is compact: a list of
//! patches `[area, offset_hi, offset_lo, len, bytes...]` applied to the metadata areas of the image (`area % 6`:
//! 0 headers at 64 KiB, 1 region tables at 192 KiB, 2 log at 1 MiB, 3 BAT at 2 MiB, 4 metadata at 3 MiB,
//! 5 the first data block), the offset taken modulo the area's size. When the input's first byte is odd, the
//! checksums of both headers and both region tables are recomputed after patching, so the fuzzer gets past them
//! to the structures behind. Replayed over `corpus/vhdx` by `crates/blk-vhdx/tests/fuzz_corpus.rs`.

use std::sync::Arc;

use blk_core::{
    DenyNamedImages, DiskFile, HostOpenOptions, ImageAdmin, LockMode, MappedDisk, RepairMode,
};
use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};

/// The patchable areas: (offset, length).
const AREAS: [(u64, u64); 6] = [
    (64 << 10, 128 << 10),
    (192 << 10, 128 << 10),
    (1 << 20, 1 << 20),
    (2 << 20, 1 << 20),
    (3 << 20, 1 << 20),
    (8 << 20, 1 << 20),
];

/// CRC-32C (Castagnoli), bitwise: the harness has no checksum crate.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn fix_checksum(image: &mut [u8], start: usize, len: usize) {
    if image.len() < start + len {
        return;
    }
    image[start + 4..start + 8].fill(0);
    let crc = crc32c(&image[start..start + len]);
    image[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The first 9 MiB of a fresh 16 MiB image with 1 MiB blocks and block 0 written.
fn template(dir: &std::path::Path) -> Option<Vec<u8>> {
    let path = dir.join("template.vhdx");
    let options = VhdxCreateOptions::from_key_values(
        Some(16 << 20),
        &[("block_size".to_string(), "1M".to_string())],
    )
    .ok()?;
    Vhdx::create(&path, &options, &DenyNamedImages).ok()?;
    {
        let opts = VhdxOpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
        let disk = MappedDisk::new(Vhdx::open(&path, &opts).ok()?);
        disk.write_all_at(0, &[0x5a; 4096]).ok()?;
    }
    std::fs::read(&path).ok()
}

/// Opens `path` and exercises it; errors are fine, panics are not.
fn exercise(path: &std::path::Path, read_only: bool) {
    let host = HostOpenOptions {
        read_only,
        direct: false,
        lock: LockMode::None,
    };
    let mut options = VhdxOpenOptions::new(host, Arc::new(DenyNamedImages));
    options.check_mode = !read_only;
    let Ok(disk) = Vhdx::open(path, &options).map(MappedDisk::new) else {
        return;
    };
    let size = disk.logical_size();
    let _ = disk.image_info();
    let _ = disk.check(RepairMode::None);
    let mut offset = 0;
    let mut buf = vec![0u8; 1 << 20];
    while offset < size && offset < (32 << 20) {
        let n = (size - offset).min(buf.len() as u64) as usize;
        let _ = disk.read_exact_at(offset, &mut buf[..n]);
        let _ = disk.allocation(offset, n as u64);
        offset += n as u64;
    }
    if !read_only && size > 0 {
        let _ = disk.write_all_at(size / 2, &[1; 4096][..(size - size / 2).min(4096) as usize]);
        let _ = disk.write_zeroes(0, size.min(2 << 20), true);
        let _ = disk.flush();
    }
}

/// Patches a valid image with `data` (see the module docs) and opens it both ways.
pub fn vhdx(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Some(mut image) = template(dir.path()) else {
        return;
    };
    let mut rest = data.get(1..).unwrap_or(&[]);
    while let [area, hi, lo, len, tail @ ..] = rest {
        let (start, size) = AREAS[usize::from(*area) % AREAS.len()];
        let offset = (u64::from(*hi) << 8 | u64::from(*lo)) * 16 % size;
        let n = usize::from(*len).min(tail.len());
        let at = (start + offset) as usize;
        let end = (at + n).min(image.len());
        if at < end {
            image[at..end].copy_from_slice(&tail[..end - at]);
        }
        rest = &tail[n..];
    }
    if data.first().is_some_and(|b| b & 1 == 1) {
        fix_checksum(&mut image, 64 << 10, 4096);
        fix_checksum(&mut image, 128 << 10, 4096);
        fix_checksum(&mut image, 192 << 10, 64 << 10);
        fix_checksum(&mut image, 256 << 10, 64 << 10);
    }
    let path = dir.path().join("fuzzed.vhdx");
    if std::fs::write(&path, &image).is_err() {
        return;
    }
    exercise(&path, true);
    exercise(&path, false);
}
