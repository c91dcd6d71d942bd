//! `blk commit` against `qemu-img commit`: twin chains committed by both tools leave backing files with the
//! same guest data (byte-identical for raw) and emptied (or, with `-d`, kept) images that `qemu-img check`
//! calls clean and that show the guest the same disk as before.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stderr, Scratch};

/// `DIR/base.FMT` <- `DIR/top.qcow2` for DIR in `q` and `b`, the same in both: the base has data, the top
/// writes, zeroes and discards over it and is larger (the base grows on commit).
fn twin_chains(s: &Scratch, base_format: &str, top_options: &str) {
    for dir in ["q", "b"] {
        std::fs::create_dir_all(s.path(dir)).unwrap();
        let base = format!("{dir}/base.{base_format}");
        let top = format!("{dir}/top.qcow2");
        ok(&s.qemu_img(&["create", "-q", "-f", base_format, &base, "3M"]));
        ok(&s.qemu_io(&["-f", base_format, "-c", "write -P 0x11 0 3M", &base]));
        let backing = format!("base.{base_format}");
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            top_options,
            "-b",
            &backing,
            "-F",
            base_format,
            &top,
            "4M",
        ]));
        ok(&s.qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x22 64k 4k",
            "-c",
            "write -z 1M 128k",
            "-c",
            "discard 2M 64k",
            "-c",
            "write -P 0x33 3584k 2k",
            &top,
        ]));
    }
}

fn commit_both(s: &Scratch, base_format: &str, extra: &[&str]) {
    ok(&s.qemu_img(&["convert", "-O", "raw", "q/top.qcow2", "before.raw"]));
    for (dir, blk) in [("q", false), ("b", true)] {
        let top = format!("{dir}/top.qcow2");
        let mut args = vec!["commit"];
        args.extend_from_slice(extra);
        args.push(&top);
        let out = if blk { s.blk(&args) } else { s.qemu_img(&args) };
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    let (q_base, b_base) = (
        format!("q/base.{base_format}"),
        format!("b/base.{base_format}"),
    );
    if base_format == "raw" {
        assert!(
            s.read(&q_base) == s.read(&b_base),
            "committed raw bases differ"
        );
    } else {
        let check = s.qemu_img(&["check", &b_base]);
        assert_eq!(code(&check), 0, "check {b_base}");
    }
    let same = s.qemu_img(&["compare", &q_base, &b_base]);
    assert_eq!(code(&same), 0, "the committed bases differ");
    for top in ["q/top.qcow2", "b/top.qcow2"] {
        assert_eq!(code(&s.qemu_img(&["check", top])), 0, "check {top}");
        let view = s.qemu_img(&["compare", "before.raw", top]);
        assert_eq!(code(&view), 0, "{top}: the guest view changed");
    }
    if extra.contains(&"-d") {
        assert_eq!(
            code(&s.qemu_img(&["compare", "q/top.qcow2", "b/top.qcow2"])),
            0
        );
    } else {
        // Emptied: the image stores nothing, everything comes from the base again. (The bases' allocation
        // may differ in granularity: QEMU's commit copies whole 64 KiB mirror chunks, blk what the image stored.)
        for top in ["q/top.qcow2", "b/top.qcow2"] {
            let map: serde_json::Value =
                serde_json::from_str(&ok(&s.qemu_img(&["map", "--output=json", top]))).unwrap();
            for entry in map.as_array().unwrap() {
                assert!(
                    entry["depth"].as_u64().unwrap() >= 1,
                    "{top} still stores {entry}"
                );
            }
        }
    }
}

#[test]
fn commit_into_raw_matches_qemu_img() {
    for options in [
        "compat=1.1",
        "compat=0.10,cluster_size=4k",
        "compat=1.1,extended_l2=on",
    ] {
        let s = Scratch::new();
        twin_chains(&s, "raw", options);
        commit_both(&s, "raw", &[]);
    }
}

#[test]
fn commit_into_qcow2_and_keep() {
    let s = Scratch::new();
    twin_chains(&s, "qcow2", "compat=1.1");
    commit_both(&s, "qcow2", &["-d"]);
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    let theirs = s.qemu_img(&["commit", "-f", "raw", "r.raw"]);
    let ours = s.blk(&["commit", "-f", "raw", "r.raw"]);
    assert_eq!(code(&theirs), 1);
    assert_eq!(code(&ours), 1);
    assert!(
        stderr(&ours).contains("Image does not have a backing file"),
        "{}",
        stderr(&ours)
    );
}
