//! QEMU's overlap check (`qcow2_check_metadata_overlap`): the kinds it names, its `overlap-check` modes
//! (`none` lets a write over metadata through, `cached` refuses it, `all` also refuses a write over a
//! snapshot's L2 table, which `cached` does not know), and a write QEMU refuses refused the same way.

mod support;

use blk_core::{DiskFile, ErrorKind};
use blk_qcow::{OverlapCheck, Qcow2, Qcow2OpenOptions};
use support::*;

const CLUSTER: u64 = 65536;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn with_mode(mode: OverlapCheck) -> Qcow2OpenOptions {
    let mut options = rw();
    options.overlap_check = mode;
    options
}

/// A 64 MiB image (64 KiB clusters) with guest cluster 0 written, then snapshot `s1`, then guest cluster 1
/// written (so the active L2 table was copied: the old one belongs to the snapshot only).
fn image_with_snapshot(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("s.qcow2");
    qemu_create(&img, "", "64M");
    qemu_io("qcow2", &img, &["write -P 1 0 64k"]);
    qemu_img(&["snapshot", "-c", "s1", path_str(&img)]);
    qemu_io("qcow2", &img, &["write -P 2 64k 64k"]);
    img
}

#[test]
fn kinds_are_named_as_qemu_names_them() {
    let _g = serial();
    let dir = tempdir();
    let img = image_with_snapshot(dir.path());
    let l1 = read_be(&img, 40, 8);
    let l2 = read_be(&img, l1, 8) & OFFSET_MASK;
    let reftable = read_be(&img, 48, 8);
    let refblock = read_be(&img, reftable, 8);
    let snapshots = read_be(&img, 64, 8);
    let snapshot_l1 = read_be(&img, snapshots, 8);
    let snapshot_l2 = read_be(&img, snapshot_l1, 8) & OFFSET_MASK;
    let data = read_be(&img, l2 + 8, 8) & OFFSET_MASK;
    let image = Qcow2::open(&img, &ro()).unwrap();
    for (at, name) in [
        (0, Some("qcow2_header")),
        (l1, Some("active L1 table")),
        (reftable, Some("refcount table")),
        (snapshots, Some("snapshot table")),
        (snapshot_l1, Some("inactive L1 table")),
        (l2 + 4096, Some("active L2 table")),
        (refblock, Some("refcount block")),
        // `cached` does not read the snapshots' L2 tables.
        (snapshot_l2, None),
        (data, None),
    ] {
        assert_eq!(image.metadata_overlap(at, 512), name, "at {at:#x}");
    }
    let mut all = ro();
    all.overlap_check = OverlapCheck::All;
    let image = Qcow2::open(&img, &all).unwrap();
    assert_eq!(
        image.metadata_overlap(snapshot_l2, 512),
        Some("inactive L2 table")
    );
    let mut none = ro();
    none.overlap_check = OverlapCheck::None;
    let image = Qcow2::open(&img, &none).unwrap();
    assert_eq!(image.metadata_overlap(0, 512), None);
}

/// An active L2 entry patched to point at the snapshot's L2 table: `cached` (QEMU's default) lets the write
/// through, as QEMU does; `all` refuses it and marks the image corrupt, as qemu-io with `overlap-check=all`.
#[test]
fn all_refuses_a_write_over_a_snapshot_l2_table() {
    let _g = serial();
    let dir = tempdir();
    let img = image_with_snapshot(dir.path());
    let l1 = read_be(&img, 40, 8);
    let l2 = read_be(&img, l1, 8) & OFFSET_MASK;
    let snapshot_l1 = read_be(&img, read_be(&img, 64, 8), 8);
    let snapshot_l2 = read_be(&img, snapshot_l1, 8) & OFFSET_MASK;
    assert_ne!(l2, snapshot_l2);
    write_be(&img, l2 + 8, 8, snapshot_l2 | (1 << 63));
    let theirs = dir.path().join("theirs.qcow2");
    std::fs::copy(&img, &theirs).unwrap();
    let out = std::process::Command::new("qemu-io")
        .args([
            "--image-opts",
            "-c",
            "write -P 3 64k 4k",
            &format!(
                "driver=qcow2,overlap-check=all,file.filename={}",
                path_str(&theirs)
            ),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Preventing invalid write on metadata (overlaps with inactive L2 table)"),
        "{out:?}"
    );
    {
        let disk = open_disk(&img, &with_mode(OverlapCheck::All)).unwrap();
        let e = disk.write_all_at(CLUSTER, &[3; 4096]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e:?}");
        assert!(
            e.to_string()
                .contains("Preventing invalid write on metadata (overlaps with inactive L2 table)"),
            "{e}"
        );
    }
    assert_eq!(read_be(&img, 72, 8) & 2, 2, "not marked corrupt");
    assert_eq!(read_be(&img, 72, 8), read_be(&theirs, 72, 8));
    let cached = dir.path().join("cached.qcow2");
    std::fs::copy(&theirs, &cached).unwrap();
    write_be(&cached, 72, 8, 0);
    // `cached` does not know the snapshot's L2 tables: the write goes through, as in QEMU.
    let disk = open_disk(&cached, &with_mode(OverlapCheck::Cached)).unwrap();
    disk.write_all_at(CLUSTER, &[3; 4096]).unwrap();
}

/// The switch: a guest write into the declared snapshot table is refused (and marks the image corrupt) with
/// `cached` and `constant`, and goes through with `none`, as QEMU's `overlap-check=none` lets it.
#[test]
fn none_lets_a_write_over_the_snapshot_table_through() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("t.qcow2");
    qemu_create(&img, "", "64M");
    qemu_io("qcow2", &img, &["write -P 0 0 64k"]);
    let l2 = read_be(&img, read_be(&img, 40, 8), 8) & OFFSET_MASK;
    let data = read_be(&img, l2, 8) & OFFSET_MASK;
    write_be(&img, 60, 4, 1);
    write_be(&img, 64, 8, data);
    let pristine = std::fs::read(&img).unwrap();
    for mode in [OverlapCheck::Cached, OverlapCheck::Constant] {
        std::fs::write(&img, &pristine).unwrap();
        let disk = open_disk(&img, &with_mode(mode)).unwrap();
        let e = disk.write_all_at(0, &[0x5a; 4096]).unwrap_err();
        assert!(
            e.to_string().contains("overlaps with snapshot table"),
            "{e}"
        );
        drop(disk);
        assert_eq!(read_be(&img, 72, 8) & 2, 2, "{mode:?}: not marked corrupt");
    }
    std::fs::write(&img, &pristine).unwrap();
    let disk = open_disk(&img, &with_mode(OverlapCheck::None)).unwrap();
    disk.write_all_at(0, &[0x5a; 4096]).unwrap();
    drop(disk);
    assert_eq!(read_be(&img, 72, 8) & 2, 0);
}
