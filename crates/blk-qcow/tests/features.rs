//! Header feature bits: unknown incompatible bits named from the feature table, the corrupt bit, the dirty bit
//! with lazy refcounts, autoclear bits, v2 staying v2.

mod support;

use blk_core::ImageAdmin;
use blk_core::{DiskFile, ErrorKind};
use support::*;

#[test]
fn unknown_incompatible_bit_is_named() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("f.qcow2");
    qemu_create(&img, "", "1M");
    // Bit 2 (external data file) is named by qemu's feature table.
    patch(&img, 72, &(1u64 << 2).to_be_bytes());
    let err = support::open_disk(&img, &ro()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedFeature);
    patch(&img, 72, &(1u64 << 40).to_be_bytes());
    let err = support::open_disk(&img, &ro()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedFeature);
    assert!(
        err.to_string().contains("Unknown incompatible feature"),
        "{err}"
    );
}

#[test]
fn corrupt_bit_allows_read_only() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("c.qcow2");
    qemu_create(&img, "", "1M");
    patch(&img, 72, &2u64.to_be_bytes());
    assert_eq!(
        support::open_disk(&img, &rw()).unwrap_err().kind(),
        ErrorKind::CorruptImage
    );
    let disk = support::open_disk(&img, &ro()).unwrap();
    let info = disk.image_info().unwrap();
    let data = info.format_specific.unwrap().1;
    assert!(data.contains(&("corrupt".to_string(), blk_core::InfoValue::Bool(true))));
    drop(disk);
    let mut check = rw();
    check.check_mode = true;
    support::open_disk(&img, &check).unwrap();
}

#[test]
fn lazy_refcounts_set_dirty_while_open() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("l.qcow2");
    qemu_create(&img, "lazy_refcounts=on", "1M");
    {
        let disk = support::open_disk(&img, &rw()).unwrap();
        // Set before the first refcount change (the first allocation), not at open (see lazy_refcounts.rs).
        assert_eq!(read_be(&img, 72, 8) & 1, 0);
        disk.write_all_at(0, b"x").unwrap();
        assert_eq!(read_be(&img, 72, 8) & 1, 1);
        assert!(!disk.image_info().unwrap().dirty);
    }
    assert_eq!(read_be(&img, 72, 8) & 1, 0);
    assert_qemu_check_clean(&img);
}

#[test]
fn autoclear_bits_cleared_on_writable_open() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    qemu_create(&img, "", "1M");
    patch(&img, 88, &(1u64 << 7 | 1u64 << 63).to_be_bytes());
    drop(support::open_disk(&img, &ro()).unwrap());
    assert_ne!(read_be(&img, 88, 8), 0);
    drop(support::open_disk(&img, &rw()).unwrap());
    assert_eq!(read_be(&img, 88, 8), 0);
    assert_qemu_check_clean(&img);
}

#[test]
fn v2_stays_v2_and_extensions_survive() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("v2.qcow2");
    qemu_create(&img, "compat=0.10", "1M");
    let before = std::fs::read(&img).unwrap()[..512].to_vec();
    {
        let disk = support::open_disk(&img, &rw()).unwrap();
        disk.write_all_at(4096, &[1u8; 70_000]).unwrap();
    }
    let after = std::fs::read(&img).unwrap()[..512].to_vec();
    assert_eq!(before, after);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", path_str(&img)])).unwrap();
    assert_eq!(info["format-specific"]["data"]["compat"], "0.10");
    assert_qemu_check_clean(&img);
}

#[test]
fn refcount_table_grows_without_doubling() {
    let _g = serial();
    // On tmpfs when there is one: a new L2 table costs two syncs, and 512-byte clusters need hundreds.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempdir());
    let img = dir.path().join("g.qcow2");
    // 512-byte clusters with 64-bit refcounts: one refcount block covers 32 KiB, one table cluster 2 MiB.
    qemu_create(&img, "cluster_size=512,refcount_bits=64", "3M");
    {
        let disk = support::open_disk(&img, &rw()).unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 249) as u8).collect();
        disk.write_all_at(0, &data).unwrap();
        assert_same(&read_all(&disk), &data, "grown");
    }
    assert_qemu_check_clean(&img);
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len < 4 << 20, "file grew to {len}");
    let mut expect = vec![0u8; 3 << 20];
    expect
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 249) as u8);
    assert_same(&qemu_contents(&img, "qcow2"), &expect, "qemu");
}

/// A dirty image whose repair leaves a corruption (an unaligned data cluster, which QEMU does not repair)
/// opens writable as in qemu-io: only check errors fail the open.
#[test]
fn dirty_repair_leaving_corruptions_opens_like_qemu() {
    let dir = tempdir();
    let ours = dir.path().join("ours.qcow2");
    qemu_create(&ours, "cluster_size=4096", "1M");
    qemu_io("qcow2", &ours, &["write -P 1 0 8k"]);
    let l2 = read_be(&ours, read_be(&ours, 40, 8), 8) & 0x00ff_ffff_ffff_fe00;
    let entry = read_be(&ours, l2, 8);
    patch(&ours, l2, &(entry + 512).to_be_bytes());
    let incompatible = read_be(&ours, 72, 8);
    patch(&ours, 72, &(incompatible | 1).to_be_bytes());
    let theirs = dir.path().join("theirs.qcow2");
    std::fs::copy(&ours, &theirs).unwrap();
    qemu_io("qcow2", &theirs, &["write -P 2 64k 4k"]);
    {
        let disk = support::open_disk(&ours, &rw()).expect("the dirty image did not open");
        disk.write_all_at(64 << 10, &[2; 4096]).unwrap();
        disk.flush().unwrap();
    }
    assert_eq!(read_be(&ours, 72, 8), read_be(&theirs, 72, 8));
    let report = support::open_disk(&ours, &ro())
        .unwrap()
        .check(blk_core::RepairMode::None)
        .unwrap();
    assert!(report.corruptions > 0, "{report:#?}");
}

/// As QEMU's overlap check (its test 060, "L2 reference into L1"): a write through an L2 entry pointing at the
/// active L1 table is prevented and marks the image corrupt; later writes are refused.
#[test]
fn write_over_the_l1_table_marks_the_image_corrupt_like_qemu() {
    let dir = tempdir();
    let ours = dir.path().join("ours.qcow2");
    qemu_create(&ours, "cluster_size=4096", "1M");
    qemu_io("qcow2", &ours, &["write -P 1 0 8k"]);
    let l1 = read_be(&ours, 40, 8);
    let l2 = read_be(&ours, l1, 8) & 0x00ff_ffff_ffff_fe00;
    patch(&ours, l2 + 3 * 8, &(l1 | (1 << 63)).to_be_bytes());
    let theirs = dir.path().join("theirs.qcow2");
    std::fs::copy(&ours, &theirs).unwrap();
    // qemu-io reports the failed write ("write failed: Input/output error").
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 2 12k 4k", path_str(&theirs)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("write failed"));
    {
        let disk = support::open_disk(&ours, &rw()).unwrap();
        let e = disk.write_all_at(3 * 4096, &[2; 4096]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e:?}");
        let e = disk.write_all_at(100 << 10, &[3; 4096]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e:?}");
    }
    assert_eq!(
        read_be(&theirs, 72, 8) & 2,
        2,
        "qemu did not mark its copy corrupt"
    );
    assert_eq!(read_be(&ours, 72, 8), read_be(&theirs, 72, 8));
    // The L1 table is intact: qemu still reads the data.
    assert!(qemu_contents(&ours, "qcow2")[..8192]
        .iter()
        .all(|&b| b == 1));
    assert!(support::open_disk(&ours, &rw()).is_err());
}
