//! `blk rebase` against `qemu-img rebase`: twins of one overlay rebased by both tools record the same backing
//! file, pass `qemu-img check`, and show the guest the same disk as before (safe mode) or as qemu-img's result
//! (`-u`).
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, qemu_info_without_names, stderr, Scratch};

/// raw `b1.raw` <- `top.qcow2` (written, zeroed and discarded clusters), and a different raw `b2.raw`.
fn chain(s: &Scratch, top_options: &str) {
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "b1.raw", "4M"]));
    ok(&s.qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 1M",
        "-c",
        "write -P 0x12 2M 64k",
        "-c",
        "write -P 0x13 3M 5k",
        "b1.raw",
    ]));
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "b2.raw", "3M"]));
    ok(&s.qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 512k",
        "-c",
        "write -P 0x22 2M 128k",
        "-c",
        "write -P 0x13 2944k 4k",
        "b2.raw",
    ]));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        top_options,
        "-b",
        "b1.raw",
        "-F",
        "raw",
        "top.qcow2",
        "4M",
    ]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x33 64k 4k",
        "-c",
        "write -z 256k 64k",
        "-c",
        "discard 1536k 64k",
        "-c",
        "write -P 0x34 3584k 1k",
        "top.qcow2",
    ]));
}

/// Rebases twins `q.top.qcow2` (qemu-img) and `b.top.qcow2` (blk) of `top.qcow2` with `args`; both record the
/// same, and unless the new backing file is missing, both are clean and show the same guest disk.
fn rebase_both(s: &Scratch, args: &[&str]) {
    let backing_exists = !args.contains(&"gone.qcow2");
    for (twin, blk) in [("q.top.qcow2", false), ("b.top.qcow2", true)] {
        std::fs::copy(s.path("top.qcow2"), s.path(twin)).unwrap();
        let mut full = vec!["rebase"];
        full.extend_from_slice(args);
        full.push(twin);
        let out = if blk { s.blk(&full) } else { s.qemu_img(&full) };
        assert_eq!(
            code(&out),
            0,
            "{} {full:?}: {}",
            if blk { "blk" } else { "qemu-img" },
            stderr(&out)
        );
    }
    assert_eq!(
        qemu_info_without_names(s, "q.top.qcow2"),
        qemu_info_without_names(s, "b.top.qcow2"),
        "{args:?}"
    );
    if !backing_exists {
        return;
    }
    for twin in ["q.top.qcow2", "b.top.qcow2"] {
        let check = s.qemu_img(&["check", twin]);
        assert_eq!(code(&check), 0, "{args:?} {twin}");
    }
    let compare = s.qemu_img(&["compare", "q.top.qcow2", "b.top.qcow2"]);
    assert_eq!(
        code(&compare),
        0,
        "{args:?}: blk's result differs from qemu-img's"
    );
}

#[test]
fn safe_rebase_keeps_the_guest_view() {
    for options in ["compat=1.1", "compat=0.10,cluster_size=4k"] {
        let s = Scratch::new();
        chain(&s, options);
        ok(&s.qemu_img(&["convert", "-O", "raw", "top.qcow2", "before.raw"]));
        for args in [&["-b", "b2.raw", "-F", "raw"][..], &["-b", ""][..]] {
            rebase_both(&s, args);
            let same = s.qemu_img(&["compare", "before.raw", "b.top.qcow2"]);
            assert_eq!(code(&same), 0, "{options} {args:?}: the guest view changed");
        }
    }
}

#[test]
fn unsafe_rebase_only_rewrites_the_header() {
    let s = Scratch::new();
    chain(&s, "compat=1.1");
    rebase_both(&s, &["-u", "-b", "b2.raw", "-F", "raw"]);
    rebase_both(&s, &["-u", "-b", ""]);
    // The backing file need not exist in unsafe mode.
    rebase_both(&s, &["-u", "-b", "gone.qcow2", "-F", "qcow2"]);
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    chain(&s, "compat=1.1");
    for args in [
        &["rebase", "-u", "-b", "b2.raw"][..],
        &["rebase", "-b", "b2.raw"][..],
        &["rebase", "-f", "raw", "-u", "-b", "b1.raw", "-F", "raw"][..],
    ] {
        let target = if args.contains(&"raw") && args[1] == "-f" {
            "b2.raw"
        } else {
            "top.qcow2"
        };
        std::fs::copy(s.path(target), s.path("q.image")).unwrap();
        std::fs::copy(s.path(target), s.path("b.image")).unwrap();
        let before = s.read("b.image");
        let theirs = s.qemu_img(&[args, &["q.image"][..]].concat());
        let ours = s.blk(&[args, &["b.image"][..]].concat());
        assert_eq!(code(&theirs), 1, "qemu-img {args:?}");
        assert_eq!(code(&ours), 1, "blk {args:?}");
        let message = stderr(&theirs);
        let message = message.trim_start_matches("qemu-img: ").trim_end();
        assert!(
            stderr(&ours).contains(message),
            "{args:?}: blk says {} where qemu-img says {message}",
            stderr(&ours)
        );
        // qemu-img copies data in safe mode before it notices the missing format; blk checks first.
        assert!(s.read("b.image") == before, "{args:?} changed the image");
    }
}
