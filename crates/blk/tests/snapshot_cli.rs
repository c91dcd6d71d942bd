//! `blk snapshot` lists, creates, applies and deletes snapshots as `qemu-img snapshot` does; `blk convert -l`
//! reads a snapshot as `qemu-img convert -l` does.

mod common;

use common::{assert_same_failure, code, ok, qemu_io_args, stderr, stdout, Scratch};

#[cfg(feature = "qcow2")]
#[test]
fn list_matches_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "1M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "none.qcow2", "1M"]));
    ok(&s.qemu_img(&["snapshot", "-c", "one", "s.qcow2"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write 0 64k", "s.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "two", "s.qcow2"]));
    for args in [
        &["-l", "s.qcow2"][..],
        &["s.qcow2"][..],
        &["-l", "-q", "-U", "-f", "qcow2", "s.qcow2"][..],
        &["-l", "none.qcow2"][..],
    ] {
        let mut full = vec!["snapshot"];
        full.extend_from_slice(args);
        let theirs = ok(&s.qemu_img(&full));
        let ours = ok(&s.blk(&full));
        assert_eq!(ours, theirs, "snapshot {args:?}");
    }
    assert!(ok(&s.blk(&["snapshot", "-l", "s.qcow2"])).contains("two"));
}

/// `-c`, `-a` and `-d` on twins, one driven by qemu-img and one by blk, step by step (writes by qemu-io on
/// both): after each step both are clean and show the same current disk, and every snapshot reads the same.
#[cfg(feature = "qcow2")]
#[test]
fn create_apply_delete_match_qemu_img() {
    for options in [
        "compat=1.1",
        "compat=0.10,cluster_size=4k",
        "compat=1.1,extended_l2=on",
    ] {
        let s = Scratch::new();
        ok(&s.qemu_img(&[
            "create", "-q", "-f", "qcow2", "-o", options, "q.qcow2", "2M",
        ]));
        std::fs::copy(s.path("q.qcow2"), s.path("b.qcow2")).unwrap();
        let steps: &[&[&str]] = &[
            &["io", "write -P 0x11 0 256k"],
            &["snapshot", "-c", "one"],
            &["io", "write -P 0x22 64k 64k"],
            &["io", "write -z 128k 64k"],
            &["snapshot", "-c", "two"],
            &["io", "write -c -P 0x33 1M 64k"],
            &["snapshot", "-a", "one"],
            &["io", "write -P 0x44 192k 4k"],
            &["snapshot", "-d", "two"],
            &["snapshot", "-c", "three"],
            &["snapshot", "-a", "1"],
        ];
        for step in steps {
            for (image, blk) in [("q.qcow2", false), ("b.qcow2", true)] {
                if step[0] == "io" {
                    ok(&s.qemu_io(&["-f", "qcow2", "-c", step[1], image]));
                    continue;
                }
                let mut args = step.to_vec();
                args.push(image);
                let out = if blk { s.blk(&args) } else { s.qemu_img(&args) };
                assert_eq!(code(&out), 0, "{options} {args:?}: {}", stderr(&out));
            }
            for image in ["q.qcow2", "b.qcow2"] {
                let check = s.qemu_img(&["check", image]);
                assert_eq!(
                    code(&check),
                    0,
                    "{options} after {step:?}: {image}: {}",
                    stdout(&check)
                );
            }
            let compare = s.qemu_img(&["compare", "q.qcow2", "b.qcow2"]);
            assert_eq!(code(&compare), 0, "{options} after {step:?}");
        }
        let names = |image: &str| {
            ok(&s.qemu_img(&["snapshot", "-l", image]))
                .lines()
                .skip(2)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("q.qcow2"), names("b.qcow2"), "{options}");
        for id in ["one", "three"] {
            ok(&s.qemu_img(&["convert", "-l", id, "-O", "raw", "q.qcow2", "q.raw"]));
            ok(&s.qemu_img(&["convert", "-l", id, "-O", "raw", "b.qcow2", "b.raw"]));
            assert!(
                s.read("q.raw") == s.read("b.raw"),
                "{options}: snapshot {id}"
            );
        }
    }
}

#[test]
fn changes_match_qemu_img_errors() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    for args in [
        &["snapshot", "-c", "x", "-f", "raw", "r.raw"][..],
        &["snapshot", "-c", "x", "-d", "y", "-f", "raw", "r.raw"][..],
    ] {
        assert_same_failure(&s, args);
    }
}

#[test]
fn raw_has_no_snapshots() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    let theirs = ok(&s.qemu_img(&["snapshot", "-l", "-f", "raw", "r.raw"]));
    let ours = ok(&s.blk(&["snapshot", "-l", "-f", "raw", "r.raw"]));
    assert_eq!(ours, theirs);
    assert_eq!(ours, "");
}

/// An image with three snapshots taken between writes (data, zeroes, discards, compressed clusters) and a
/// resize, so the snapshots differ from each other and from the current disk, and in size (v3 records it).
#[cfg(feature = "qcow2")]
fn image_with_history(s: &Scratch, options: &str) {
    ok(&s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-o", options, "h.qcow2", "2M",
    ]));
    let io = |cmds: &[&str]| {
        ok(&s.qemu_io(&qemu_io_args("qcow2", "h.qcow2", cmds)));
    };
    io(&["write -P 0x11 0 256k", "write -c -P 0x12 1M 64k"]);
    ok(&s.qemu_img(&["snapshot", "-c", "first", "h.qcow2"]));
    io(&[
        "write -P 0x21 128k 4k",
        "write -z 1M 64k",
        "discard 192k 64k",
    ]);
    ok(&s.qemu_img(&["snapshot", "-c", "second", "h.qcow2"]));
    if !options.contains("0.10") {
        // v2 images with snapshots cannot be resized.
        ok(&s.qemu_img(&["resize", "-q", "h.qcow2", "3M"]));
    }
    io(&["write -P 0x31 1920k 64k"]);
    ok(&s.qemu_img(&["snapshot", "-c", "third", "h.qcow2"]));
    io(&["write -P 0x41 0 1M"]);
}

#[cfg(feature = "qcow2")]
#[test]
fn convert_reads_snapshots_like_qemu_img() {
    for options in [
        "compat=1.1",
        "compat=0.10,cluster_size=4k",
        "compat=1.1,extended_l2=on",
    ] {
        let s = Scratch::new();
        image_with_history(&s, options);
        for selector in [
            "first",
            "2",
            "snapshot.name=third",
            "snapshot.id=1",
            "snapshot.id=2,snapshot.name=second",
        ] {
            ok(&s.qemu_img(&["convert", "-l", selector, "-O", "raw", "h.qcow2", "q.raw"]));
            ok(&s.blk(&["convert", "-l", selector, "-O", "raw", "h.qcow2", "b.raw"]));
            assert!(
                s.read("q.raw") == s.read("b.raw"),
                "{options}: snapshot {selector} reads differently"
            );
            ok(&s.blk(&[
                "convert", "-l", selector, "-O", "qcow2", "h.qcow2", "b.qcow2",
            ]));
            assert_eq!(code(&s.qemu_img(&["check", "b.qcow2"])), 0);
            assert_eq!(
                code(&s.qemu_img(&["compare", "q.raw", "b.qcow2"])),
                0,
                "{options} {selector}"
            );
        }
        let missing = s.blk(&[
            "convert",
            "-l",
            "snapshot.id=1,snapshot.name=third",
            "-O",
            "raw",
            "h.qcow2",
            "x.raw",
        ]);
        assert_eq!(code(&missing), 1);
        assert!(
            stderr(&missing).contains("Can't find snapshot"),
            "{}",
            stderr(&missing)
        );
    }
}

#[test]
fn convert_snapshot_errors_match_qemu_img() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    for args in [
        &[
            "convert", "-l", "one", "-f", "raw", "-O", "raw", "r.raw", "o.raw",
        ][..],
        &[
            "convert", "-l", "one", "-f", "raw", "-O", "raw", "r.raw", "r.raw", "o.raw",
        ][..],
    ] {
        assert_same_failure(&s, args);
    }
}
