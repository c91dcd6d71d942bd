//! `blk check` against `qemu-img check` on QCOW2 images with injected leaks and corruptions: the same exit code
//! and JSON counters before repair, and after `blk check -r` an image `qemu-img check` calls clean, as qemu-img's
//! own repair of a copy leaves it.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stdout, Scratch};

const CLUSTER: u64 = 65536;

fn be64(data: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
}

/// A 64 MiB QCOW2 (64 KiB clusters, 16-bit refcounts) with 1 MiB written at 0.
fn written_image(s: &Scratch, name: &str) -> Vec<u8> {
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", name, "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 0x5a 0 1M", name]));
    s.read(name)
}

/// The host offset of the first refcount block (from the refcount table in the header).
fn first_refcount_block(image: &[u8]) -> usize {
    let table = be64(image, 48) as usize;
    be64(image, table) as usize
}

/// Sets the 16-bit refcount of host cluster `cluster`.
fn set_refcount(image: &mut [u8], cluster: u64, value: u16) {
    let at = first_refcount_block(image) + 2 * cluster as usize;
    image[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The host cluster of guest cluster 0 (through L1[0] and its L2 table).
fn data_cluster_of_guest_zero(image: &[u8]) -> u64 {
    let l1 = be64(image, 40) as usize;
    let l2 = (be64(image, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    (be64(image, l2) & 0x00ff_ffff_ffff_fe00) / CLUSTER
}

/// Runs `check --output=json` with both tools on copies of `name` and compares exit codes and JSON.
fn same_check(s: &Scratch, name: &str) -> i32 {
    let qemu_copy = format!("q-{name}");
    s.write(&qemu_copy, &s.read(name));
    let ours = s.blk(&["check", "--output=json", name]);
    let theirs = s.qemu_img(&["check", "--output=json", &qemu_copy]);
    assert_eq!(code(&ours), code(&theirs), "exit codes differ");
    let mut a: serde_json::Value = serde_json::from_str(&stdout(&ours)).unwrap();
    let mut b: serde_json::Value = serde_json::from_str(&stdout(&theirs)).unwrap();
    a.as_object_mut().unwrap().remove("filename");
    b.as_object_mut().unwrap().remove("filename");
    assert_eq!(a, b, "check JSON differs");
    code(&ours)
}

/// Repairs `name` with `blk check -r MODE` and a copy with `qemu-img check -r MODE`; both end clean and equal.
fn same_repair(s: &Scratch, name: &str, mode: &str) {
    let qemu_copy = format!("r-{name}");
    s.write(&qemu_copy, &s.read(name));
    let ours = s.blk(&["check", "-r", mode, "--output=json", name]);
    let theirs = s.qemu_img(&["check", "-r", mode, "--output=json", &qemu_copy]);
    assert_eq!(code(&ours), code(&theirs), "repair exit codes differ");
    let mut a: serde_json::Value = serde_json::from_str(&stdout(&ours)).unwrap();
    let mut b: serde_json::Value = serde_json::from_str(&stdout(&theirs)).unwrap();
    a.as_object_mut().unwrap().remove("filename");
    b.as_object_mut().unwrap().remove("filename");
    assert_eq!(a, b, "repair JSON differs");
    let after = s.qemu_img(&["check", name]);
    assert_eq!(code(&after), 0, "qemu-img check after blk's repair");
    ok(&s.qemu_img(&["compare", name, &qemu_copy]));
}

#[test]
fn leaks_are_reported_and_repaired_like_qemu_img() {
    let s = Scratch::new();
    let mut image = written_image(&s, "leak.qcow2");
    // A cluster appended to the file whose refcount says it is in use: a leak.
    let leaked = image.len() as u64 / CLUSTER;
    set_refcount(&mut image, leaked, 1);
    image.resize(image.len() + CLUSTER as usize, 0);
    s.write("leak.qcow2", &image);
    assert_eq!(same_check(&s, "leak.qcow2"), 3);
    same_repair(&s, "leak.qcow2", "leaks");
}

#[test]
fn corruptions_are_reported_and_repaired_like_qemu_img() {
    let s = Scratch::new();
    let mut image = written_image(&s, "bad.qcow2");
    // A data cluster in use whose refcount is 0: a corruption (and, with OFLAG_COPIED set, a second one).
    let cluster = data_cluster_of_guest_zero(&image);
    set_refcount(&mut image, cluster, 0);
    s.write("bad.qcow2", &image);
    assert_eq!(same_check(&s, "bad.qcow2"), 2);
    same_repair(&s, "bad.qcow2", "all");
    // The guest data survived the repair.
    ok(&s.qemu_io(&["-c", "read -P 0x5a 0 1M", "bad.qcow2"]));
}

#[test]
fn a_refcount_too_high_is_a_leak_for_both() {
    let s = Scratch::new();
    let mut image = written_image(&s, "high.qcow2");
    let cluster = data_cluster_of_guest_zero(&image);
    set_refcount(&mut image, cluster, 2);
    s.write("high.qcow2", &image);
    let status = same_check(&s, "high.qcow2");
    assert_ne!(status, 0);
    same_repair(&s, "high.qcow2", "all");
}
