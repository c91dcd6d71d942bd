//! External data files (`data_file`, `data_file_raw`): images made by qemu-img / qemu-io read back as
//! `qemu-img convert` reads them with `map` equal to `qemu-img map`; the same qemu-io scripts replayed by blk
//! give `qemu-img compare` equal images, a clean `qemu-img check` and (raw) byte-identical data files.

mod support;

use std::path::Path;

use blk_core::ImageAdmin;
use blk_core::{DiskFile, ErrorKind};
use support::*;

const SCRIPT: &[&str] = &[
    "write -P 1 0 100k",
    "write -z 200k 136k",
    "write -P 2 400k 300k",
    "write -z -u 448k 192k",
    "write -z 640k 64k",
    "discard 64k 64k",
    "discard 10k 20k",
    "write -P 4 1028k 4k",
    "write -P 5 1100k 1k",
    "write -z -u 1500k 100k",
    "discard 1700k 300k",
];

fn create_with_qemu(dir: &Path, opts: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let img = dir.join("img.qcow2");
    // qemu-img creates the data file relative to its working directory: name it absolutely.
    let opts = opts.replace("data_file=", &format!("data_file={}/", path_str(dir)));
    qemu_create(&img, &opts, "2M");
    img
}

#[test]
fn qemu_made_images_read_like_qemu_and_replays_match() {
    let _g = serial();
    let dir = tempdir();
    for opts in [
        "data_file=data.raw",
        "data_file=data.raw,data_file_raw=on",
        "data_file=data.raw,cluster_size=4k",
        "data_file=data.raw,extended_l2=on",
        "data_file=data.raw,data_file_raw=on,extended_l2=on,cluster_size=32k",
    ] {
        // The data file through `DiskFile` calls, and as a host file of the image's own.
        for (rw, ro, how) in [
            (rw_data(), ro_data(), "disk"),
            (rw_host_data(), ro_host_data(), "host file"),
        ] {
            let opts = &format!("{opts}, data file as {how}");
            let theirs =
                create_with_qemu(&dir.path().join("theirs"), opts.split(", ").next().unwrap());
            let ours = create_with_qemu(&dir.path().join("ours"), opts.split(", ").next().unwrap());
            assert_reads_and_maps_like_qemu(&theirs, &ro, &format!("{opts} (empty)"));
            qemu_io("qcow2", &theirs, SCRIPT);
            assert_reads_and_maps_like_qemu(&theirs, &ro, opts);
            {
                let disk = support::open_disk(&ours, &rw).unwrap();
                assert_eq!(
                    blk_core::Mapper::host_files(&*disk).len(),
                    if how == "host file" { 2 } else { 1 },
                    "{opts}"
                );
                for cmd in SCRIPT {
                    run_blk(&disk, cmd);
                }
                disk.flush().unwrap();
            }
            assert_qemu_check_clean(&ours);
            qemu_img(&["compare", "-q", path_str(&ours), path_str(&theirs)]);
            assert_eq!(
                qemu_map(&ours),
                qemu_map(&theirs),
                "qemu-img map after replay, {opts}"
            );
            if opts.contains("data_file_raw=on") {
                // The raw data file is the guest disk.
                let data = std::fs::read(dir.path().join("ours/data.raw")).unwrap();
                assert_same(&data, &qemu_contents(&theirs, "qcow2"), "raw data file");
            }
            std::fs::remove_dir_all(dir.path().join("theirs")).unwrap();
            std::fs::remove_dir_all(dir.path().join("ours")).unwrap();
        }
    }
}

#[test]
fn info_names_the_data_file() {
    let _g = serial();
    let dir = tempdir();
    let img = create_with_qemu(dir.path(), "data_file=d.raw,data_file_raw=on");
    let disk = support::open_disk(&img, &ro_data()).unwrap();
    let (_, data) = disk.image_info().unwrap().format_specific.unwrap();
    let name = format!("{}/d.raw", path_str(dir.path()));
    assert!(data.contains(&("data-file".to_string(), blk_core::InfoValue::String(name))));
    assert!(data.contains(&("data-file-raw".to_string(), blk_core::InfoValue::Bool(true))));
}

#[test]
fn compressed_writes_are_refused() {
    let _g = serial();
    let dir = tempdir();
    let img = create_with_qemu(dir.path(), "data_file=d.raw");
    let disk = support::open_disk(&img, &rw_data()).unwrap();
    let err = disk.write_compressed(0, &vec![1u8; 65536]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedFeature);
}

/// `qemu-img create` run in `dir` (it creates the data file relative to its working directory).
fn qemu_create_in(dir: &Path, opts: &str, size: &str) {
    let out = std::process::Command::new("qemu-img")
        .current_dir(dir)
        .args(["create", "-q", "-f", "qcow2", "-o", opts, "img.qcow2", size])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn create_matches_qemu_img() {
    let _g = serial();
    let dir = tempdir();
    for opts in [
        "data_file=data.raw",
        "data_file=data.raw,data_file_raw=on",
        "data_file=data.raw,cluster_size=4k,data_file_raw=on",
        "data_file=data.raw,preallocation=metadata",
        "data_file=data.raw,extended_l2=on",
        "data_file=data.raw,extended_l2=on,data_file_raw=on",
        "data_file=data.raw,preallocation=falloc",
        "data_file=data.raw,preallocation=full,lazy_refcounts=on",
    ] {
        let (q, b) = (dir.path().join("q"), dir.path().join("b"));
        std::fs::create_dir_all(&q).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        qemu_create_in(&q, opts, "3M");
        blk_create(b.join("img.qcow2"), 3 << 20, &option_pairs(opts));
        let ours = std::fs::read(b.join("img.qcow2")).unwrap();
        let theirs = std::fs::read(q.join("img.qcow2")).unwrap();
        assert_same(&ours, &theirs, opts);
        assert_eq!(
            std::fs::metadata(b.join("data.raw")).unwrap().len(),
            std::fs::metadata(q.join("data.raw")).unwrap().len(),
            "data file size, {opts}"
        );
        // qemu-img opens a relative data file name from its working directory.
        let out = std::process::Command::new("qemu-img")
            .current_dir(&b)
            .args(["check", "img.qcow2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img check, {opts}: {out:?}");
        std::fs::remove_dir_all(&q).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}

#[test]
fn create_refuses_what_qemu_img_refuses() {
    for opts in [
        "data_file_raw=on",
        "data_file=d.raw,compat=0.10",
        "data_file=d.raw,data_file_raw=on,backing_file=b.qcow2",
    ] {
        let err = create_options(1 << 20, &option_pairs(opts)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{opts}");
    }
}
