//! OFD locks: exclusive for writers, shared for readers, none with `LockMode::None`, shared by clones.

mod common;

use blk_core::{DiskFile, ErrorKind, HostOpenOptions, LockMode, Operation};
use blk_raw::FORMAT_NAME;
use common::*;

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);
    let first = open_disk(&path, rw()).unwrap();
    let err = open_disk(&path, rw()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(err.format(), Some(FORMAT_NAME));
    assert_eq!(err.operation(), Some(Operation::Lock));
    // A reader cannot share with a writer either.
    assert_eq!(
        open_disk(&path, ro()).unwrap_err().kind(),
        ErrorKind::Locked
    );
    drop(first);
    open_disk(&path, rw()).unwrap();
}

#[test]
fn readers_share() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);
    let a = open_disk(&path, ro()).unwrap();
    let b = open_disk(&path, ro()).unwrap();
    assert_eq!(
        open_disk(&path, rw()).unwrap_err().kind(),
        ErrorKind::Locked
    );
    drop((a, b));
    open_disk(&path, rw()).unwrap();
}

#[test]
fn lock_mode_none_skips_locking() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);
    let writer = open_disk(&path, rw()).unwrap();
    let other = open_disk(&path, unlocked()).unwrap();
    let reader = open_disk(
        &path,
        HostOpenOptions {
            read_only: true,
            lock: LockMode::None,
            ..HostOpenOptions::default()
        },
    )
    .unwrap();
    other.write_all_at(0, b"unlocked").unwrap();
    let mut back = [0u8; 8];
    writer.read_exact_at(0, &mut back).unwrap();
    reader.read_exact_at(0, &mut back).unwrap();
    assert_eq!(&back, b"unlocked");
}

#[test]
fn clones_share_the_lock() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);
    let original = open_disk(&path, rw()).unwrap();
    let clone = original.try_clone().unwrap();
    clone.write_all_at(0, b"clone").unwrap();
    original.write_all_at(5, b"original").unwrap();
    drop(original);
    // The lock belongs to the open file description, which the clone keeps alive.
    assert_eq!(
        open_disk(&path, rw()).unwrap_err().kind(),
        ErrorKind::Locked
    );
    drop(clone);
    let again = open_disk(&path, ro()).unwrap();
    let mut back = [0u8; 13];
    again.read_exact_at(0, &mut back).unwrap();
    assert_eq!(&back, b"cloneoriginal");
}
