//! `blk resize` against `qemu-img resize`: the same starting image resized by both tools gives the same file
//! (raw) or an image `qemu-img check` calls clean, `qemu-img compare` finds equal and `qemu-img info` gives the
//! same virtual size (QCOW2); errors and exit codes as qemu-img's.

mod common;

use common::{assert_both_fail_with, code, ok, stderr, stdout, Scratch};

/// Resizes copies `q.NAME` (qemu-img) and `b.NAME` (blk) of `name` with the same arguments; both must succeed.
fn resize_both(s: &Scratch, name: &str, args: &[&str]) {
    let (theirs, ours) = (format!("q.{name}"), format!("b.{name}"));
    std::fs::copy(s.path(name), s.path(&theirs)).unwrap();
    std::fs::copy(s.path(name), s.path(&ours)).unwrap();
    let run = |file: &str, blk: bool| {
        let mut full = vec!["resize"];
        full.extend(args.iter().take(args.len() - 1));
        full.extend(["--", file, args[args.len() - 1]]);
        // `--` goes before the file so a negative size is not an option; qemu-img takes it the same way.
        if blk {
            s.blk(&full)
        } else {
            s.qemu_img(&full)
        }
    };
    let q = run(&theirs, false);
    let b = run(&ours, true);
    assert_eq!(code(&q), 0, "qemu-img resize {args:?}: {}", stderr(&q));
    assert_eq!(code(&b), 0, "blk resize {args:?}: {}", stderr(&b));
    assert_eq!(stdout(&b), stdout(&q), "resize {args:?} output");
}

fn virtual_size(s: &Scratch, name: &str) -> u64 {
    let out = ok(&s.qemu_img(&["info", "--output=json", name]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

#[test]
fn raw_resize_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    for args in [
        &["-f", "raw", "20M"][..],
        &["-f", "raw", "+1000"][..],
        &["--shrink", "-f", "raw", "-3M"][..],
        &["--shrink", "-f", "raw", "5000"][..],
        &["-f", "raw", "--preallocation=falloc", "+2M"][..],
        &["-f", "raw", "--preallocation=full", "20M"][..],
        &["-q", "-f", "raw", "17M"][..],
    ] {
        resize_both(&s, "r.raw", args);
        assert!(
            s.read("q.r.raw") == s.read("b.r.raw"),
            "raw files differ after resize {args:?}"
        );
    }
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "v.vhd", "1M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "vhdx", "v.vhdx", "1M"]));
    let mut cases: Vec<(&[&str], &str)> = vec![
        (&["-f", "raw", "r.raw", "1M"][..], "Use the --shrink option"),
        (
            &["-f", "raw", "r.raw", "--", "-1M"][..],
            "Use the --shrink option",
        ),
        (
            &["-f", "raw", "r.raw", "0"][..],
            "New image size must be positive",
        ),
        (
            &["--shrink", "-f", "raw", "r.raw", "--", "-17M"][..],
            "New image size must be positive",
        ),
        (
            &["-f", "raw", "--preallocation=metadata", "r.raw", "32M"][..],
            "Unsupported preallocation mode: metadata",
        ),
    ];
    if cfg!(feature = "vhd") {
        cases.push((
            &["-f", "vpc", "v.vhd", "2M"],
            "Image format driver does not support resize",
        ));
    }
    if cfg!(feature = "vhdx") {
        cases.push((
            &["-f", "vhdx", "v.vhdx", "2M"],
            "Image format driver does not support resize",
        ));
    }
    for (args, message) in cases {
        let mut full = vec!["resize"];
        full.extend_from_slice(args);
        let err = assert_both_fail_with(&s, &full, message);
        // One error line, and qemu-img's warning line under a refused shrink.
        let theirs = stderr(&s.qemu_img(&full));
        assert_eq!(
            err.lines().count(),
            theirs.lines().count(),
            "as many lines as qemu-img ({theirs}): {err}"
        );
    }
    assert_eq!(
        s.read("r.raw").len(),
        16 << 20,
        "failed resizes leave the file alone"
    );
}

#[cfg(feature = "qcow2")]
#[test]
fn qcow2_resize_matches_qemu_img() {
    let s = Scratch::new();
    for (options, size) in [
        ("compat=1.1,cluster_size=512", "1M"),
        ("compat=0.10,cluster_size=512", "1M"),
        ("compat=1.1", "16M"),
        ("compat=0.10", "16M"),
    ] {
        ok(&s.qemu_img(&[
            "create", "-q", "-f", "qcow2", "-o", options, "x.qcow2", size,
        ]));
        // Data at the start and in the last cluster.
        ok(&s.qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            &format!("write -P 0xa5 {} 512", parse(size) - 512),
            "x.qcow2",
        ]));
        // Within the L1 table, with each preallocation mode, across an L1 growth (512-byte clusters: 64 KiB
        // per L2 table), then shrink.
        for args in [
            &["-f", "qcow2", "+1M"][..],
            &["-f", "qcow2", "--preallocation=metadata", "+1M"][..],
            &["-f", "qcow2", "--preallocation=falloc", "+1M"][..],
            &["-f", "qcow2", "--preallocation=full", "+1M"][..],
            &["-f", "qcow2", "3G"][..],
            &["--shrink", "-f", "qcow2", "-512k"][..],
        ] {
            resize_both(&s, "x.qcow2", args);
            for image in ["q.x.qcow2", "b.x.qcow2"] {
                let check = s.qemu_img(&["check", image]);
                assert_eq!(
                    code(&check),
                    0,
                    "{options} {args:?} {image}: {}",
                    stdout(&check)
                );
            }
            assert_eq!(
                virtual_size(&s, "q.x.qcow2"),
                virtual_size(&s, "b.x.qcow2"),
                "{options} {args:?}"
            );
            let compare = s.qemu_img(&[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "q.x.qcow2",
                "b.x.qcow2",
            ]);
            assert_eq!(
                code(&compare),
                0,
                "{options} {args:?}: {}",
                stdout(&compare)
            );
            std::fs::rename(s.path("b.x.qcow2"), s.path("x.qcow2")).unwrap();
        }
    }
}

#[cfg(feature = "qcow2")]
fn parse(size: &str) -> u64 {
    let (n, unit) = size.split_at(size.len() - 1);
    n.parse::<u64>().unwrap() * if unit == "M" { 1 << 20 } else { 1 << 30 }
}
