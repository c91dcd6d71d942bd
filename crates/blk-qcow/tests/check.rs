//! `check` and repair against `qemu-img check`: images made by qemu-img / qemu-io, with leaks and corruptions
//! injected by patching the file, checked by blk and by qemu-img (same exit class, same counters), then
//! repaired by blk and found clean by qemu-img.

mod support;

#[path = "check/data_file.rs"]
mod data_file;
#[path = "check/extended_l2.rs"]
mod extended_l2;
#[path = "check/inject.rs"]
mod inject;
#[path = "check/qemu.rs"]
mod qemu;

use blk_core::ImageAdmin;
use blk_core::{DiskFile, HostOpenOptions, RepairMode};
use blk_qcow::Qcow2OpenOptions;
use inject::{append_leak, layout};
use qemu::{
    assert_clean_by_qemu, assert_same_as_qemu, assert_same_repair_result, blk_check, exit_class,
    field, populated, qemu_check, repair_like_qemu,
};
use support::{opener, path_str, qemu_create, qemu_img, qemu_io, read_be, tempdir, write_be};

#[test]
fn clean_images_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in [
        "cluster_size=65536",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=512,refcount_bits=64",
        "compat=0.10,cluster_size=4096",
    ]
    .iter()
    .enumerate()
    {
        let path = populated(dir.path(), &format!("clean{i}.qcow2"), options);
        let report = assert_same_as_qemu(&path);
        assert_eq!(exit_class(&report), 0, "{options}: {report:#?}");
        assert!(report.messages.is_empty(), "{options}: {report:#?}");
    }
}

#[test]
fn leak_is_reported_and_repaired() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "leak.qcow2", "cluster_size=65536");
    let l = layout(&path);
    // A cluster appended to the file with refcount 1 and no reference: a leak.
    let cluster = append_leak(&path, &l);
    let report = assert_same_as_qemu(&path);
    assert_eq!(report.leaks, 1);
    assert!(
        report
            .messages
            .iter()
            .any(|m| m == &format!("Leaked cluster {cluster} refcount=1 reference=0")),
        "{:?}",
        report.messages
    );

    let fixed = repair_like_qemu(&path, RepairMode::Leaks);
    assert_eq!(fixed.leaks_fixed, 1);
    assert_clean_by_qemu(&path);
    assert_eq!(exit_class(&blk_check(&path, RepairMode::None)), 0);
}

#[test]
fn bumped_refcount_of_data_cluster() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(
        dir.path(),
        "bump.qcow2",
        "cluster_size=4096,refcount_bits=8",
    );
    let l = layout(&path);
    // Refcount 2 on a data cluster: a leak, and OFLAG_COPIED (set) no longer matches.
    let data = read_be(&path, l.l2_entry_offset(&path, 0), 8) & 0x00ff_ffff_ffff_fe00;
    let cluster = data / l.cluster_size;
    assert_eq!(l.refcount(&path, cluster), 1);
    l.set_refcount(&path, cluster, 2);
    let report = assert_same_as_qemu(&path);
    assert_eq!((report.leaks, report.corruptions), (1, 1), "{report:#?}");
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);
}

#[test]
fn zeroed_refcount_in_use_is_rebuilt() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "zero-ref.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let data = read_be(&path, l.l2_entry_offset(&path, 1), 8) & 0x00ff_ffff_ffff_fe00;
    let cluster = data / l.cluster_size;
    l.set_refcount(&path, cluster, 0);
    let report = assert_same_as_qemu(&path);
    assert!(report.corruptions >= 1, "{report:#?}");
    assert!(
        report
            .messages
            .iter()
            .any(|m| m == &format!("ERROR cluster {cluster} refcount=0 reference=1")),
        "{:?}",
        report.messages
    );
    let before = support::qemu_contents(&path, "qcow2");
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);
    assert_eq!(
        support::qemu_contents(&path, "qcow2"),
        before,
        "repair changed guest data"
    );
}

#[test]
fn two_l2_entries_sharing_a_cluster() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "shared.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let first = read_be(&path, l.l2_entry_offset(&path, 0), 8);
    write_be(&path, l.l2_entry_offset(&path, 1), 8, first);
    let report = assert_same_as_qemu(&path);
    assert!(report.corruptions >= 1 && report.leaks >= 1, "{report:#?}");
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);
}

#[test]
fn oflag_copied_mismatches() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "copied.qcow2", "cluster_size=65536");
    let l = layout(&path);
    // The L2 entry loses OFLAG_COPIED, the L1 entry too.
    let at = l.l2_entry_offset(&path, 0);
    write_be(&path, at, 8, read_be(&path, at, 8) & !(1 << 63));
    write_be(
        &path,
        l.l1_offset,
        8,
        read_be(&path, l.l1_offset, 8) & !(1 << 63),
    );
    let report = assert_same_as_qemu(&path);
    assert_eq!(report.corruptions, 2, "{report:#?}");
    assert!(
        report
            .messages
            .iter()
            .any(|m| m.starts_with("ERROR OFLAG_COPIED data cluster: l2_entry=")),
        "{:?}",
        report.messages
    );
    assert!(
        report
            .messages
            .iter()
            .any(|m| m.starts_with("ERROR OFLAG_COPIED L2 cluster: l1_index=0")),
        "{:?}",
        report.messages
    );
    let fixed = repair_like_qemu(&path, RepairMode::All);
    assert_eq!(fixed.corruptions_fixed, 2);
    assert_clean_by_qemu(&path);
}

#[test]
fn unaligned_entries_and_bad_refcount_blocks_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    // An unaligned data cluster.
    let path = populated(dir.path(), "unaligned.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let at = l.l2_entry_offset(&path, 0);
    write_be(&path, at, 8, read_be(&path, at, 8) + 0x200);
    let report = assert_same_as_qemu(&path);
    assert!(
        report
            .messages
            .iter()
            .any(|m| m.contains("Data cluster is not properly aligned")),
        "{:?}",
        report.messages
    );

    // A preallocated zero cluster that is unaligned: qemu turns it into a plain zero cluster.
    let path = populated(dir.path(), "unaligned-zero.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let at = l.l2_entry_offset(&path, 0);
    write_be(&path, at, 8, read_be(&path, at, 8) + 0x200 + 1);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_same_as_qemu(&path);

    // A refcount table entry pointing past the end of the file.
    let path = populated(dir.path(), "refblock-outside.qcow2", "cluster_size=65536");
    let l = layout(&path);
    write_be(&path, l.reftable_offset + 8, 8, 64 << 20);
    let report = assert_same_as_qemu(&path);
    assert!(
        report
            .messages
            .iter()
            .any(|m| m == "ERROR refcount block 1 is outside image"),
        "{:?}",
        report.messages
    );
    repair_like_qemu(&path, RepairMode::All);
    assert_same_repair_result(&path);

    // A refcount table entry that is not cluster aligned.
    let path = populated(dir.path(), "refblock-unaligned.qcow2", "cluster_size=65536");
    let l = layout(&path);
    write_be(&path, l.reftable_offset + 8, 8, 3 * 65536 + 512);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);
}

#[test]
fn snapshots_are_counted() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "snap.qcow2", "cluster_size=4096");
    qemu_img(&["snapshot", "-c", "first", path_str(&path)]);
    qemu_io("qcow2", &path, &["write -P 0x55 0 8k"]);
    qemu_img(&["snapshot", "-c", "second", path_str(&path)]);
    let report = assert_same_as_qemu(&path);
    assert_eq!(exit_class(&report), 0, "{report:#?}");
}

#[test]
fn dirty_image_is_repaired_on_writable_open() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "dirty.qcow2", "cluster_size=65536");
    let l = layout(&path);
    append_leak(&path, &l);
    write_be(&path, 72, 8, read_be(&path, 72, 8) | 1);
    {
        let disk = support::open_disk(&path, &support::rw()).unwrap();
        assert!(!disk.image_info().unwrap().dirty);
    }
    assert_eq!(read_be(&path, 72, 8) & 1, 0, "the dirty bit is still set");
    assert_clean_by_qemu(&path);
}

#[test]
fn check_runs_while_clones_write() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = dir.path().join("busy.qcow2");
    qemu_create(&path, "cluster_size=4096", "8M");
    let disk = support::open_disk(&path, &support::rw()).unwrap();
    let writer = disk.try_clone().unwrap();
    let handle = std::thread::spawn(move || {
        for i in 0..256u64 {
            writer
                .write_all_at(i * 12288 % (8 << 20), &[i as u8; 6000])
                .unwrap();
        }
    });
    for _ in 0..8 {
        let report = disk.check(RepairMode::None).unwrap();
        assert_eq!(
            (report.corruptions, report.check_errors),
            (0, 0),
            "{report:#?}"
        );
    }
    handle.join().unwrap();
    let report = disk.check(RepairMode::None).unwrap();
    assert_eq!(exit_class(&report), 0, "{report:#?}");
    drop(disk);
    assert_clean_by_qemu(&path);
}

#[test]
fn shared_cluster_across_formats() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in [
        "cluster_size=512,refcount_bits=1",
        "cluster_size=4096,refcount_bits=64",
        "compat=0.10,cluster_size=65536",
        "cluster_size=65536,refcount_bits=2",
        "cluster_size=4096,compression_type=zstd,refcount_bits=4",
    ]
    .iter()
    .enumerate()
    {
        let path = populated(dir.path(), &format!("shared{i}.qcow2"), options);
        let l = layout(&path);
        let first = read_be(&path, l.l2_entry_offset(&path, 0), 8);
        write_be(&path, l.l2_entry_offset(&path, 1), 8, first);
        let report = assert_same_as_qemu(&path);
        assert!(report.corruptions >= 1, "{options}: {report:#?}");
        repair_like_qemu(&path, RepairMode::All);
        // With 1-bit refcounts a shared cluster cannot be repaired (refcount 2 overflows): blk must leave
        // what qemu's own repair leaves.
        let (ours, ours_json) = qemu_check(&path, None);
        let (theirs, theirs_json) = qemu_check(&path.with_extension("qemu-repaired"), None);
        assert_eq!(
            ours, theirs,
            "{options}: blk's repair {ours_json} qemu's {theirs_json}"
        );
        for key in ["corruptions", "leaks", "check-errors"] {
            assert_eq!(
                field(&ours_json, key),
                field(&theirs_json, key),
                "{options}: {key}"
            );
        }
        if i != 0 {
            assert_eq!(ours, 0, "{options}: {ours_json}");
        }
        assert_same_as_qemu(&path);
    }
}

#[test]
fn persistent_bitmaps_are_counted() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = dir.path().join("bitmaps.qcow2");
    qemu_create(&path, "cluster_size=4096", "8M");
    qemu_img(&["bitmap", "--add", path_str(&path), "b0"]);
    qemu_img(&["bitmap", "--add", "-g", "65536", path_str(&path), "b1"]);
    qemu_io("qcow2", &path, &["write -P 1 0 1M", "write -P 2 5M 64k"]);
    let report = assert_same_as_qemu(&path);
    assert_eq!(exit_class(&report), 0, "{report:#?}");
}

#[test]
fn leaks_with_narrow_and_wide_refcounts() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, options) in [
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=4096,refcount_bits=2",
        "cluster_size=4096,refcount_bits=4",
        "cluster_size=4096,refcount_bits=32",
        "cluster_size=512,refcount_bits=64",
        "compat=0.10,cluster_size=512",
    ]
    .iter()
    .enumerate()
    {
        let path = populated(dir.path(), &format!("narrow{i}.qcow2"), options);
        let l = layout(&path);
        append_leak(&path, &l);
        // And a data cluster whose refcount is one too high (a leak plus an OFLAG_COPIED error), unless the
        // width cannot hold 2.
        if l.refcount_bits > 1 {
            let data = read_be(&path, l.l2_entry_offset(&path, 0), 8) & 0x00ff_ffff_ffff_fe00;
            l.set_refcount(&path, data / l.cluster_size, 2);
        }
        let report = assert_same_as_qemu(&path);
        assert!(report.leaks >= 1, "{options}: {report:#?}");
        let leaks_only = path.with_extension("leaks-only");
        std::fs::copy(&path, &leaks_only).unwrap();
        repair_like_qemu(&leaks_only, RepairMode::Leaks);
        assert_same_as_qemu(&leaks_only);
        repair_like_qemu(&path, RepairMode::All);
        assert_clean_by_qemu(&path);
    }
}

#[test]
fn more_corruptions_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    // One L2 table referenced by two L1 entries.
    let path = populated(dir.path(), "l2-twice.qcow2", "cluster_size=4096");
    let l = layout(&path);
    let first = read_be(&path, l.l1_offset, 8);
    write_be(&path, l.l1_offset + 8, 8, first);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);

    // Reserved bits in an L1 and an L2 entry.
    let path = populated(dir.path(), "reserved.qcow2", "cluster_size=65536");
    let l = layout(&path);
    write_be(
        &path,
        l.l1_offset,
        8,
        read_be(&path, l.l1_offset, 8) | 1 << 56,
    );
    let at = l.l2_entry_offset(&path, 0);
    write_be(&path, at, 8, read_be(&path, at, 8) | 1 << 57);
    assert_same_as_qemu(&path);

    // The refcount block's own refcount is 2.
    let path = populated(dir.path(), "refblock-ref.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let block = read_be(&path, l.reftable_offset, 8);
    l.set_refcount(&path, block / l.cluster_size, 2);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);

    // A compressed cluster whose descriptor claims more sectors, reaching into the next cluster.
    let path = populated(dir.path(), "compressed-long.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let at = l.l2_entry_offset(&path, (2 << 20) / 65536);
    let entry = read_be(&path, at, 8);
    assert_ne!(entry & (1 << 62), 0, "not a compressed entry");
    write_be(&path, at, 8, entry | (0x7f << 54));
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_same_as_qemu(&path);

    // A compressed entry with OFLAG_COPIED set.
    let path = populated(dir.path(), "compressed-copied.qcow2", "cluster_size=65536");
    let l = layout(&path);
    let at = l.l2_entry_offset(&path, (2 << 20) / 65536);
    write_be(&path, at, 8, read_be(&path, at, 8) | 1 << 63);
    assert_same_as_qemu(&path);

    // An L2 table past the end of the file, and a data cluster past the end.
    let path = populated(dir.path(), "past-eof.qcow2", "cluster_size=4096");
    let l = layout(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let at = l.l2_entry_offset(&path, 1);
    write_be(&path, at, 8, (len + 10 * 4096) | 1 << 63);
    write_be(&path, l.l1_offset + 8, 8, (len + 20 * 4096) | 1 << 63);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_same_as_qemu(&path);
}

#[test]
fn snapshot_refcount_errors_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "snap-err.qcow2", "cluster_size=4096");
    qemu_img(&["snapshot", "-c", "first", path_str(&path)]);
    let l = layout(&path);
    // Clusters shared with the snapshot have refcount 2: drop one to 1.
    let data = read_be(&path, l.l2_entry_offset(&path, 0), 8) & 0x00ff_ffff_ffff_fe00;
    assert_eq!(l.refcount(&path, data / l.cluster_size), 2);
    l.set_refcount(&path, data / l.cluster_size, 1);
    assert_same_as_qemu(&path);
    repair_like_qemu(&path, RepairMode::All);
    assert_clean_by_qemu(&path);
}

#[test]
fn repair_needs_a_writable_image() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "ro.qcow2", "cluster_size=65536");
    let disk = support::open_disk(&path, &support::ro()).unwrap();
    let err = disk.check(RepairMode::Leaks).unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::ReadOnly, "{err:?}");
    assert_eq!(err.path(), Some(path.as_path()), "{err:?}");
    assert_eq!(err.format(), Some("qcow2"), "{err:?}");
    assert_eq!(exit_class(&disk.check(RepairMode::None).unwrap()), 0);
}

#[test]
fn writes_after_a_rebuild_use_the_new_structures() {
    let _serial = support::serial();
    let dir = tempdir();
    for (i, extra) in ["", ",refcount_bits=1", ",compat=0.10"].iter().enumerate() {
        let path = populated(
            dir.path(),
            &format!("rebuilt{i}.qcow2"),
            &format!("cluster_size=4096{extra}"),
        );
        let l = layout(&path);
        // A refcount in use zeroed (rebuild) and a refcount table entry pointing past the end (extension).
        let data = read_be(&path, l.l2_entry_offset(&path, 1), 8) & 0x00ff_ffff_ffff_fe00;
        l.set_refcount(&path, data / l.cluster_size, 0);
        let len = std::fs::metadata(&path).unwrap().len();
        write_be(
            &path,
            l.reftable_offset + 8,
            8,
            (len.div_ceil(4096) + 10) * 4096,
        );
        let host = HostOpenOptions::default();
        let mut options = Qcow2OpenOptions::new(host, opener());
        options.check_mode = true;
        let disk = support::open_disk(&path, &options).unwrap();
        let report = disk.check(RepairMode::All).unwrap();
        assert!(report.corruptions_fixed > 0, "{report:#?}");
        assert_eq!(exit_class(&disk.check(RepairMode::None).unwrap()), 0);
        // The engine goes on with the repaired metadata: new clusters, new L2 tables, more refcount blocks.
        for k in 0..64u64 {
            disk.write_all_at(k * 61_440 % (4 << 20), &[k as u8 + 1; 5000])
                .unwrap();
        }
        disk.flush().unwrap();
        let ours = support::read_all(&disk);
        drop(disk);
        assert_clean_by_qemu(&path);
        assert_eq!(support::qemu_contents(&path, "qcow2"), ours);
    }
}

#[test]
fn leak_repairs_while_clones_write() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = populated(dir.path(), "busy-repair.qcow2", "cluster_size=4096");
    let l = layout(&path);
    append_leak(&path, &l);
    let disk = support::open_disk(&path, &support::rw()).unwrap();
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let clone = disk.try_clone().unwrap();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let offset = (t * (2 << 20) + i * 9_000) % (4 << 20);
                    clone
                        .write_all_at(offset, &[(t * 100 + i) as u8; 3000])
                        .unwrap();
                }
            })
        })
        .collect();
    let mut fixed = 0;
    let mut checks = 0;
    while checks < 3 || !writers.iter().all(|w| w.is_finished()) {
        checks += 1;
        let report = disk.check(RepairMode::Leaks).unwrap();
        assert_eq!(
            (report.corruptions, report.check_errors),
            (0, 0),
            "{report:#?}"
        );
        fixed += report.leaks_fixed;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(fixed, 1, "the injected leak is fixed once, nothing else");
    let ours = support::read_all(&disk);
    drop(disk);
    assert_clean_by_qemu(&path);
    assert_eq!(support::qemu_contents(&path, "qcow2"), ours);
}
