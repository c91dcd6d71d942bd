//! Differencing chains built by blk against an in-memory model, after random writes at both layers; sector
//! bitmaps of partially present blocks; the parent linkage check.

mod common;

use blk_core::{DiskFile, ErrorKind, ImageAdmin};
use common::*;
use proptest::prelude::*;

const SIZE: u64 = 8 << 20;

fn write(disk: &dyn DiskFile, model: &mut [u8], offset: u64, len: u64, byte: u8, zero: bool) {
    if zero {
        disk.write_zeroes(offset, len, true).unwrap();
        model[offset as usize..(offset + len) as usize].fill(0);
    } else {
        disk.write_all_at(offset, &vec![byte; len as usize])
            .unwrap();
        model[offset as usize..(offset + len) as usize].fill(byte);
    }
}

fn op() -> impl Strategy<Value = (u64, u64, u8, bool)> {
    (
        0..SIZE - 1,
        1u64..(3 << 20),
        any::<u8>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(o, l, b, z)| (o, l.min(SIZE - o), b, z))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn chain_matches_model(base_ops in prop::collection::vec(op(), 1..6), child_ops in prop::collection::vec(op(), 1..6), sector in prop::sample::select(vec![512u32, 4096])) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.vhdx");
        let child = dir.path().join("child.vhdx");
        let mut options = blk_vhdx::VhdxCreateOptions::from_key_values(Some(SIZE), &[("block_size".into(), "1M".into())]).unwrap();
        options.logical_sector_size = sector;
        blk_vhdx::Vhdx::create(&base, &options, &VhdxOpener).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        {
            let disk = open(&base, false).unwrap();
            for &(o, l, b, z) in &base_ops {
                write(&disk, &mut model, o, l, b, z);
            }
        }
        let child_options = blk_vhdx::VhdxCreateOptions::from_key_values(None, &[("backing_file".into(), "base.vhdx".into()), ("block_size".into(), "1M".into())]).unwrap();
        blk_vhdx::Vhdx::create(&child, &child_options, &VhdxOpener).unwrap();
        let disk = open(&child, false).unwrap();
        prop_assert_eq!(disk.logical_size(), SIZE);
        prop_assert_eq!(disk.topology().logical_block_size, sector);
        prop_assert!(read_all(&disk) == model);
        for &(o, l, b, z) in &child_ops {
            write(&disk, &mut model, o, l, b, z);
        }
        prop_assert!(read_all(&disk) == model);
        drop(disk);
        let disk = open(&child, true).unwrap();
        prop_assert!(read_all(&disk) == model);
        let info = disk.image_info().unwrap();
        prop_assert_eq!(info.backing_filename.as_deref(), Some("base.vhdx"));
        prop_assert_eq!(disk.check(blk_core::RepairMode::None).unwrap().corruptions, 0);
    }
}

#[test]
fn writing_the_parent_breaks_the_linkage() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.vhdx");
    create(&base, SIZE, &[]);
    let options = blk_vhdx::VhdxCreateOptions::from_key_values(
        None,
        &[("backing_file".into(), "base.vhdx".into())],
    )
    .unwrap();
    blk_vhdx::Vhdx::create(&child, &options, &VhdxOpener).unwrap();
    open(&child, true).unwrap();
    open(&base, false).unwrap().write_all_at(0, b"x").unwrap();
    let err = open(&child, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptImage, "{err}");
    assert!(err.to_string().contains("data write GUID"), "{err}");
    // Without an opener that allows it, the parent is refused.
    let options = blk_vhdx::VhdxOpenOptions::new(
        blk_core::HostOpenOptions {
            read_only: true,
            ..Default::default()
        },
        std::sync::Arc::new(blk_core::DenyNamedImages),
    );
    assert_eq!(
        blk_vhdx::Vhdx::open(&child, &options).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
}

/// A partially present block (as Hyper-V leaves them) reads sectors by its bitmap: set bits from the child,
/// clear bits from the parent; a write promotes it to fully present with the same content.
#[test]
fn partially_present_blocks_follow_the_sector_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.vhdx");
    create(&base, SIZE, &[("block_size", "1M")]);
    open(&base, false)
        .unwrap()
        .write_all_at(0, &vec![0xbb; 1 << 20])
        .unwrap();
    let options = blk_vhdx::VhdxCreateOptions::from_key_values(
        None,
        &[
            ("backing_file".into(), "base.vhdx".into()),
            ("block_size".into(), "1M".into()),
        ],
    )
    .unwrap();
    blk_vhdx::Vhdx::create(&child, &options, &VhdxOpener).unwrap();
    // Hand-build: payload block 0 at 8 MiB (0xcc), sector bitmap block at 9 MiB with sectors 2 and 3 present.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&child)
        .unwrap();
    use std::os::unix::fs::FileExt;
    file.set_len(10 << 20).unwrap();
    file.write_all_at(&vec![0xcc; 1 << 20], 8 << 20).unwrap();
    file.write_all_at(&[0b0000_1100], 9 << 20).unwrap();
    // BAT at 2 MiB: chunk ratio 4096 for 512-byte sectors and 1 MiB blocks; the bitmap entry is index 4096.
    file.write_all_at(&((8u64 << 20) | 7).to_le_bytes(), 2 << 20)
        .unwrap();
    file.write_all_at(&((9u64 << 20) | 6).to_le_bytes(), (2 << 20) + 4096 * 8)
        .unwrap();
    drop(file);
    let disk = open(&child, false).unwrap();
    let mut buf = vec![0u8; 3000];
    disk.read_exact_at(0, &mut buf).unwrap();
    let expected: Vec<u8> = (0..3000)
        .map(|i| {
            if (1024..2048).contains(&i) {
                0xcc
            } else {
                0xbb
            }
        })
        .collect();
    assert!(buf == expected);
    disk.write_all_at(100_000, b"new").unwrap();
    disk.read_exact_at(0, &mut buf).unwrap();
    assert!(buf == expected);
    let mut small = [0u8; 3];
    disk.read_exact_at(100_000, &mut small).unwrap();
    assert_eq!(&small, b"new");
}
