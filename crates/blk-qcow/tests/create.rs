//! `Qcow2::create` and its options against `qemu-img create` / `qemu-img check`.

mod support;

use blk_core::{DiskFile, ErrorKind};
use blk_qcow::{Preallocation, Qcow2, Qcow2CreateOptions, CREATE_OPTIONS};
use support::*;

#[test]
fn help_matches_qemu() {
    let _g = serial();
    let out = qemu_img(&["create", "-f", "qcow2", "-o", "help"]);
    let ours: Vec<String> = CREATE_OPTIONS.iter().map(|o| o.help_line()).collect();
    let theirs: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn option_errors() {
    let _g = serial();
    let err = |opts: &[(&str, &str)]| create_options(1 << 20, opts).unwrap_err().kind();
    assert_eq!(err(&[("bogus", "1")]), ErrorKind::InvalidInput);
    assert_eq!(err(&[("cluster_size", "1000")]), ErrorKind::InvalidInput);
    assert_eq!(err(&[("cluster_size", "4M")]), ErrorKind::InvalidInput);
    assert_eq!(err(&[("refcount_bits", "3")]), ErrorKind::InvalidInput);
    assert_eq!(
        err(&[("compat", "0.10"), ("lazy_refcounts", "on")]),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        err(&[("compat", "0.10"), ("refcount_bits", "8")]),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        err(&[("compat", "0.10"), ("compression_type", "zstd")]),
        ErrorKind::InvalidInput
    );
    // Extended L2 entries and data files are supported (tests/extended_l2.rs, tests/data_file.rs); their
    // option errors are qemu-img's.
    assert_eq!(
        err(&[("extended_l2", "on"), ("cluster_size", "8k")]),
        ErrorKind::InvalidInput
    );
    assert_eq!(err(&[("data_file_raw", "on")]), ErrorKind::InvalidInput);
    // LUKS needs its secret; AES encryption is not supported.
    assert_eq!(err(&[("encrypt.format", "luks")]), ErrorKind::InvalidInput);
    assert_eq!(
        err(&[("encrypt.format", "aes")]),
        ErrorKind::UnsupportedFeature
    );
    assert_eq!(err(&[("preallocation", "bogus")]), ErrorKind::InvalidInput);
    assert_eq!(err(&[("size", "1M")]), ErrorKind::InvalidInput);
    let none = Qcow2CreateOptions::from_key_values(None, &[]).unwrap_err();
    assert_eq!(none.kind(), ErrorKind::InvalidInput);
    let o = Qcow2CreateOptions::from_key_values(
        None,
        &key_values(&[("size", "3M"), ("preallocation", "metadata")]),
    )
    .unwrap();
    assert_eq!(
        (o.size, o.preallocation),
        (Some(3 << 20), Preallocation::Metadata)
    );
}

#[test]
fn preallocation_modes_are_clean() {
    let _g = serial();
    let dir = tempdir();
    for mode in ["metadata", "falloc", "full"] {
        for cs in ["512", "64k"] {
            let img = dir.path().join("p.qcow2");
            blk_create(
                &img,
                3 << 20,
                &[("preallocation", mode), ("cluster_size", cs)],
            );
            assert_qemu_check_clean(&img);
            let disk = support::open_disk(&img, &rw()).unwrap();
            let e = disk.map(0, 3 << 20).unwrap();
            assert!(e.is_allocated_data(), "{mode}: {e:?}");
            assert!(read_all(&disk).iter().all(|&b| b == 0));
            disk.write_all_at(1 << 20, b"prealloc").unwrap();
            drop(disk);
            assert_qemu_check_clean(&img);
            if mode != "metadata" {
                let len = std::fs::metadata(&img).unwrap().len();
                assert!(len >= 3 << 20, "{mode}: {len}");
            }
        }
    }
}

#[test]
fn size_from_backing_file() {
    let _g = serial();
    let dir = tempdir();
    std::fs::write(dir.path().join("base.raw"), vec![1u8; 5 << 20]).unwrap();
    let img = dir.path().join("top.qcow2");
    let o = Qcow2CreateOptions::from_key_values(
        None,
        &key_values(&[("backing_file", "base.raw"), ("backing_fmt", "raw")]),
    )
    .unwrap();
    Qcow2::create(&img, &o, &TestOpener).unwrap();
    let disk = support::open_disk(&img, &ro()).unwrap();
    assert_eq!(disk.logical_size(), 5 << 20);
    assert!(read_all(&disk).iter().all(|&b| b == 1));
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", path_str(&img)])).unwrap();
    assert_eq!(info["backing-filename"], "base.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["virtual-size"], 5 << 20);
}

#[test]
fn odd_sizes_round_to_sectors() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("odd.qcow2");
    blk_create(&img, 1000, &[]);
    let disk = support::open_disk(&img, &rw()).unwrap();
    assert_eq!(disk.logical_size(), 1024);
    disk.write_all_at(1000, &[9u8; 24]).unwrap();
    disk.discard(0, 1024).unwrap();
    assert!(read_all(&disk).iter().all(|&b| b == 0));
}

#[test]
fn sizes_past_8_eib_are_refused_not_wrapped() {
    let dir = tempdir();
    for size in [u64::MAX, u64::MAX - 100, 1 << 63] {
        let path = dir.path().join("huge.qcow2");
        let options = create_options(size, &[]).unwrap();
        let err = Qcow2::create(&path, &options, &TestOpener).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{size}: {err}");
        assert!(err.to_string().contains("8 EiB"), "{err}");
    }
}
