//! `blk_qcow::resize` against `qemu-img resize` on twin images: `qemu-img check` clean, `qemu-img compare`
//! equal, the same virtual size in `qemu-img info`.

mod support;

use std::path::{Path, PathBuf};

use blk_core::{ErrorKind, HostOpenOptions};
use blk_qcow::{resize, Qcow2ResizeOptions};
use support::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn options(shrink: bool) -> Qcow2ResizeOptions {
    Qcow2ResizeOptions {
        host: HostOpenOptions::default(),
        shrink,
    }
}

/// Creates `name` with qemu-img (`compat` "0.10" or "1.1").
fn create(dir: &Path, name: &str, compat: &str, cluster_size: u64, size: u64) -> PathBuf {
    let path = file(dir, name);
    let opts = format!("compat={compat},cluster_size={cluster_size}");
    qemu_create(&path, &opts, &size.to_string());
    path
}

/// Data at the start, in the middle, near the end (plain, compressed and zeroed clusters; the compressed
/// cluster must not overlap the others: qemu-io fails compressed writes over allocated clusters).
fn write_data(path: &Path, size: u64, cluster_size: u64) {
    let end_cluster = size / cluster_size * cluster_size - cluster_size;
    let cmds = [
        "write -P 0xa1 0 4k".to_string(),
        format!("write -P 0xb2 {} 8k", size / 2),
        format!("write -P 0xc3 {} 6k", size - 6 * KIB),
        format!(
            "write -c -P 0xd4 {} {}",
            end_cluster - 16 * cluster_size,
            cluster_size
        ),
        format!(
            "write -z {} {}",
            end_cluster - 20 * cluster_size,
            cluster_size
        ),
        format!("write -P 0xe5 {} 1k", size / 10 * 9 / 512 * 512),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io("qcow2", path, &cmds);
}

fn virtual_size(path: &Path) -> u64 {
    let out = qemu_img(&["info", "-U", "--output=json", path_str(path)]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img info JSON");
    v["virtual-size"].as_u64().expect("virtual-size")
}

/// Resizes `ours` with blk and a copy with qemu-img, then compares them.
fn resize_both(dir: &Path, ours: &Path, new_size: u64, shrink: bool) {
    let twin = file(dir, "twin.qcow2");
    std::fs::copy(ours, &twin).expect("copying the image");
    resize(ours, new_size, &options(shrink)).expect("blk resize");
    let size = new_size.to_string();
    if shrink {
        qemu_img(&["resize", "-q", "--shrink", path_str(&twin), &size]);
    } else {
        qemu_img(&["resize", "-q", path_str(&twin), &size]);
    }
    assert_qemu_check_clean(ours);
    assert_eq!(virtual_size(ours), new_size);
    assert_eq!(virtual_size(&twin), new_size);
    let (code, out) = qemu_img_status(&["compare", "-s", path_str(ours), path_str(&twin)]);
    assert_eq!(code, 0, "qemu-img compare: {out}");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "resize to {new_size}: file {} bytes, qemu-img's twin {} bytes",
        len(ours),
        len(&twin)
    );
}

/// Sizes per cluster size: (initial, grown within the L1 table, grown past it, shrunk).
fn sizes(cluster_size: u64) -> (u64, u64, u64, u64) {
    if cluster_size == 512 {
        // An L1 entry covers 32 KiB.
        (1000 * KIB, MIB, 4 * MIB, 300 * KIB)
    } else {
        // An L1 entry covers 512 MiB; the shrunk size ends inside a cluster.
        (1100 * MIB, 1500 * MIB, 3 * 1024 * MIB, 100 * MIB + 4 * KIB)
    }
}

fn matrix(compat: &str, cluster_size: u64, with_data: bool) {
    let _g = serial();
    let dir = tempdir();
    let (initial, within, across, shrunk) = sizes(cluster_size);
    for (target, shrink) in [(within, false), (across, false), (shrunk, true)] {
        let path = create(dir.path(), "ours.qcow2", compat, cluster_size, initial);
        if with_data {
            write_data(&path, initial, cluster_size);
        }
        resize_both(dir.path(), &path, target, shrink);
        if with_data && !shrink {
            // Written data survives a grow; the new area reads as zeros.
            let end = format!("read -P 0xc3 {} 6k", initial - 6 * KIB);
            let tail = format!("read -P 0 {initial} {}", target - initial);
            qemu_io("qcow2", &path, &["read -P 0xa1 0 4k", &end, &tail]);
        }
        std::fs::remove_file(&path).expect("removing the image");
    }
}

#[test]
fn v2_512_empty() {
    matrix("0.10", 512, false);
}

#[test]
fn v2_512_data() {
    matrix("0.10", 512, true);
}

#[test]
fn v3_512_empty() {
    matrix("1.1", 512, false);
}

#[test]
fn v3_512_data() {
    matrix("1.1", 512, true);
}

#[test]
fn v2_64k_empty() {
    matrix("0.10", 65536, false);
}

#[test]
fn v2_64k_data() {
    matrix("0.10", 65536, true);
}

#[test]
fn v3_64k_empty() {
    matrix("1.1", 65536, false);
}

#[test]
fn v3_64k_data() {
    matrix("1.1", 65536, true);
}

#[test]
fn shrink_to_one_sector_and_grow_back() {
    let _g = serial();
    let dir = tempdir();
    let path = create(dir.path(), "ours.qcow2", "1.1", 512, 2 * MIB);
    write_data(&path, 2 * MIB, 512);
    let e = resize(&path, 0, &options(true)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message().contains("New image size must be positive"),
        "{e}"
    );
    resize_both(dir.path(), &path, 512, true);
    resize_both(dir.path(), &path, 3 * MIB, false);
    // The first sector survives; everything after it was discarded and reads as zeros.
    qemu_io(
        "qcow2",
        &path,
        &["read -P 0xa1 0 512", "read -P 0 512 3071k"],
    );
}

#[test]
fn shrink_needs_the_option() {
    let _g = serial();
    let dir = tempdir();
    let path = create(dir.path(), "ours.qcow2", "1.1", 65536, 10 * MIB);
    write_data(&path, 10 * MIB, 65536);
    let before = std::fs::read(&path).expect("reading the image");
    let e = resize(&path, 5 * MIB, &options(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message()
            .contains("Use the --shrink option to perform a shrink operation."),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).expect("reading the image"), before);
    let (code, _) = qemu_img_status(&["resize", "-q", path_str(&path), "5M"]);
    assert_ne!(code, 0, "qemu-img refuses too");
}

#[test]
fn invalid_sizes() {
    let _g = serial();
    let dir = tempdir();
    let path = create(dir.path(), "ours.qcow2", "1.1", 512, MIB);
    let e = resize(&path, MIB + 100, &options(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("multiple of 512"), "{e}");
    // 512-byte clusters: 32 MiB of L1 entries cover 128 GiB.
    let e = resize(&path, 256 << 30, &options(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let (code, _) =
        qemu_img_status(&["resize", "-q", path_str(&path), &(256u64 << 30).to_string()]);
    assert_ne!(code, 0, "qemu-img refuses too");
    assert_eq!(virtual_size(&path), MIB);
    let e = resize(
        &path,
        2 * MIB,
        &Qcow2ResizeOptions {
            host: HostOpenOptions {
                read_only: true,
                ..HostOpenOptions::default()
            },
            shrink: false,
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    // Same size: nothing to do.
    resize(&path, MIB, &options(false)).expect("same size");
    assert_qemu_check_clean(&path);
}

#[test]
fn v2_with_snapshots_is_refused() {
    let _g = serial();
    let dir = tempdir();
    let path = create(dir.path(), "ours.qcow2", "0.10", 65536, 10 * MIB);
    write_data(&path, 10 * MIB, 65536);
    qemu_img(&["snapshot", "-c", "s1", path_str(&path)]);
    let e = resize(&path, 20 * MIB, &options(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedFeature);
    assert!(
        e.message()
            .contains("Can't resize a v2 image which has snapshots"),
        "{e}"
    );
    let (code, _) = qemu_img_status(&["resize", "-q", path_str(&path), "20M"]);
    assert_ne!(code, 0, "qemu-img refuses too");
    assert_eq!(virtual_size(&path), 10 * MIB);
}

/// v3 images with internal snapshots are resized (QEMU does); the snapshot's data stays intact.
#[test]
fn v3_with_snapshots() {
    let _g = serial();
    for cluster_size in [512, 65536] {
        let dir = tempdir();
        let (initial, _, across, shrunk) = sizes(cluster_size);
        for (target, shrink) in [(across, false), (shrunk, true)] {
            let path = create(dir.path(), "ours.qcow2", "1.1", cluster_size, initial);
            write_data(&path, initial, cluster_size);
            qemu_img(&["snapshot", "-c", "s1", path_str(&path)]);
            // Some clusters rewritten after the snapshot (copied L2 tables), some still shared.
            let end = format!("write -P 0x77 {} 4k", initial - 4 * KIB);
            qemu_io("qcow2", &path, &["write -P 0x66 0 2k", &end]);
            resize_both(dir.path(), &path, target, shrink);
            // The snapshots of both images hold the same data.
            let twin = file(dir.path(), "twin.qcow2");
            for image in [&path, &twin] {
                qemu_img(&["snapshot", "-a", "s1", path_str(image)]);
                assert_qemu_check_clean(image);
            }
            let (code, out) = qemu_img_status(&["compare", path_str(&path), path_str(&twin)]);
            assert_eq!(code, 0, "snapshot contents differ: {out}");
            qemu_io("qcow2", &path, &["read -P 0xa1 0 4k"]);
            std::fs::remove_file(&path).expect("removing the image");
        }
    }
}

#[test]
fn lazy_refcounts_image() {
    let _g = serial();
    let dir = tempdir();
    let path = file(dir.path(), "ours.qcow2");
    qemu_create(&path, "lazy_refcounts=on,cluster_size=4096", "8M");
    write_data(&path, 8 * MIB, 4096);
    resize_both(dir.path(), &path, 3 * MIB, true);
    resize_both(dir.path(), &path, 64 * MIB, false);
}

/// Growing an image whose backing file is longer than the old size: the new area reads as zeros, not as
/// the backing file (QEMU's zero write on truncate), with plain and extended L2 entries.
#[test]
fn grow_over_a_longer_backing_file() {
    let _g = serial();
    let dir = tempdir();
    let base = file(dir.path(), "base.qcow2");
    qemu_create(&base, "", "4M");
    qemu_io("qcow2", &base, &["write -P 0x55 0 4M"]);
    let cases: [(&str, u64, &[&str]); 5] = [
        ("", 1024 * KIB, &[]),
        ("", 1000 * KIB, &["write -P 0x66 960k 40k"]),
        ("cluster_size=512", 1000 * KIB, &["write -P 0x66 990k 4k"]),
        ("extended_l2=on", 1000 * KIB, &[]),
        ("extended_l2=on", 1000 * KIB, &["write -P 0x66 980k 2k"]),
    ];
    for (extra, size, writes) in cases {
        let path = file(dir.path(), "ours.qcow2");
        let mut opts = "backing_file=base.qcow2,backing_fmt=qcow2".to_string();
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        qemu_create(&path, &opts, &size.to_string());
        if !writes.is_empty() {
            qemu_io("qcow2", &path, writes);
        }
        resize_both(dir.path(), &path, 3 * MIB, false);
        let tail = format!("read -P 0 {size} {}", 3 * MIB - size);
        qemu_io("qcow2", &path, &["read -P 0x55 0 512", &tail]);
        std::fs::remove_file(&path).expect("removing the image");
    }
}

/// A v2 image over a backing file no longer than it grows as with QEMU (nothing to zero).
#[test]
fn grow_v2_over_a_backing_file() {
    let _g = serial();
    let dir = tempdir();
    let base = file(dir.path(), "base.qcow2");
    qemu_create(&base, "", "1M");
    qemu_io("qcow2", &base, &["write -P 0x55 0 1M"]);
    let path = file(dir.path(), "ours.qcow2");
    qemu_create(
        &path,
        "compat=0.10,backing_file=base.qcow2,backing_fmt=qcow2",
        "1M",
    );
    qemu_io("qcow2", &path, &["write -P 0x66 64k 4k"]);
    resize_both(dir.path(), &path, 3 * MIB, false);
    qemu_io("qcow2", &path, &["read -P 0x55 0 64k", "read -P 0 1M 2M"]);
}

/// An L2 entry past the new end pointing outside the file: the shrink fails with `CorruptImage`, without
/// panicking or touching anything outside the image.
#[test]
fn hostile_entry_past_the_end() {
    let _g = serial();
    let dir = tempdir();
    let path = create(dir.path(), "ours.qcow2", "1.1", 65536, 10 * MIB);
    qemu_io("qcow2", &path, &["write -P 0x42 9M 64k"]);
    let mut bytes = std::fs::read(&path).expect("reading the image");
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be(&bytes, 40) as usize;
    let l2 = (be(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let at = l2 + 8 * (9 * MIB / 65536) as usize;
    bytes[at..at + 8].copy_from_slice(&((1u64 << 63) | (1u64 << 40)).to_be_bytes());
    std::fs::write(&path, &bytes).expect("writing the image");
    let len = bytes.len() as u64;
    let e = resize(&path, MIB, &options(true)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
    assert!(std::fs::metadata(&path).unwrap().len() <= len);
    assert_eq!(virtual_size(&path), 10 * MIB);
}

#[test]
fn extended_l2() {
    let _g = serial();
    let dir = tempdir();
    for (target, shrink) in [(MIB, true), (3 * 1024 * MIB, false), (700 * MIB, false)] {
        let path = file(dir.path(), "ours.qcow2");
        qemu_create(&path, "extended_l2=on,cluster_size=32k", "600M");
        write_data(&path, 600 * MIB, 32 * KIB);
        qemu_io("qcow2", &path, &["write -P 0x31 300k 3k"]);
        resize_both(dir.path(), &path, target, shrink);
        std::fs::remove_file(&path).expect("removing the image");
    }
}
