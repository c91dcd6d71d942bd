//! Images with an external data file (incompatible bit 2): their data clusters are not refcounted in the
//! image file and their offsets are data-file offsets. Checked and repaired against qemu-img, with images
//! made with absolute data-file names (QEMU resolves relative ones against its working directory).

use std::path::{Path, PathBuf};

use blk_core::{DiskFile, RepairMode};

use crate::inject::{append_leak, layout, Layout};
use crate::qemu::{
    assert_clean_by_qemu, assert_same_as_qemu, exit_class, qemu_check, repair_like_qemu,
};
use crate::support::{self, path_str, qemu_create, qemu_io, read_be, tempdir, write_be};

/// The OFLAG_COPIED bit of L1 and L2 entries.
const COPIED: u64 = 1 << 63;
/// The offset bits of L1 and L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The dirty bit of the incompatible features (header offset 72).
const DIRTY: u64 = 1;

/// The option sets the tests cover: plain, raw data file, and both with extended L2 entries.
const VARIANTS: [&str; 4] = [
    "cluster_size=65536",
    "cluster_size=65536,data_file_raw=on",
    "cluster_size=65536,extended_l2=on",
    "cluster_size=16384,extended_l2=on,data_file_raw=on,refcount_bits=8",
];

/// A 4 MiB image `name` with data file `name.data` (absolute name) and data in guest cluster 0 (host
/// offset 0 in the data file), at 1M, a zeroed range and a partial cluster.
fn data_file_image(dir: &Path, name: &str, options: &str) -> PathBuf {
    let path = dir.join(name);
    let data = dir.join(format!("{name}.data"));
    let options = format!("{options},data_file={}", path_str(&data));
    qemu_create(&path, &options, "4M");
    qemu_io(
        "qcow2",
        &path,
        &[
            "write -P 0x11 0 128k",
            "write -P 0x22 1M 64k",
            "write -z 3M 64k",
            "write -P 0x44 192k 4k",
        ],
    );
    path
}

/// 64-bit words per L2 entry.
fn stride(path: &Path) -> u64 {
    if read_be(path, 72, 8) & (1 << 4) != 0 {
        2
    } else {
        1
    }
}

/// Host offset of the L2 entry of guest offset `guest` (inside L1 entry 0's table).
fn l2_entry_at(path: &Path, l: &Layout, guest: u64) -> u64 {
    let l2 = read_be(path, l.l1_offset, 8) & OFFSET_MASK;
    assert_ne!(l2, 0, "the test image has no L2 table");
    l2 + guest / l.cluster_size * 8 * stride(path)
}

#[test]
fn clean_data_file_images_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in VARIANTS.iter().enumerate() {
        let path = data_file_image(dir.path(), &format!("clean{i}.qcow2"), options);
        let l = layout(&path);
        // Guest cluster 0 lies at data-file offset 0: an entry of offset 0 with OFLAG_COPIED.
        assert_eq!(
            read_be(&path, l2_entry_at(&path, &l, 0), 8),
            COPIED,
            "{options}"
        );
        let report = assert_same_as_qemu(&path);
        assert_eq!(exit_class(&report), 0, "{options}: {report:#?}");
        assert!(report.messages.is_empty(), "{options}: {report:#?}");
        assert!(report.allocated_clusters.unwrap_or(0) >= 3, "{report:#?}");
    }
}

#[test]
fn leaks_in_the_image_file_are_repaired() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in VARIANTS.iter().enumerate() {
        let path = data_file_image(dir.path(), &format!("leak{i}.qcow2"), options);
        let l = layout(&path);
        let cluster = append_leak(&path, &l);
        let report = assert_same_as_qemu(&path);
        assert_eq!(
            (report.leaks, report.corruptions),
            (1, 0),
            "{options}: {report:#?}"
        );
        assert_eq!(
            report.messages,
            [format!("Leaked cluster {cluster} refcount=1 reference=0")],
            "{options}"
        );
        let leaks_only = path.with_extension("leaks-only");
        std::fs::copy(&path, &leaks_only).unwrap();
        let fixed = repair_like_qemu(&leaks_only, RepairMode::Leaks);
        assert_eq!(fixed.leaks_fixed, 1, "{options}: {fixed:#?}");
        assert_clean_by_qemu(&leaks_only);
        let fixed = repair_like_qemu(&path, RepairMode::All);
        assert_eq!(fixed.leaks_fixed, 1, "{options}: {fixed:#?}");
        assert_clean_by_qemu(&path);
    }
}

#[test]
fn oflag_copied_of_data_clusters() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in VARIANTS.iter().enumerate() {
        let path = data_file_image(dir.path(), &format!("copied{i}.qcow2"), options);
        let l = layout(&path);
        // A data cluster at a nonzero offset without OFLAG_COPIED: its refcount counts as 1, an error.
        let at = l2_entry_at(&path, &l, 1 << 20);
        let entry = read_be(&path, at, 8);
        assert_eq!(entry, COPIED | (1 << 20), "{options}");
        write_be(&path, at, 8, entry & !COPIED);
        // And guest cluster 0 without it: offset 0 without OFLAG_COPIED is unallocated, no error.
        let first = l2_entry_at(&path, &l, 0);
        write_be(&path, first, 8, 0);
        if stride(&path) == 2 {
            write_be(&path, first + 8, 8, 0);
        }
        let report = assert_same_as_qemu(&path);
        assert_eq!(report.corruptions, 1, "{options}: {report:#?}");
        assert_eq!(
            report.messages,
            [format!(
                "ERROR OFLAG_COPIED data cluster: l2_entry={:x} refcount=1",
                1u64 << 20
            )],
            "{options}"
        );
        let fixed = repair_like_qemu(&path, RepairMode::All);
        assert_eq!(fixed.corruptions_fixed, 1, "{options}: {fixed:#?}");
        assert_clean_by_qemu(&path);
        assert_eq!(read_be(&path, at, 8), entry, "{options}");
    }
}

#[test]
fn rebuilt_refcounts_leave_data_clusters_alone() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in [VARIANTS[1], VARIANTS[2]].iter().enumerate() {
        let path = data_file_image(dir.path(), &format!("rebuild{i}.qcow2"), options);
        let l = layout(&path);
        let before = support::qemu_contents(&path, "qcow2");
        // The L2 table's refcount zeroed: the refcount structure is rebuilt.
        let l2 = read_be(&path, l.l1_offset, 8) & OFFSET_MASK;
        l.set_refcount(&path, l2 / l.cluster_size, 0);
        let report = assert_same_as_qemu(&path);
        assert!(report.corruptions >= 1, "{options}: {report:#?}");
        repair_like_qemu(&path, RepairMode::All);
        assert_clean_by_qemu(&path);
        assert_eq!(
            support::qemu_contents(&path, "qcow2"),
            before,
            "{options}: repair changed guest data"
        );
    }
}

#[test]
fn dirty_data_file_image_is_repaired_and_marked_clean() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = data_file_image(
        dir.path(),
        "dirty.qcow2",
        "cluster_size=65536,lazy_refcounts=on",
    );
    let l = layout(&path);
    append_leak(&path, &l);
    write_be(&path, 72, 8, read_be(&path, 72, 8) | DIRTY);
    let report = assert_same_as_qemu(&path);
    assert_eq!((report.leaks, report.corruptions), (1, 0), "{report:#?}");
    // What a writable open of a dirty image runs: a full repair, then the dirty bit is cleared.
    repair_like_qemu(&path, RepairMode::All);
    assert_eq!(read_be(&path, 72, 8) & DIRTY, 0, "the dirty bit stays set");
    let (code, json) = qemu_check(&path, None);
    assert_eq!(code, 0, "{json}");
}

#[test]
fn compressed_entries_are_corruptions() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in VARIANTS.iter().enumerate() {
        let path = data_file_image(dir.path(), &format!("compressed{i}.qcow2"), options);
        let l = layout(&path);
        // A compressed descriptor (two sectors at 0x50000) at guest 2M, and one with OFLAG_COPIED at 2M plus
        // a cluster: an image with a data file cannot hold compressed clusters.
        let csize_shift = 62 - (l.cluster_size.trailing_zeros() - 8);
        let descriptor = (1 << 62) | (1 << csize_shift) | 0x50000;
        write_be(&path, l2_entry_at(&path, &l, 2 << 20), 8, descriptor);
        let next = l2_entry_at(&path, &l, (2 << 20) + l.cluster_size);
        write_be(&path, next, 8, descriptor | COPIED);
        let report = assert_same_as_qemu(&path);
        assert_eq!(report.corruptions, 3, "{options}: {report:#?}");
        // Nothing to repair there (QEMU neither): the corruptions stay.
        let fixed = repair_like_qemu(&path, RepairMode::All);
        assert_eq!(fixed.corruptions, 3, "{options}: {fixed:#?}");
    }
}

#[test]
fn dirty_data_file_image_opened_writable() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = data_file_image(
        dir.path(),
        "dirty-open.qcow2",
        "cluster_size=65536,lazy_refcounts=on",
    );
    let before = support::qemu_contents(&path, "qcow2");
    let l = layout(&path);
    append_leak(&path, &l);
    write_be(&path, 72, 8, read_be(&path, 72, 8) | DIRTY);
    let disk = crate::support::open_disk(&path, &support::rw_data()).unwrap();
    disk.write_all_at(1 << 20, &[0x55; 4096]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(read_be(&path, 72, 8) & DIRTY, 0, "the dirty bit stays set");
    assert_clean_by_qemu(&path);
    let mut expected = before;
    expected[1 << 20..(1 << 20) + 4096].fill(0x55);
    assert_eq!(support::qemu_contents(&path, "qcow2"), expected);
}
