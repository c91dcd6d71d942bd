//! Broken images made from a valid one with byte patches: each fails to open with a clear error of the right
//! kind, naming the format (and the offset of the bad field where there is one), without panicking.

mod common;

use std::path::Path;

use blk_core::{DiskFile, ErrorKind};
use common::*;

const REGION_TABLES: [usize; 2] = [192 << 10, 256 << 10];
const BAT: usize = 2 << 20;
const METADATA: usize = 3 << 20;

fn fix_checksum(bytes: &mut [u8], start: usize, len: usize) {
    bytes[start + 4..start + 8].fill(0);
    let crc = crc32c::crc32c(&bytes[start..start + len]);
    bytes[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn valid_image(dir: &Path) -> Vec<u8> {
    let image = dir.join("valid.vhdx");
    create(&image, 8 << 20, &[("block_size", "1M")]);
    open(&image, false)
        .unwrap()
        .write_all_at(0, b"data")
        .unwrap();
    std::fs::read(&image).unwrap()
}

fn expect(dir: &Path, name: &str, bytes: &[u8], kind: ErrorKind, needle: &str) {
    let path = dir.join(format!("{name}.vhdx"));
    std::fs::write(&path, bytes).unwrap();
    for read_only in [true, false] {
        let err = open(&path, read_only).unwrap_err();
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert_eq!(err.format(), Some("vhdx"), "{name}: {err}");
        assert!(err.path().is_some());
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
}

#[test]
fn broken_images_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_image(dir.path());

    // Overlapping regions: the metadata region moved onto the BAT (both tables, checksums fixed).
    let mut b = good.clone();
    for t in REGION_TABLES {
        b[t + 16 + 32 + 16..t + 16 + 32 + 24].copy_from_slice(&(2u64 << 20).to_le_bytes());
        fix_checksum(&mut b, t, 64 << 10);
    }
    expect(
        dir.path(),
        "overlap",
        &b,
        ErrorKind::CorruptImage,
        "overlaps",
    );

    // A region past the end of the file.
    let mut b = good.clone();
    for t in REGION_TABLES {
        b[t + 16 + 16..t + 16 + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        fix_checksum(&mut b, t, 64 << 10);
    }
    expect(
        dir.path(),
        "bat-region-past-eof",
        &b,
        ErrorKind::CorruptImage,
        "past the end",
    );

    // An unknown required region.
    let mut b = good.clone();
    for t in REGION_TABLES {
        b[t + 8..t + 12].copy_from_slice(&3u32.to_le_bytes());
        let e = t + 16 + 64;
        b[e..e + 16].copy_from_slice(&[7; 16]);
        b[e + 16..e + 24].copy_from_slice(&(5u64 << 20).to_le_bytes());
        b[e + 24..e + 28].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
        fix_checksum(&mut b, t, 64 << 10);
    }
    expect(
        dir.path(),
        "unknown-region",
        &b,
        ErrorKind::UnsupportedFeature,
        "unknown required region",
    );

    // A BAT entry past the end of the file (as after truncation).
    let mut b = good.clone();
    b[BAT..BAT + 8].copy_from_slice(&((100u64 << 20) | 6).to_le_bytes());
    expect(
        dir.path(),
        "bat-past-eof",
        &b,
        ErrorKind::CorruptImage,
        "after the end of the file",
    );
    let err = open(&dir.path().join("bat-past-eof.vhdx"), true).unwrap_err();
    assert_eq!(err.offset(), Some(BAT as u64));

    // A BAT entry overlapping the log; a reserved state.
    let mut b = good.clone();
    b[BAT..BAT + 8].copy_from_slice(&((1u64 << 20) | 6).to_le_bytes());
    expect(
        dir.path(),
        "bat-over-log",
        &b,
        ErrorKind::CorruptImage,
        "overlaps the metadata",
    );
    let mut b = good.clone();
    b[BAT + 8..BAT + 16].copy_from_slice(&4u64.to_le_bytes());
    expect(
        dir.path(),
        "bat-state",
        &b,
        ErrorKind::CorruptImage,
        "invalid state",
    );

    // Absurd block and sector sizes (metadata items at 64 KiB into the region, QEMU's layout).
    let items = METADATA + (64 << 10);
    let mut b = good.clone();
    b[items..items + 4].copy_from_slice(&(3u32 << 20).to_le_bytes());
    expect(
        dir.path(),
        "block-size",
        &b,
        ErrorKind::CorruptImage,
        "block size",
    );
    let mut b = good.clone();
    b[items..items + 4].copy_from_slice(&(1u32 << 31).to_le_bytes());
    expect(
        dir.path(),
        "huge-block-size",
        &b,
        ErrorKind::CorruptImage,
        "block size",
    );
    let mut b = good.clone();
    b[items + 32..items + 36].copy_from_slice(&1000u32.to_le_bytes());
    expect(
        dir.path(),
        "sector-size",
        &b,
        ErrorKind::CorruptImage,
        "sector size",
    );
    let mut b = good.clone();
    b[items + 8..items + 16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    expect(
        dir.path(),
        "disk-size",
        &b,
        ErrorKind::CorruptImage,
        "virtual disk size",
    );

    // Missing required metadata (the table cut to 4 entries drops the physical sector size).
    let mut b = good.clone();
    b[METADATA + 10..METADATA + 12].copy_from_slice(&4u16.to_le_bytes());
    expect(
        dir.path(),
        "missing-metadata",
        &b,
        ErrorKind::CorruptImage,
        "physical sector size",
    );
    // An unknown required metadata item.
    let mut b = good.clone();
    b[METADATA + 32..METADATA + 48].copy_from_slice(&[9; 16]);
    expect(
        dir.path(),
        "unknown-metadata",
        &b,
        ErrorKind::UnsupportedFeature,
        "unknown required metadata",
    );
    // A metadata item outside the region.
    let mut b = good.clone();
    b[METADATA + 48..METADATA + 52].copy_from_slice(&(2u32 << 20).to_le_bytes());
    expect(
        dir.path(),
        "metadata-item-outside",
        &b,
        ErrorKind::CorruptImage,
        "outside",
    );

    // Both headers damaged; the other header takes over when only one is.
    let mut b = good.clone();
    b[(64 << 10) + 100] ^= 1;
    let path = dir.path().join("one-header.vhdx");
    std::fs::write(&path, &b).unwrap();
    open(&path, true).unwrap();
    b[(128 << 10) + 100] ^= 1;
    expect(
        dir.path(),
        "headers",
        &b,
        ErrorKind::CorruptImage,
        "neither VHDX header",
    );

    // Truncated files, and not VHDX at all.
    expect(
        dir.path(),
        "truncated",
        &good[..100 << 10],
        ErrorKind::InvalidFormat,
        "shorter than",
    );
    let mut b = good.clone();
    b[0] = b'x';
    expect(
        dir.path(),
        "not-vhdx",
        &b,
        ErrorKind::InvalidFormat,
        "vhdxfile",
    );
}

#[test]
fn a_log_with_a_bad_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("log.vhdx");
    create(&image, 8 << 20, &[("block_size", "1M")]);
    let crashed = dir.path().join("crashed.vhdx");
    {
        let disk = open(&image, false).unwrap();
        disk.write_all_at(0, b"data").unwrap();
        // The flush logs the new block's BAT entry.
        disk.flush().unwrap();
        std::fs::copy(&image, &crashed).unwrap();
    }
    let mut b = std::fs::read(&crashed).unwrap();
    // The log's first entry (at 1 MiB): damage a data byte without fixing the checksum.
    assert_eq!(&b[1 << 20..(1 << 20) + 4], b"loge");
    b[(1 << 20) + 4096 + 100] ^= 0xff;
    expect(
        dir.path(),
        "bad-log",
        &b,
        ErrorKind::CorruptImage,
        "no valid sequence",
    );
}
