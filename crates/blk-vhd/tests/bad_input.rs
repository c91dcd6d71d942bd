//! Hostile and damaged images: clear errors (kind, offset, message), no panic, bounded allocation; and what
//! `check` reports and repairs.

mod common;

use std::path::Path;

use blk_core::{DiskFile, ErrorKind, HostOpenOptions, ImageAdmin, MappedDisk, RepairMode};
use blk_vhd::dynamic_header::DynamicHeader;
use blk_vhd::footer::Footer;
use blk_vhd::{Vhd, VhdOpenOptions};
use common::*;
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::IntoBytes;

/// A 10 MiB dynamic image with blocks 0 and 3 allocated; returns its bytes.
fn dynamic_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("good.vhd");
    create(&path, Some(10 << 20), &[]);
    let disk = open_rw(&path);
    disk.write_all_at(0, &pattern(1, 4096)).unwrap();
    disk.write_all_at(6 << 20, &pattern(2, 4096)).unwrap();
    drop(disk);
    std::fs::read(path).unwrap()
}

fn header(bytes: &[u8]) -> DynamicHeader {
    DynamicHeader::parse(bytes[512..1536].try_into().unwrap())
}

fn put_header(bytes: &mut [u8], mut h: DynamicHeader) {
    h.update_checksum();
    bytes[512..1536].copy_from_slice(h.as_bytes());
}

fn put_bat(bytes: &mut [u8], index: usize, value: u32) {
    let at = 1536 + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn open_bytes(dir: &Path, bytes: &[u8]) -> blk_core::Result<MappedDisk<Vhd>> {
    let path = dir.join("bad.vhd");
    std::fs::write(&path, bytes).unwrap();
    Vhd::open(
        &path,
        &VhdOpenOptions::new(HostOpenOptions::default(), VhdOpener::new()),
    )
    .map(MappedDisk::new)
}

fn expect_err(dir: &Path, bytes: &[u8], kind: ErrorKind, words: &str) -> blk_core::Error {
    let e = open_bytes(dir, bytes).unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(words), "{e}");
    assert_eq!(e.format(), Some("vpc"));
    assert!(e.path().is_some());
    e
}

#[test]
fn bat_entries_past_eof_into_the_footer_or_metadata() {
    let dir = tempdir();
    let good = dynamic_image(dir.path());
    let len = good.len() as u64;
    let mut bytes = good.clone();
    put_bat(&mut bytes, 1, (len / 512) as u32 + 10);
    let e = expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "past the end of the file",
    );
    assert_eq!(e.offset(), Some(1536 + 4));
    // A block that ends inside the end footer.
    let mut bytes = good.clone();
    let span = 512 + (2 << 20);
    put_bat(&mut bytes, 1, ((len - span) / 512) as u32);
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "into the footer",
    );
    // A block over the dynamic header.
    let mut bytes = good.clone();
    put_bat(&mut bytes, 1, 1);
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "overlaps the dynamic header",
    );
}

#[test]
fn header_fields_out_of_range() {
    let dir = tempdir();
    let good = dynamic_image(dir.path());
    // Block size not a power of two.
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.block_size = U32::new(3 << 20);
    put_header(&mut bytes, h);
    let e = expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "block size");
    assert_eq!(e.offset(), Some(512 + 32));
    // Max table entries larger than the file.
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.max_table_entries = U32::new(1_000_000);
    h.table_offset = U64::new(bytes.len() as u64 - 1024);
    put_header(&mut bytes, h);
    let e = expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "past the end of the file",
    );
    assert_eq!(e.offset(), Some(512 + 16));
    // Max table entries larger than 2040 GiB needs: refused before any allocation.
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.max_table_entries = U32::new(u32::MAX);
    put_header(&mut bytes, h);
    expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "2040 GiB");
    // Too few entries for the size.
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.max_table_entries = U32::new(2);
    put_header(&mut bytes, h);
    expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "too small");
    // BAT over the footer copy.
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.table_offset = U64::new(0);
    put_header(&mut bytes, h);
    expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "overlaps");
    // Header checksum.
    let mut bytes = good.clone();
    bytes[512 + 40] ^= 1;
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "dynamic header checksum",
    );
    // Header cookie.
    let mut bytes = good.clone();
    bytes[512] = b'X';
    expect_err(dir.path(), &bytes, ErrorKind::InvalidFormat, "cxsparse");
    // Header offset outside the file.
    let mut bytes = good.clone();
    let mut f = Footer::parse(bytes[..512].try_into().unwrap());
    f.data_offset = U64::new(u64::MAX - 10);
    f.update_checksum();
    bytes[..512].copy_from_slice(f.as_bytes());
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "outside the file",
    );
}

#[test]
fn footers_checksums_sizes_and_truncation() {
    let dir = tempdir();
    let good = dynamic_image(dir.path());
    let end = good.len() - 512;
    // A damaged copy at 0 falls back to the end footer; check reports it and repairs it.
    let mut bytes = good.clone();
    bytes[30] ^= 0x55;
    let disk = open_bytes(dir.path(), &bytes).unwrap();
    assert_eq!(read_all(&disk)[..4096], pattern(1, 4096)[..]);
    let report = disk.check(RepairMode::None).unwrap();
    assert_eq!(report.corruptions, 1, "{report:?}");
    let report = disk.check(RepairMode::All).unwrap();
    assert_eq!((report.corruptions, report.corruptions_fixed), (0, 1));
    assert_eq!(disk.check(RepairMode::None).unwrap().corruptions, 0);
    drop(disk);
    // Both footers damaged: a clear checksum error.
    bytes = good.clone();
    bytes[30] ^= 0x55;
    bytes[end + 30] ^= 0x55;
    let e = expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "footer checksum",
    );
    assert_eq!(e.offset(), Some(64));
    // A damaged end footer: opens through the copy; check reports it.
    bytes = good.clone();
    bytes[end + 30] ^= 0x55;
    let disk = open_bytes(dir.path(), &bytes).unwrap();
    let report = disk.check(RepairMode::None).unwrap();
    assert_eq!(report.corruptions, 1);
    assert!(report.messages[0].contains("end"), "{report:?}");
    drop(disk);
    // Fixed disk with a wrong footer checksum.
    let fixed = dir.path().join("fixed.vhd");
    create(&fixed, Some(1 << 20), &[("subformat", "fixed")]);
    let mut bytes = std::fs::read(&fixed).unwrap();
    let fend = bytes.len() - 512;
    bytes[fend + 50] ^= 1;
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "footer checksum",
    );
    // Truncated: inside the last block, inside the BAT, to nothing.
    expect_err(
        dir.path(),
        &good[..good.len() - 8192],
        ErrorKind::CorruptImage,
        "past the end",
    );
    expect_err(
        dir.path(),
        &good[..1700],
        ErrorKind::CorruptImage,
        "past the end",
    );
    expect_err(
        dir.path(),
        &good[..100],
        ErrorKind::InvalidFormat,
        "too small",
    );
    expect_err(
        dir.path(),
        &pattern(9, 8192),
        ErrorKind::InvalidFormat,
        "conectix",
    );
    // More than 2040 GiB.
    let mut bytes = good.clone();
    let mut f = Footer::parse(bytes[..512].try_into().unwrap());
    f.creator_app = *b"qem2";
    f.current_size = U64::new(3 << 40);
    f.update_checksum();
    bytes[..512].copy_from_slice(f.as_bytes());
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::UnsupportedFeature,
        "2040 GiB",
    );
    // A fixed disk larger than its file.
    let mut bytes = std::fs::read(&fixed).unwrap();
    let mut f = Footer::parse(bytes[fend..].try_into().unwrap());
    f.creator_app = *b"qem2";
    f.current_size = U64::new(2 << 20);
    f.update_checksum();
    bytes[fend..].copy_from_slice(f.as_bytes());
    expect_err(
        dir.path(),
        &bytes,
        ErrorKind::CorruptImage,
        "overlap the footer",
    );
}

#[test]
fn overlapping_blocks_are_refused_and_check_counts_blocks() {
    let dir = tempdir();
    let mut bytes = dynamic_image(dir.path());
    let h = header(&bytes);
    assert_eq!(h.max_table_entries.get(), 6);
    // Block 4 aliases block 0: guest writes to one would overwrite the other.
    let b0 = u32::from_be_bytes(bytes[1536..1540].try_into().unwrap());
    put_bat(&mut bytes, 4, b0);
    let e = expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "overlap");
    assert_eq!(e.offset(), Some(1536 + 16));
    // Block 4 one sector after block 0: its data would overwrite block 0's bitmap.
    put_bat(&mut bytes, 4, b0 + 1);
    expect_err(dir.path(), &bytes, ErrorKind::CorruptImage, "overlap");
    // A clean image.
    let clean = dir.path().join("good.vhd");
    let report = open_ro(&clean).check(RepairMode::None).unwrap();
    assert_eq!(report.corruptions, 0);
    assert_eq!(report.allocated_clusters, Some(2));
    assert_eq!(report.total_clusters, Some(6));
    assert_eq!(report.fragmented_clusters, Some(0));
    assert_eq!(
        report.image_end_offset,
        Some(std::fs::metadata(&clean).unwrap().len())
    );
}

#[test]
fn read_only_and_range_errors() {
    let dir = tempdir();
    dynamic_image(dir.path());
    let disk = open_ro(&dir.path().join("good.vhd"));
    assert_eq!(
        disk.write_all_at(0, b"x").unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(
        disk.write_zeroes(0, 1, false).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    let size = disk.logical_size();
    let mut buf = [0u8; 2];
    assert_eq!(
        disk.read_exact_at(size - 1, &mut buf).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    assert_eq!(
        disk.map(size, 1).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
}
