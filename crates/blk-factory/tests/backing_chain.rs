//! Backing chains (issue 15, fault 4): opened iteratively, so a chain of `MAX_CHAIN_DEPTH` (at least 1,000)
//! backing levels opens even on a small stack and reads through every level; one level more is refused as too
//! deep, not as a loop; a real loop is named as a loop, with the file reached twice.

use std::path::{Path, PathBuf};

use blk_factory::{
    create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat, NamedImagePolicy,
    MAX_CHAIN_DEPTH,
};
use blk_test_support::target_tempdir;

/// A cluster per level: level `i` writes its marker at `i * CLUSTER` (a write opened without the backing file
/// copies nothing from it, so levels must not share a cluster).
const CLUSTER: u64 = 64 << 10;
// The documented cap is at least 1,000 levels.
const _: () = assert!(MAX_CHAIN_DEPTH >= 1000);

const SIZE: u64 = if MAX_CHAIN_DEPTH > 70 {
    (MAX_CHAIN_DEPTH as u64 + 2) * CLUSTER
} else {
    72 * CLUSTER
};

/// The stack a read through the deepest chain gets: a main thread's.
const READ_STACK: usize = 8 << 20;

fn qcow2() -> ImageFormat {
    "qcow2".parse().unwrap()
}

/// A QCOW2 image at `path` backed by `backing` (recorded without opening it, as `qemu-img create -u`).
fn create_on(path: &Path, backing: &str, format: ImageFormat) {
    let mut params = CreateParams::new(path, qcow2(), Some(SIZE));
    params.backing_file = Some(backing.to_string());
    params.backing_format = Some(format);
    params.unsafe_backing = true;
    create_disk_file(&params).unwrap();
}

fn open_params(path: &Path) -> DiskFileParams {
    DiskFileParams::new(path).named_images(NamedImagePolicy::AllowRecordedFormat)
}

/// A chain of `levels` QCOW2 images over a raw base. Returns the top.
fn chain(dir: &Path, levels: usize) -> PathBuf {
    let base = dir.join("base.raw");
    create_disk_file(&CreateParams::new(&base, ImageFormat::RAW, Some(SIZE))).unwrap();
    let mut below = (base, ImageFormat::RAW);
    for i in 1..=levels {
        let path = dir.join(format!("level-{i}.qcow2"));
        let name = below.0.file_name().unwrap().to_str().unwrap().to_string();
        create_on(&path, &name, below.1);
        below = (path, qcow2());
    }
    below.0
}

/// Level `i`'s marker byte.
fn marker(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

/// Reads every level's marker through `disk`.
fn assert_markers(disk: &dyn blk_core::DiskFile, levels: usize) {
    let mut got = [0u8; 512];
    for i in 1..=levels {
        disk.read_exact_at(i as u64 * CLUSTER, &mut got).unwrap();
        assert!(got.iter().all(|&b| b == marker(i)), "level {i}'s marker");
    }
}

/// Writes each level's marker in its own cluster (opening each level without its backing).
fn mark_levels(dir: &Path, levels: usize) {
    for i in 1..=levels {
        let path = dir.join(format!("level-{i}.qcow2"));
        let params = DiskFileParams::new(&path)
            .format(Some(qcow2()))
            .skip_backing(true);
        let disk = open_disk_file(&params).unwrap();
        disk.write_all_at(i as u64 * CLUSTER, &[marker(i); 512])
            .unwrap();
        disk.flush().unwrap();
    }
}

#[test]
fn a_chain_of_the_documented_depth_opens_on_a_small_stack_and_reads_through_every_level() {
    let dir = target_tempdir!("backing-chain-deep");
    let levels = MAX_CHAIN_DEPTH as usize;
    let top = chain(dir.path(), levels);
    mark_levels(dir.path(), levels);
    let top_for_thread = top.clone();
    // A small stack: an open that recursed per level would overflow it.
    let handle = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || open_disk_file(&open_params(&top_for_thread).read_only(true)).unwrap())
        .unwrap();
    let disk = handle
        .join()
        .expect("opening a deep chain overflowed a small stack");
    // Reads still pass down the levels one call each (the formats' backing reads), so they get the stack
    // a VMM's I/O thread would have for such a chain.
    let handle = std::thread::Builder::new()
        .stack_size(READ_STACK)
        .spawn(move || assert_markers(&*disk, levels))
        .unwrap();
    handle.join().unwrap();

    // One level more is too deep, and said so (not "a loop").
    let deeper = dir.path().join("one-more.qcow2");
    create_on(&deeper, top.file_name().unwrap().to_str().unwrap(), qcow2());
    let err = open_disk_file(&open_params(&deeper).read_only(true)).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("longer than"), "{text}");
    assert!(!text.contains("loop"), "{text}");
}

#[test]
fn seventy_levels_open_like_qemu_and_qemu_agrees() {
    let dir = target_tempdir!("backing-chain-70");
    let top = chain(dir.path(), 70);
    mark_levels(dir.path(), 70);
    let disk = open_disk_file(&open_params(&top)).unwrap();
    assert_markers(&*disk, 70);
    // Writable top over a 70-deep chain.
    disk.write_all_at(0, &[0xee; 512]).unwrap();
    drop(disk);
    if blk_test_support::have_qemu() {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--backing-chain", "--output=json"])
            .arg(&top)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_loop_is_reported_as_a_loop_naming_the_file_reached_twice() {
    let dir = target_tempdir!("backing-chain-loop");
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    let c = dir.path().join("c.qcow2");
    create_on(&a, "b.qcow2", qcow2());
    create_on(&b, "c.qcow2", qcow2());
    create_on(&c, "a.qcow2", qcow2());
    let err = open_disk_file(&open_params(&a).read_only(true)).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("loop"), "{text}");
    assert!(
        text.contains("c.qcow2") && text.contains("a.qcow2"),
        "{text}"
    );
    assert!(text.contains("inode"), "{text}");

    // Itself, by another name (a hard link): the same file, a loop.
    let self_backed = dir.path().join("self.qcow2");
    create_on(&self_backed, "alias.qcow2", qcow2());
    std::fs::hard_link(&self_backed, dir.path().join("alias.qcow2")).unwrap();
    let err = open_disk_file(&open_params(&self_backed).read_only(true)).unwrap_err();
    assert!(format!("{err}").contains("loop"), "{err}");
}
