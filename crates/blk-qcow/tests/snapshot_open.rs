//! Opening an internal snapshot (`Qcow2OpenOptions::snapshot`): the snapshot's data as qemu-io reads it with
//! `-l`, read-only only, and clear errors for snapshots that do not exist or whose L1 table is broken.

mod support;

use blk_core::{ErrorKind, SnapshotSelector};
use support::*;

fn image_with_snapshot(dir: &std::path::Path) -> std::path::PathBuf {
    let path = file(dir, "s.qcow2");
    qemu_create(&path, "", "1M");
    qemu_io("qcow2", &path, &["write -P 0x5a 0 64k"]);
    qemu_img(&["snapshot", "-c", "snap", path_str(&path)]);
    qemu_io("qcow2", &path, &["write -P 0xa5 0 128k"]);
    path
}

fn with_snapshot(read_only: bool, selector: &str) -> blk_qcow::Qcow2OpenOptions {
    let mut options = if read_only { ro() } else { rw() };
    options.snapshot = Some(SnapshotSelector::parse(selector));
    options
}

#[test]
fn reads_the_snapshot_not_the_current_disk() {
    let dir = tempdir();
    let path = image_with_snapshot(dir.path());
    for selector in ["snap", "1", "snapshot.name=snap", "snapshot.id=1"] {
        let disk = support::open_disk(&path, &with_snapshot(true, selector)).unwrap();
        let data = read_all(&disk);
        assert!(data[..64 << 10].iter().all(|&b| b == 0x5a), "{selector}");
        assert!(data[64 << 10..].iter().all(|&b| b == 0), "{selector}");
    }
    let current = support::open_disk(&path, &ro()).unwrap();
    assert!(read_all(&current)[..128 << 10].iter().all(|&b| b == 0xa5));
}

#[test]
fn refuses_writable_opens_and_unknown_snapshots() {
    let dir = tempdir();
    let path = image_with_snapshot(dir.path());
    let e = support::open_disk(&path, &with_snapshot(false, "snap")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = support::open_disk(&path, &with_snapshot(true, "other")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("Can't find snapshot"), "{e}");
}

#[test]
fn broken_snapshot_l1_tables_are_corrupt() {
    let dir = tempdir();
    let path = image_with_snapshot(dir.path());
    let image = std::fs::read(&path).unwrap();
    let table = u64::from_be_bytes(image[64..72].try_into().unwrap()) as usize;
    // (field offset in the entry, bytes): an unaligned L1 offset, an L1 table past the end of the file, one
    // larger than QEMU's 32 MiB cap.
    let cases: [(usize, Vec<u8>); 3] = [
        (0, 0x10200u64.to_be_bytes().to_vec()),
        (0, (1u64 << 40).to_be_bytes().to_vec()),
        (8, (5u32 << 20).to_be_bytes().to_vec()),
    ];
    for (field, bytes) in cases {
        let mut broken = image.clone();
        broken[table + field..table + field + bytes.len()].copy_from_slice(&bytes);
        std::fs::write(&path, &broken).unwrap();
        let e = support::open_disk(&path, &with_snapshot(true, "snap")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
    }
}
