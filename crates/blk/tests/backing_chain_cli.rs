//! One depth rule for every command (issue 15, fault 4): a chain of `MAX_CHAIN_DEPTH` backing levels opens in
//! `info --backing-chain` and in the commands that read through it; one level more is refused by all of them
//! as too deep, not as a loop; a loop is a loop everywhere.

mod common;

use blk_factory::{create_disk_file, CreateParams, ImageFormat, MAX_CHAIN_DEPTH};
use common::*;

/// `levels` QCOW2 images over a raw base, `level-1` over the base; returns the top's name.
fn chain(scratch: &Scratch, levels: u32) -> String {
    create_disk_file(&CreateParams::new(
        scratch.path("base.raw"),
        ImageFormat::RAW,
        Some(1 << 20),
    ))
    .unwrap();
    let qcow2: ImageFormat = "qcow2".parse().unwrap();
    let mut below = ("base.raw".to_string(), ImageFormat::RAW);
    for i in 1..=levels {
        let name = format!("level-{i}.qcow2");
        let mut params = CreateParams::new(scratch.path(&name), qcow2, Some(1 << 20));
        params.backing_file = Some(below.0.clone());
        params.backing_format = Some(below.1);
        params.unsafe_backing = true;
        create_disk_file(&params).unwrap();
        below = (name, qcow2);
    }
    below.0
}

#[test]
fn every_command_takes_the_same_chains() {
    let scratch = Scratch::new();
    let top = chain(&scratch, MAX_CHAIN_DEPTH);
    let out = ok(&scratch.blk(&["info", "--backing-chain", "--output=json", &top]));
    let images: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        images.as_array().map(Vec::len),
        Some(MAX_CHAIN_DEPTH as usize + 1)
    );
    ok(&scratch.blk(&["check", &top]));
    ok(&scratch.blk(&["compare", &top, "base.raw"]));

    // One level more: too deep for every command, and said so.
    let mut params = CreateParams::new(
        scratch.path("one-more.qcow2"),
        "qcow2".parse().unwrap(),
        Some(1 << 20),
    );
    params.backing_file = Some(top.clone());
    params.backing_format = Some("qcow2".parse().unwrap());
    params.unsafe_backing = true;
    create_disk_file(&params).unwrap();
    for args in [
        &["info", "--backing-chain", "one-more.qcow2"][..],
        &["compare", "one-more.qcow2", "base.raw"][..],
    ] {
        let out = scratch.blk(args);
        assert_ne!(code(&out), 0, "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("longer than"), "{args:?}: {err}");
        assert!(!err.contains("loop"), "{args:?}: {err}");
    }
}

#[test]
fn a_loop_is_a_loop_for_every_command() {
    let scratch = Scratch::new();
    let qcow2: ImageFormat = "qcow2".parse().unwrap();
    for (name, backing) in [("a.qcow2", "b.qcow2"), ("b.qcow2", "a.qcow2")] {
        let mut params = CreateParams::new(scratch.path(name), qcow2, Some(1 << 20));
        params.backing_file = Some(backing.to_string());
        params.backing_format = Some(qcow2);
        params.unsafe_backing = true;
        create_disk_file(&params).unwrap();
    }
    for args in [
        &["info", "--backing-chain", "a.qcow2"][..],
        &["compare", "a.qcow2", "b.qcow2"][..],
    ] {
        let out = scratch.blk(args);
        assert_ne!(code(&out), 0, "{args:?}");
        assert!(stderr(&out).contains("loop"), "{args:?}: {}", stderr(&out));
    }
}
