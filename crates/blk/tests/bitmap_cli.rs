//! Issue 17: `blk bitmap` against `qemu-img bitmap` on twins. Each step runs the same command line on `q.img`
//! with qemu-img and on `b.img` with blk (guest writes between them by qemu-io and `blk io`); exit codes and
//! messages must match, and at the end and along the way the bitmaps `qemu-img info` lists and each one's
//! dirty map (qemu-nbd `-B`, read by `qemu-img map`) are equal, and `qemu-img check` is clean.

mod bitmap_support;
mod common;

use bitmap_support::{assert_check_clean, assert_same_bitmaps};
use blk_test_support::have_qemu;
use common::{ok, Scratch};

/// One step: a `bitmap` command line (`IMG` stands for the image), or guest writes (qemu-io commands).
enum Step {
    Bitmap(&'static [&'static str]),
    Writes(&'static [&'static str]),
}

const STEPS: &[Step] = &[
    Step::Bitmap(&["--add", "-g", "64k", "IMG", "a"]),
    Step::Bitmap(&["--add", "-g", "512k", "--disable", "IMG", "b"]),
    Step::Writes(&["write -P 1 0 4k", "write -P 2 1M 100k", "write -z 5M 64k"]),
    Step::Bitmap(&["--add", "IMG", "c"]),
    Step::Bitmap(&["--merge", "a", "IMG", "b"]),
    Step::Bitmap(&["--merge", "s", "-b", "src.img", "-F", "qcow2", "IMG", "c"]),
    Step::Writes(&["write -P 3 7M 4k", "discard 2M 64k"]),
    Step::Bitmap(&["--clear", "IMG", "a"]),
    Step::Bitmap(&["--disable", "IMG", "a"]),
    Step::Bitmap(&["--enable", "IMG", "b"]),
    Step::Writes(&["write -P 4 9M 8k", "write -P 5 63M 4k"]),
    Step::Bitmap(&["--add", "--clear", "--disable", "IMG", "d"]),
    Step::Bitmap(&["--merge", "c", "--enable", "IMG", "d"]),
    Step::Bitmap(&["--remove", "IMG", "c"]),
    // Failures, with qemu-img's messages.
    Step::Bitmap(&["--add", "IMG", "a"]),
    Step::Bitmap(&["--remove", "IMG", "zz"]),
    Step::Bitmap(&["--merge", "zz", "IMG", "a"]),
    Step::Bitmap(&["--merge", "a", "IMG", "zz"]),
    Step::Bitmap(&["--merge", "zz", "-b", "src.img", "IMG", "a"]),
    Step::Bitmap(&["--add", "-g", "100", "IMG", "x"]),
    Step::Bitmap(&["--add", "-g", "abc", "IMG", "x"]),
    Step::Bitmap(&["IMG", "a"]),
    Step::Bitmap(&["--add", "IMG"]),
    Step::Bitmap(&["--add", "IMG", "a", "b"]),
    Step::Bitmap(&["-g", "64k", "--clear", "IMG", "a"]),
    Step::Bitmap(&["-F", "qcow2", "--clear", "IMG", "a"]),
    Step::Bitmap(&["-b", "src.img", "--clear", "IMG", "a"]),
    // The first action is kept when a later one fails.
    Step::Bitmap(&["--add", "--merge", "zz", "IMG", "e"]),
    Step::Writes(&["write -P 6 20M 1M"]),
];

#[test]
fn bitmap_commands_match_qemu_img() {
    if !have_qemu() {
        return;
    }
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q.img", "64M"]));
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    // The -b source: a bitmap of another granularity with a few dirty granules.
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "src.img", "64M"]));
    ok(&s.qemu_img(&["bitmap", "--add", "-g", "128k", "src.img", "s"]));
    ok(&s.qemu_io(&["-c", "write 3M 1k", "-c", "write 40M 300k", "src.img"]));
    for (i, step) in STEPS.iter().enumerate() {
        match step {
            Step::Bitmap(args) => {
                let with = |image: &'static str| -> Vec<&str> {
                    let mut v = vec!["bitmap"];
                    v.extend(args.iter().map(|a| if *a == "IMG" { image } else { *a }));
                    v
                };
                let theirs = s.qemu_img(&with("q.img"));
                let ours = s.blk(&with("b.img"));
                let context = format!("step {i}: bitmap {args:?}");
                assert_eq!(ours.status.code(), theirs.status.code(), "{context}");
                assert_eq!(
                    String::from_utf8_lossy(&ours.stderr),
                    String::from_utf8_lossy(&theirs.stderr).replace("qemu-img", "blk"),
                    "{context}"
                );
            }
            Step::Writes(commands) => {
                let mut args = vec!["-f", "qcow2"];
                for c in *commands {
                    args.extend(["-c", *c]);
                }
                let mut q = args.clone();
                q.push("q.img");
                ok(&s.qemu_io(&q));
                let mut b = vec!["io"];
                b.extend(args);
                b.push("b.img");
                ok(&s.blk(&b));
                assert_same_bitmaps(&s, "q.img", "b.img", &format!("after step {i}"));
            }
        }
    }
    assert_same_bitmaps(&s, "q.img", "b.img", "at the end");
    let names: Vec<String> = bitmap_support::info_bitmaps(&s, "b.img")
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(names, ["a", "b", "d", "e"]);
    assert_check_clean(&s, "b.img");
    ok(&s.qemu_img(&["compare", "q.img", "b.img"]));
}

/// `blk resize` of an image with persistent bitmaps against `qemu-img resize` on twins: grown, written in the
/// new area, shrunk; after each step the bitmaps `qemu-img info` lists and their dirty maps are equal and
/// `qemu-img check` is clean. An image whose bitmap is in use (its writer killed) is refused by both.
#[test]
fn resize_keeps_bitmaps_as_qemu_img() {
    if !have_qemu() {
        return;
    }
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q.img", "64M"]));
    ok(&s.qemu_img(&["bitmap", "--add", "-g", "64k", "q.img", "a"]));
    ok(&s.qemu_img(&["bitmap", "--add", "-g", "512k", "q.img", "b"]));
    ok(&s.qemu_img(&["bitmap", "--add", "--disable", "q.img", "c"]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 4k",
        "-c",
        "write -P 2 30M 100k",
        "-c",
        "write -P 3 63M 1M",
        "q.img",
    ]));
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    let steps: &[&[&str]] = &[
        &["resize", "-f", "qcow2", "IMG", "+16M"],
        &["io", "-f", "qcow2", "-c", "write -P 4 70M 64k", "IMG"],
        &["resize", "--shrink", "-f", "qcow2", "IMG", "40M"],
        &["resize", "-f", "qcow2", "IMG", "100M"],
        // Tables of more than one cluster (the 64k-granularity bitmap's 80 KiB).
        &["resize", "-f", "qcow2", "IMG", "40G"],
        &["io", "-f", "qcow2", "-c", "write -P 5 39G 64k", "IMG"],
    ];
    for (i, step) in steps.iter().enumerate() {
        let with = |image: &'static str| -> Vec<&str> {
            step.iter()
                .map(|a| if *a == "IMG" { image } else { *a })
                .collect()
        };
        if step[0] == "io" {
            ok(&s.qemu_io(&with("q.img")[1..]));
        } else {
            ok(&s.qemu_img(&with("q.img")));
        }
        ok(&s.blk(&with("b.img")));
        let context = format!("after {step:?}");
        assert_same_bitmaps(&s, "q.img", "b.img", &context);
        assert_check_clean(&s, "b.img");
        let size = |image: &str| -> u64 {
            let info = ok(&s.qemu_img(&["info", "--output=json", image]));
            let v: serde_json::Value = serde_json::from_str(&info).expect("info JSON");
            v["virtual-size"].as_u64().expect("virtual-size")
        };
        assert_eq!(size("b.img"), size("q.img"), "{context} (step {i})");
        ok(&s.qemu_img(&["compare", "q.img", "b.img"]));
    }
    // A writer killed after a write leaves the enabled bitmaps in use: both refuse to resize.
    for image in ["q.img", "b.img"] {
        let _ = s.qemu_io(&["-f", "qcow2", "-c", "write 0 4k", "-c", "sigraise 9", image]);
    }
    std::fs::copy(s.path("q.img"), s.path("in-use.img")).expect("copy");
    // Exit code 1, and blk's error line holds qemu-img's ("Bitmap 'a' is inconsistent and cannot be used").
    common::assert_same_failure(&s, &["resize", "-f", "qcow2", "in-use.img", "+1M"]);
    common::assert_same_failure(&s, &["resize", "-f", "qcow2", "b.img", "+1M"]);
}

/// `blk bitmap` with `--image-opts` and `--object` as qemu-img takes them: on twins, an image named by an
/// option string, and an encrypted image whose secret comes from `--object`; qemu-img's refusals of `-f`
/// beside `--image-opts` and of a read-only option string.
#[test]
fn image_opts_and_objects_as_qemu_img() {
    if !have_qemu() {
        return;
    }
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q.img", "16M"]));
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    for (tool, image) in [("qemu-img", "q.img"), ("blk", "b.img")] {
        let opts = format!("driver=qcow2,file.filename={image}");
        let args = ["bitmap", "--add", "-g", "128k", "--image-opts", &opts, "a"];
        ok(&if tool == "blk" {
            s.blk(&args)
        } else {
            s.qemu_img(&args)
        });
    }
    assert_same_bitmaps(&s, "q.img", "b.img", "--image-opts --add");
    common::assert_same_failure(
        &s,
        &[
            "bitmap",
            "--image-opts",
            "-f",
            "qcow2",
            "--add",
            "driver=qcow2,file.filename=b.img",
            "x",
        ],
    );
    common::assert_same_failure(
        &s,
        &[
            "bitmap",
            "--add",
            "--image-opts",
            "driver=qcow2,file.filename=b.img,read-only=on",
            "x",
        ],
    );

    let secret = "secret,id=s0,data=pw";
    s.create_luks_qcow2(secret, "s0", "", "qe.img", "16M");
    std::fs::copy(s.path("qe.img"), s.path("be.img")).expect("copy twin");
    for (tool, image) in [("qemu-img", "qe.img"), ("blk", "be.img")] {
        let opts = format!("driver=qcow2,file.filename={image},encrypt.key-secret=s0");
        for action in [&["--add", "e"][..], &["--disable", "e"], &["--add", "f"]] {
            let mut args = vec!["bitmap", "--object", secret, "--image-opts"];
            args.extend(&action[..1]);
            args.extend([opts.as_str(), action[1]]);
            ok(&if tool == "blk" {
                s.blk(&args)
            } else {
                s.qemu_img(&args)
            });
        }
    }
    assert_eq!(
        bitmap_support::info_bitmaps(&s, "be.img"),
        bitmap_support::info_bitmaps(&s, "qe.img")
    );
    ok(&s.qemu_img(&[
        "check",
        "--object",
        secret,
        "--image-opts",
        "driver=qcow2,file.filename=be.img,encrypt.key-secret=s0",
    ]));
}
