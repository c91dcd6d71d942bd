//! `blk snapshot -l` prints what `qemu-img snapshot -l` prints; changing snapshots is refused; `blk convert -l`
//! reads a snapshot as `qemu-img convert -l` does.

mod common;

use common::{code, ok, stderr, stdout, Scratch};

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
    let refused = s.blk(&["snapshot", "-c", "three", "s.qcow2"]);
    assert_eq!(code(&refused), 1);
    assert!(
        stderr(&refused).contains("does not create"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stdout(&refused), "");
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
        let mut args = vec!["-f", "qcow2"];
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push("h.qcow2");
        ok(&s.qemu_io(&args));
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
        let theirs = s.qemu_img(args);
        let ours = s.blk(args);
        assert_eq!(code(&theirs), 1, "qemu-img {args:?}");
        assert_eq!(code(&ours), 1, "blk {args:?}");
        let message = stderr(&theirs);
        let message = message.trim_start_matches("qemu-img: ").trim_end();
        assert!(
            stderr(&ours).contains(message),
            "{args:?}: blk says {} where qemu-img says {message}",
            stderr(&ours)
        );
    }
}
