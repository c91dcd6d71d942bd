//! Writes to images with internal snapshots (made by qemu-img): L2 tables shared with a snapshot are copied
//! as QEMU's `l2_allocate` does (the clusters they reference keep their refcounts), and a hostile entry in a
//! shared table never makes the engine touch refcounts past the end of the file.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use blk_core::{DiskFile, ErrorKind};
use support::{
    assert_qemu_check_clean, path_str, qemu_create, qemu_img, qemu_io, read_be, tempdir,
};

const CS: u64 = 4096;

/// A 1 MiB image (4 KiB clusters) with data in guest clusters 0..2 and a snapshot sharing its L2 table.
fn snapshotted(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("snap.qcow2");
    qemu_create(&path, "cluster_size=4096", "1M");
    qemu_io("qcow2", &path, &["write -P 0x11 0 8k"]);
    qemu_img(&["snapshot", "-c", "first", path_str(&path)]);
    path
}

#[test]
fn writing_next_to_a_snapshot_keeps_refcounts_as_qemu() {
    let dir = tempdir();
    let path = snapshotted(dir.path());
    {
        let disk = support::open_disk(&path, &support::rw()).unwrap();
        disk.write_all_at(3 * CS, &[0x33; 4096]).unwrap();
        // Overwriting a cluster shared with the snapshot copies it.
        disk.write_all_at(CS, &[0x44; 512]).unwrap();
        disk.flush().unwrap();
    }
    assert_qemu_check_clean(&path);
    let contents = support::qemu_contents(&path, "qcow2");
    assert!(contents[..CS as usize].iter().all(|&b| b == 0x11));
    assert!(contents[CS as usize..CS as usize + 512]
        .iter()
        .all(|&b| b == 0x44));
    assert!(contents[3 * CS as usize..4 * CS as usize]
        .iter()
        .all(|&b| b == 0x33));
    // The snapshot still has its data.
    qemu_img(&["snapshot", "-a", "first", path_str(&path)]);
    let contents = support::qemu_contents(&path, "qcow2");
    assert!(contents[..2 * CS as usize].iter().all(|&b| b == 0x11));
    assert!(contents[3 * CS as usize..4 * CS as usize]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn shared_table_entry_past_eof_grows_nothing() {
    let dir = tempdir();
    let path = snapshotted(dir.path());
    let l2 = read_be(&path, read_be(&path, 40, 8), 8) & 0x00ff_ffff_ffff_fe00;
    // Guest cluster 5: a zero cluster "allocated" at 96 GiB (the fuzzer's entry).
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&(0x18_0000_0000u64 | 1).to_be_bytes(), l2 + 5 * 8)
        .unwrap();
    drop(file);
    let before = std::fs::metadata(&path).unwrap().len();
    {
        let disk = support::open_disk(&path, &support::rw()).unwrap();
        // Copies the shared table (the bad entry with it) without touching its refcount.
        disk.write_all_at(7 * CS, &[0x77; 4096]).unwrap();
        for result in [
            disk.write_zeroes(5 * CS, 100, false),
            disk.write_zeroes(5 * CS, CS, true),
            disk.discard(5 * CS, CS),
            disk.write_all_at(5 * CS, &[1; 512]),
        ] {
            let e = result.expect_err("an entry past the end of the file was used");
            assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e:?}");
            assert_eq!(e.path(), Some(path.as_path()), "{e:?}");
        }
        disk.flush().unwrap();
    }
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(
        after <= before + 8 * CS,
        "the file grew from {before} to {after}"
    );
}
