//! Backing files: chains, relative names, shorter backing files, format override, the opener gate.

mod support;

use std::sync::Arc;

use blk_core::ImageAdmin;
use blk_core::{DenyNamedImages, DiskFile, ErrorKind, HostOpenOptions, NamedImage};
use blk_qcow::{Qcow2, Qcow2OpenOptions};
use support::*;

/// raw <- qcow2 (v2) <- qcow2 (v3), made by qemu-img, with writes in every layer.
#[test]
fn three_level_chain_reads_as_qemu() {
    let _g = serial();
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    std::fs::write(
        &base,
        (0..3u32 << 20).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mid = sub.join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_create(
        &mid,
        "compat=0.10,cluster_size=4k,backing_file=../base.raw,backing_fmt=raw",
        "4M",
    );
    qemu_io(
        "qcow2",
        &mid,
        &["write -P 1 1M 100k", "write -z 2M 64k", "discard 0 64k"],
    );
    qemu_create(&top, "backing_file=sub/mid.qcow2,backing_fmt=qcow2", "5M");
    qemu_io(
        "qcow2",
        &top,
        &["write -P 2 1050k 8k", "write -z 4M 64k", "discard 1M 64k"],
    );
    let disk = support::open_disk(&top, &rw()).unwrap();
    assert_same(&read_all(&disk), &qemu_contents(&top, "qcow2"), "chain");
    let info = disk.image_info().unwrap();
    assert_eq!(
        info.full_backing_filename.unwrap(),
        dir.path().join("sub/mid.qcow2")
    );
    // A partial write copies the rest of its cluster up from the chain.
    disk.write_all_at(1030 << 10, b"new").unwrap();
    disk.flush().unwrap();
    assert_same(&read_all(&disk), &qemu_contents(&top, "qcow2"), "after cow");
    drop(disk);
    assert_qemu_check_clean(&top);
}

/// The opener sees the resolved path, the recorded format, the depth and read-only; a refusal fails the open.
#[test]
fn opener_gate() {
    #[derive(Debug)]
    struct Recording(std::sync::Mutex<Vec<NamedImage>>);
    impl blk_core::ImageOpener for Recording {
        fn open_named(&self, image: &NamedImage) -> blk_core::Result<Box<dyn DiskFile>> {
            self.0.lock().unwrap().push(image.clone());
            TestOpener.open_named(image)
        }
    }
    let _g = serial();
    let dir = tempdir();
    std::fs::write(dir.path().join("b.raw"), vec![3u8; 1 << 20]).unwrap();
    let img = dir.path().join("t.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b.raw",
        "-F",
        "raw",
        path_str(&img),
    ]);
    let rec = Arc::new(Recording(Default::default()));
    let opts = Qcow2OpenOptions::new(HostOpenOptions::default(), rec.clone());
    let disk = support::open_disk(&img, &opts).unwrap();
    assert_eq!(disk.logical_size(), 1 << 20);
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, dir.path().join("b.raw"));
    assert_eq!(seen[0].format.as_deref(), Some("raw"));
    assert!(seen[0].read_only);
    assert_eq!(seen[0].depth, 1);
    drop(disk);
    let denied = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    assert_eq!(
        support::open_disk(&img, &denied).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // The caller's format overrides the recorded one.
    let mut over = ro();
    over.backing_format = Some("qcow2".into());
    assert!(support::open_disk(&img, &over).is_err());
}

/// A backing file shorter than the image reads as zeros past its end, also when copied up.
#[test]
fn short_backing_file() {
    let _g = serial();
    let dir = tempdir();
    std::fs::write(dir.path().join("b.raw"), vec![8u8; 100_000]).unwrap();
    let img = dir.path().join("t.qcow2");
    let o = create_options(
        1 << 20,
        &[("backing_file", "b.raw"), ("backing_fmt", "raw")],
    )
    .unwrap();
    Qcow2::create(&img, &o, &TestOpener).unwrap();
    let disk = support::open_disk(&img, &rw()).unwrap();
    let mut expect = vec![0u8; 1 << 20];
    expect[..100_000].fill(8);
    assert_same(&read_all(&disk), &expect, "short");
    disk.write_all_at(90_000, &[1u8; 20]).unwrap();
    expect[90_000..90_020].fill(1);
    assert_same(&read_all(&disk), &expect, "short after cow");
}

/// `TestOpener` caps chains at `MAX_CHAIN_DEPTH`: an image backed by itself fails to open instead of
/// overflowing the stack.
#[test]
fn test_opener_ends_backing_loops() {
    let dir = tempdir();
    let selfish = dir.path().join("self.qcow2");
    qemu_create(&selfish, "", "1M");
    qemu_rebase_unsafe(&selfish, "self.qcow2");
    // A thread with a small stack: a loop the cap did not end would overflow it.
    let opened = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || support::open_disk(&selfish, &ro()).map(|_| ()))
        .unwrap()
        .join()
        .expect("opening a backing loop panicked");
    let err = opened.expect_err("an image backed by itself opened");
    assert!(
        err.message().contains("deeper than") || format!("{err:?}").contains("deeper than"),
        "{err:?}"
    );
}
