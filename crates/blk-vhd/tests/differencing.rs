//! Differencing disks (QEMU can neither make nor read them): chains built by blk, parent fall-through
//! against an in-memory model, each layer's structures checked field by field against the VHD spec, parent
//! identity and loop errors.

mod common;

use blk_core::{
    DenyNamedImages, DiskFile, ErrorKind, ExtentKind, HostOpenOptions, ImageAdmin, MappedDisk,
};
use blk_vhd::dynamic_header::DynamicHeader;
use blk_vhd::footer::{Footer, VHD_EPOCH};
use blk_vhd::parent::{decode_locator, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU};
use blk_vhd::{DiskType, Vhd, VhdOpenOptions};
use common::*;
use proptest::prelude::*;
use zerocopy::IntoBytes;

const SIZE: u64 = 10 << 20;

fn checksum(bytes: &[u8], at: usize) -> u32 {
    !bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)))
}

/// A base with some data and a child of it, in `dir`.
fn chain(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = dir.join("base.vhd");
    create(&base, Some(SIZE), &[]);
    let disk = open_rw(&base);
    disk.write_all_at(0, &pattern(1, 3 << 20)).unwrap();
    disk.write_all_at(7 << 20, &pattern(2, 4096)).unwrap();
    drop(disk);
    let child = dir.join("child.vhd");
    create(
        &child,
        None,
        &[("backing_file", "base.vhd"), ("backing_fmt", "vpc")],
    );
    (base, child)
}

/// VHD spec "Hard Disk Footer Format" and "Dynamic Disk Header Format" / "Parent Locator Entries", field by
/// field, for the child blk made.
#[test]
fn child_structures_follow_the_spec() {
    let dir = tempdir();
    let (base, child) = chain(dir.path());
    let bytes = std::fs::read(&child).unwrap();
    let parent_bytes = std::fs::read(&base).unwrap();
    let parent_footer = Footer::parse(parent_bytes[..512].try_into().unwrap());

    // Footer: copy at 0 identical to the end footer ("Hard Disk Footer Format": dynamic disks keep a copy).
    let footer_bytes = &bytes[..512];
    assert_eq!(footer_bytes, &bytes[bytes.len() - 512..]);
    let footer = Footer::parse(footer_bytes.try_into().unwrap());
    assert_eq!(&footer.cookie, b"conectix"); // Cookie
    assert_eq!(footer.features.get(), 2); // Features: reserved bit always set
    assert_eq!(footer.format_version.get(), 0x0001_0000); // File Format Version
    assert_eq!(footer.data_offset.get(), 512); // Data Offset: the dynamic header
    assert_eq!(&footer.creator_os, b"Wi2k"); // Creator Host OS
    assert_eq!(footer.current_size.get(), parent_footer.current_size.get()); // Current Size
    assert_eq!(footer.geometry(), parent_footer.geometry()); // Disk Geometry
    assert_eq!(footer.disk_type.get(), 4); // Disk Type: differencing
    assert_eq!(footer.checksum.get(), checksum(footer_bytes, 64)); // Checksum
    assert_ne!(footer.unique_id, parent_footer.unique_id); // Unique Id
    assert_eq!(footer.saved_state, 0);
    assert!(footer.reserved.iter().all(|&b| b == 0));

    // Dynamic header.
    let header_bytes = &bytes[512..1536];
    let header = DynamicHeader::parse(header_bytes.try_into().unwrap());
    assert_eq!(&header.cookie, b"cxsparse"); // Cookie
    assert_eq!(header.data_offset.get(), u64::MAX); // Data Offset: unused
    assert_eq!(header.header_version.get(), 0x0001_0000); // Header Version
    assert_eq!(header.block_size.get(), 2 << 20); // Block Size
    assert_eq!(
        u64::from(header.max_table_entries.get()),
        SIZE.div_ceil(2 << 20) + 1
    ); // 10514432 bytes
    assert_eq!(header.checksum.get(), checksum(header_bytes, 36)); // Checksum
    assert_eq!(header.parent_unique_id, parent_footer.unique_id); // Parent Unique ID
    let mtime = std::fs::metadata(&base)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(u64::from(header.parent_timestamp.get()), mtime - VHD_EPOCH); // Parent Time Stamp
    assert_eq!(header.parent_name(), "base.vhd"); // Parent Unicode Name (UTF-16 big-endian)
    assert_eq!(&header_bytes[64..68], &[0, b'b', 0, b'a']);
    assert!(header.reserved2.iter().all(|&b| b == 0));

    // Parent Locator Entries: W2ku absolute, W2ru relative (UTF-16LE), MacX file URL (UTF-8).
    let absolute = std::fs::canonicalize(&base).unwrap();
    let mut expected_offset = 1536;
    let mut seen = Vec::new();
    for l in header
        .parent_locators
        .iter()
        .filter(|l| l.platform_code.get() != 0)
    {
        let offset = l.platform_data_offset.get();
        let len = l.platform_data_length.get() as usize;
        assert_eq!(offset, expected_offset);
        assert_eq!(offset % 512, 0);
        assert_eq!(
            l.platform_data_space.get() as usize,
            len.div_ceil(512) * 512
        );
        expected_offset += u64::from(l.platform_data_space.get());
        let data = &bytes[offset as usize..offset as usize + len];
        let name = decode_locator(l.platform_code.get(), data).unwrap();
        seen.push((l.platform_code.get(), name));
    }
    assert_eq!(
        seen,
        vec![
            (PLATFORM_W2KU, absolute.to_string_lossy().into_owned()),
            (PLATFORM_W2RU, "./base.vhd".to_string()),
            (PLATFORM_MACX, absolute.to_string_lossy().into_owned()),
        ]
    );
    // Table Offset: the BAT follows the locators, all entries unallocated.
    assert_eq!(header.table_offset.get(), expected_offset);
    let bat_start = expected_offset as usize;
    let entries = header.max_table_entries.get() as usize;
    assert!(bytes[bat_start..bat_start + entries * 4]
        .iter()
        .all(|&b| b == 0xff));
    assert_eq!(
        bytes.len(),
        bat_start + (entries * 4).div_ceil(512) * 512 + 512
    );

    // What blk reports.
    let disk = open_ro(&child);
    assert_eq!(disk.disk_type(), DiskType::Differencing);
    let info = disk.image_info().unwrap();
    assert_eq!(info.backing_filename.as_deref(), Some("./base.vhd"));
    assert_eq!(info.backing_format.as_deref(), Some("vpc"));
    assert_eq!(disk.logical_size(), open_ro(&base).logical_size());
    assert_eq!(
        disk.check(blk_core::RepairMode::None).unwrap().corruptions,
        0
    );
}

/// VHD spec "Block Allocation Table and Data Blocks": after writes, each layer's BAT entries point at blocks made
/// of a sector bitmap (padded to 512 bytes) followed by the data, the footer moved after the last block (blk
/// pads so that each block's data starts on a 4 KiB boundary). The
/// dynamic base marks every sector present (as QEMU does); the differencing child only the sectors written,
/// most significant bit first.
#[test]
fn allocated_blocks_follow_the_spec_in_both_layers() {
    let dir = tempdir();
    let (base, child) = chain(dir.path());
    let bytes = std::fs::read(&base).unwrap();
    let header = DynamicHeader::parse(bytes[512..1536].try_into().unwrap());
    let entries = header.max_table_entries.get() as usize;
    let bat_end = 1536 + (entries * 4).div_ceil(512) * 512;
    let bat: Vec<u32> = (0..entries)
        .map(|i| u32::from_be_bytes(bytes[1536 + 4 * i..1540 + 4 * i].try_into().unwrap()))
        .collect();
    // chain() wrote 3 MiB at 0 (blocks 0 and 1) and 4 KiB at 7 MiB (block 3), in that order; blk starts each
    // block's data on a 4 KiB boundary (the bitmap just before it), QEMU packs them.
    let data0 = (bat_end + 512).next_multiple_of(4096);
    let stride = (2 << 20) + 4096;
    assert_eq!(bat[0] as usize * 512 + 512, data0);
    assert_eq!(bat[1] as usize * 512 + 512, data0 + stride);
    assert_eq!(bat[3] as usize * 512 + 512, data0 + 2 * stride);
    assert_eq!(bat[2], 0xffff_ffff);
    assert_eq!(bat[4], 0xffff_ffff);
    for &b in &[bat[0], bat[1], bat[3]] {
        let at = b as usize * 512;
        assert!(
            bytes[at..at + 512].iter().all(|&x| x == 0xff),
            "bitmap of block at {at}"
        );
    }
    assert_eq!(
        &bytes[bat[0] as usize * 512 + 512..][..4096],
        &pattern(1, 4096)[..]
    );
    // The footer right after the last block, where QEMU allocates next.
    assert_eq!(bytes.len(), data0 + 2 * stride + (2 << 20) + 512);
    assert_eq!(
        &bytes[bytes.len() - 512..],
        &bytes[..512],
        "footer moved after the last block"
    );

    let disk = open_rw(&child);
    disk.write_all_at((2 << 20) + 1024, &[7u8; 1536]).unwrap(); // sectors 2..=4 of block 1
    drop(disk);
    let bytes = std::fs::read(&child).unwrap();
    let header = DynamicHeader::parse(bytes[512..1536].try_into().unwrap());
    let table = header.table_offset.get() as usize;
    let entry = u32::from_be_bytes(bytes[table + 4..table + 8].try_into().unwrap()) as usize;
    let bitmap = &bytes[entry * 512..entry * 512 + 512];
    assert_eq!(bitmap[0], 0b0011_1000);
    assert!(bitmap[1..].iter().all(|&x| x == 0));
    assert_eq!(&bytes[entry * 512 + 512 + 1024..][..1536], &[7u8; 1536][..]);
    assert_eq!(&bytes[bytes.len() - 512..], &bytes[..512]);
}

#[test]
fn reads_fall_through_and_writes_stay_in_the_child() {
    let dir = tempdir();
    let (base, child) = chain(dir.path());
    let base_data = read_all(&open_ro(&base));
    let disk = open_rw(&child);
    assert!(read_all(&disk) == base_data);
    assert!(!disk.has_zero_init());
    // Unaligned write: the rest of its sectors comes from the parent.
    disk.write_all_at(1000, b"child").unwrap();
    disk.write_zeroes(7 << 20, 1024, true).unwrap();
    let mut model = base_data.clone();
    model[1000..1005].copy_from_slice(b"child");
    model[7 << 20..(7 << 20) + 1024].fill(0);
    assert!(read_all(&disk) == model);
    // map: the written sectors at depth 0, the rest of the block from the parent at depth 1.
    let e = disk.map(0, SIZE).unwrap();
    assert_eq!((e.kind, e.depth, e.length), (ExtentKind::Data, 1, 512));
    let e = disk.map(512, SIZE - 512).unwrap();
    assert_eq!((e.kind, e.depth, e.length), (ExtentKind::Data, 0, 512));
    let e = disk.map(1024, SIZE - 1024).unwrap();
    assert_eq!((e.kind, e.depth), (ExtentKind::Data, 1));
    let e = disk.map(4 << 20, 1 << 20).unwrap();
    assert_eq!((e.kind, e.depth), (ExtentKind::Zero, 1));
    drop(disk);
    assert!(
        read_all(&open_ro(&base)) == base_data,
        "the parent is untouched"
    );
    assert!(read_all(&open_ro(&child)) == model);
    // A grandchild.
    let grandchild = dir.path().join("grandchild.vhd");
    create(
        &grandchild,
        None,
        &[("backing_file", child.to_str().unwrap())],
    );
    let g = open_rw(&grandchild);
    g.write_all_at(3 << 20, b"third").unwrap();
    model[3 << 20..(3 << 20) + 5].copy_from_slice(b"third");
    assert!(read_all(&g) == model);
    assert_eq!(g.map(0, 512).unwrap().depth, 2);
}

#[test]
fn parent_errors_are_clear() {
    let dir = tempdir();
    let (base, child) = chain(dir.path());
    // The default opener refuses.
    let e = Vhd::open(&child, &VhdOpenOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = Vhd::create(
        dir.path().join("x.vhd"),
        &blk_vhd::VhdCreateOptions::from_key_values(None, &kv(&[("backing_file", "base.vhd")]))
            .unwrap(),
        &DenyNamedImages,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    // A size different from the parent's.
    let e = Vhd::create(
        dir.path().join("x.vhd"),
        &blk_vhd::VhdCreateOptions::from_key_values(
            Some(1 << 20),
            &kv(&[("backing_file", "base.vhd")]),
        )
        .unwrap(),
        VhdOpener::new().as_ref(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // A replaced parent: unique id mismatch.
    let saved = std::fs::read(&base).unwrap();
    create(&base, Some(SIZE), &[]);
    let e = Vhd::open(&child, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage);
    assert!(e.to_string().contains("unique id"), "{e}");
    // A missing parent.
    std::fs::remove_file(&base).unwrap();
    let e = Vhd::open(&child, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A parent loop: the child copied over its parent names itself.
    std::fs::write(&base, &saved).unwrap();
    std::fs::copy(&child, &base).unwrap();
    let e = Vhd::open(&base, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage);
    assert!(e.to_string().contains("loop"), "{e}");
    let e = Vhd::open(&child, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
}

/// A 2-cycle whose unique ids agree (forged): only the opener's depth cap stops it.
#[test]
fn forged_parent_cycle_hits_the_depth_cap() {
    let dir = tempdir();
    let (base, child) = chain(dir.path());
    // b.vhd: a child of child.vhd; then make child.vhd's parent b.vhd with b's unique id.
    let b = dir.path().join("b.vhd");
    create(&b, None, &[("backing_file", "child.vhd")]);
    let b_id = open_ro(&b).unique_id();
    let mut bytes = std::fs::read(&child).unwrap();
    let mut header = DynamicHeader::parse(bytes[512..1536].try_into().unwrap());
    header.parent_unique_id = b_id;
    header.set_parent_name("b.vhd");
    for l in header.parent_locators.iter_mut() {
        l.platform_code = 0.into();
    }
    header.update_checksum();
    bytes[512..1536].copy_from_slice(header.as_bytes());
    std::fs::write(&child, &bytes).unwrap();
    let _ = base;
    let e = Vhd::open(&b, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap_err();
    assert!(e.to_string().contains("too deep"), "{e}");
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u64 },
    Zero { offset: u64, len: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SIZE - 70_000, 1usize..70_000, any::<u64>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (0..SIZE - 70_000, 1u64..70_000).prop_map(|(offset, len)| Op::Zero { offset, len }),
        1 => Just(Op::Reopen),
    ]
}

fn apply(path: &std::path::Path, slot: &mut Option<MappedDisk<Vhd>>, model: &mut [u8], op: &Op) {
    if let Op::Reopen = op {
        *slot = None;
        *slot = Some(MappedDisk::new(
            Vhd::open(
                path,
                &VhdOpenOptions::new(HostOpenOptions::default(), VhdOpener::new()),
            )
            .unwrap(),
        ));
        return;
    }
    let disk = slot.as_ref().unwrap();
    match *op {
        Op::Write { offset, len, seed } => {
            let data = pattern(seed, len);
            disk.write_all_at(offset, &data).unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
        }
        Op::Zero { offset, len } => {
            disk.write_zeroes(offset, len, false).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Reopen => {}
    }
}

fn open_ro_size(disk: &Option<MappedDisk<Vhd>>) -> usize {
    disk.as_ref().unwrap().logical_size() as usize
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random writes into the base, then a child made by blk and random writes into it: both read as their
    /// models, and blk's check finds nothing.
    #[test]
    fn random_writes_at_both_layers_match_the_model(
        base_ops in proptest::collection::vec(op(), 1..8),
        child_ops in proptest::collection::vec(op(), 1..10),
    ) {
        let dir = tempdir();
        let base = dir.path().join("base.vhd");
        create(&base, Some(SIZE), &[]);
        let mut disk = Some(open_rw(&base));
        let size = open_ro_size(&disk);
        let mut base_model = vec![0u8; size];
        for o in &base_ops {
            apply(&base, &mut disk, &mut base_model, o);
        }
        drop(disk);
        let child = dir.path().join("child.vhd");
        create(&child, None, &[("backing_file", "base.vhd")]);
        let mut disk = Some(open_rw(&child));
        let mut child_model = base_model.clone();
        prop_assert!(read_all(disk.as_ref().unwrap()) == child_model);
        for o in &child_ops {
            apply(&child, &mut disk, &mut child_model, o);
        }
        let disk = disk.unwrap();
        prop_assert!(read_all(&disk) == child_model);
        prop_assert_eq!(disk.check(blk_core::RepairMode::None).unwrap().corruptions, 0);
        drop(disk);
        prop_assert!(read_all(&open_ro(&child)) == child_model);
        prop_assert!(read_all(&open_ro(&base)) == base_model);
    }
}
