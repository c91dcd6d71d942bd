//! Issue 17: `blk convert --bitmaps` (and `--skip-broken-bitmaps`) against qemu-img convert: the same exit
//! codes and messages, the same targets left behind, and targets whose bitmaps (`qemu-img info`) and dirty
//! maps (qemu-nbd `-B`) equal qemu-img's.

mod bitmap_support;
mod common;

use bitmap_support::{assert_check_clean, assert_same_bitmaps};
use blk_test_support::have_qemu;
use common::{ok, Scratch};

/// `src.img`: bitmaps of two granularities and a disabled one, with dirty granules; `broken.img`: the same
/// after a writer crashed (qemu-io's `abort`), its enabled bitmaps left in use; `r.raw`: a raw image.
fn sources() -> Scratch {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "src.img", "64M"]));
    for (name, g) in [("b64", "64k"), ("b512", "512k"), ("off", "64k")] {
        ok(&s.qemu_img(&["bitmap", "--add", "-g", g, "src.img", name]));
    }
    ok(&s.qemu_io(&[
        "-c",
        "write -P 1 1M 100k",
        "-c",
        "write -P 2 30M 4k",
        "src.img",
    ]));
    ok(&s.qemu_img(&["bitmap", "--disable", "src.img", "off"]));
    ok(&s.qemu_io(&["-c", "write -P 3 50M 1k", "src.img"]));
    std::fs::copy(s.path("src.img"), s.path("broken.img")).expect("copy");
    // Killed by SIGABRT on purpose.
    let _ = s.qemu_io(&["-c", "write -P 4 60M 64k", "-c", "abort", "broken.img"]);
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "r.raw", "1M"]));
    s
}

#[test]
fn convert_bitmaps_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let s = sources();
    let cases: &[&[&str]] = &[
        &["--bitmaps", "-O", "qcow2", "src.img", "OUT"],
        &[
            "--bitmaps",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "src.img",
            "OUT",
        ],
        &["--skip-broken-bitmaps", "-O", "qcow2", "src.img", "OUT"],
        &["--bitmaps", "-O", "raw", "src.img", "OUT"],
        &["--bitmaps", "-O", "qcow2", "broken.img", "OUT"],
        &[
            "--bitmaps",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            "broken.img",
            "OUT",
        ],
        &["--bitmaps", "-O", "qcow2", "r.raw", "OUT"],
        &["--bitmaps", "-O", "qcow2", "src.img", "src.img", "OUT"],
        &[
            "--bitmaps",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "src.img",
            "OUT",
        ],
    ];
    for (i, case) in cases.iter().enumerate() {
        let (theirs_name, ours_name) = (format!("q{i}.img"), format!("b{i}.img"));
        let with = |out: &str| -> Vec<String> {
            std::iter::once("convert")
                .chain(case.iter().copied())
                .map(|a| {
                    if a == "OUT" {
                        out.to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        };
        let q = with(&theirs_name);
        let b = with(&ours_name);
        let theirs = s.qemu_img(&q.iter().map(String::as_str).collect::<Vec<_>>());
        let ours = s.blk(&b.iter().map(String::as_str).collect::<Vec<_>>());
        let context = format!("convert {case:?}");
        if case.contains(&"broken.img") && !case.contains(&"--skip-broken-bitmaps") {
            assert!(
                !theirs.status.success(),
                "{context}: an inconsistent bitmap"
            );
        }
        assert_eq!(ours.status.code(), theirs.status.code(), "{context}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr).replace("qemu-img", "blk"),
            "{context}"
        );
        assert_eq!(
            s.path(&ours_name).exists(),
            s.path(&theirs_name).exists(),
            "{context}: target left behind"
        );
        if theirs.status.success() && case.contains(&"qcow2") {
            assert_same_bitmaps(&s, &theirs_name, &ours_name, &context);
            assert_check_clean(&s, &ours_name);
            ok(&s.qemu_img(&["compare", &theirs_name, &ours_name]));
        }
    }
}
