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
