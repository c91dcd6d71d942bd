//! Header feature bits: unknown incompatible bits named from the feature table, the corrupt bit, the dirty bit
//! with lazy refcounts, autoclear bits, v2 staying v2.

mod support;

use blk_core::{DiskFile, ErrorKind};
use blk_qcow::Qcow2;
use support::*;

fn poke(path: &std::path::Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn peek_u64(path: &std::path::Path, at: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn unknown_incompatible_bit_is_named() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("f.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&img), "1M"]);
    // Bit 2 (external data file) is named by qemu's feature table.
    poke(&img, 72, &(1u64 << 2).to_be_bytes());
    let err = Qcow2::open(&img, &ro()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedFeature);
    poke(&img, 72, &(1u64 << 40).to_be_bytes());
    let err = Qcow2::open(&img, &ro()).unwrap_err();
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
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&img), "1M"]);
    poke(&img, 72, &2u64.to_be_bytes());
    assert_eq!(
        Qcow2::open(&img, &rw()).unwrap_err().kind(),
        ErrorKind::CorruptImage
    );
    let disk = Qcow2::open(&img, &ro()).unwrap();
    let info = disk.image_info().unwrap();
    let data = info.format_specific.unwrap().1;
    assert!(data.contains(&("corrupt".to_string(), blk_core::InfoValue::Bool(true))));
    drop(disk);
    let mut check = rw();
    check.check_mode = true;
    Qcow2::open(&img, &check).unwrap();
}

#[test]
fn lazy_refcounts_set_dirty_while_open() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("l.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        path_str(&img),
        "1M",
    ]);
    {
        let disk = Qcow2::open(&img, &rw()).unwrap();
        assert_eq!(peek_u64(&img, 72) & 1, 1);
        assert!(!disk.image_info().unwrap().dirty);
        disk.write_all_at(0, b"x").unwrap();
    }
    assert_eq!(peek_u64(&img, 72) & 1, 0);
    assert_qemu_check_clean(&img);
}

#[test]
fn autoclear_bits_cleared_on_writable_open() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&img), "1M"]);
    poke(&img, 88, &(1u64 << 7 | 1u64 << 63).to_be_bytes());
    drop(Qcow2::open(&img, &ro()).unwrap());
    assert_ne!(peek_u64(&img, 88), 0);
    drop(Qcow2::open(&img, &rw()).unwrap());
    assert_eq!(peek_u64(&img, 88), 0);
    assert_qemu_check_clean(&img);
}

#[test]
fn v2_stays_v2_and_extensions_survive() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("v2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        path_str(&img),
        "1M",
    ]);
    let before = std::fs::read(&img).unwrap()[..512].to_vec();
    {
        let disk = Qcow2::open(&img, &rw()).unwrap();
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
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=64",
        path_str(&img),
        "3M",
    ]);
    {
        let disk = Qcow2::open(&img, &rw()).unwrap();
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
