//! What blk says around a command, as qemu-img says it: the warning for an image probed as raw and opened
//! writable, the `Formatting ...` line before a format refuses a value, second lines under some errors, the
//! repair of a dirty image reported on a writable open, exit codes of refused options, and the options
//! `commit -r`, `rebase -c`, `amend -t`. Each case runs qemu-img and blk on twin files and compares the exit
//! code, stdout and the number of stderr lines.

mod common;

use std::process::Output;

use common::{code, ok, stderr, stdout, Scratch};

/// Runs `args` with qemu-img in `theirs` and with blk in `ours` (twin directories) and compares exit code,
/// stdout (the directory names replaced) and the number of stderr lines; returns blk's stderr.
fn same(theirs: &Scratch, ours: &Scratch, args: &[&str]) -> String {
    let q = theirs.qemu_img(args);
    let b = ours.blk(args);
    let out = |o: &Output| stdout(o);
    assert_eq!(
        code(&b),
        code(&q),
        "{args:?}: exit code; blk: {}",
        stderr(&b)
    );
    assert_eq!(out(&b), out(&q), "{args:?}: stdout");
    assert_eq!(
        stderr(&b).lines().count(),
        stderr(&q).lines().count(),
        "{args:?}: stderr lines\nqemu-img: {}\nblk: {}",
        stderr(&q),
        stderr(&b)
    );
    stderr(&b)
}

/// Two scratch directories holding the same files, made by `setup`.
fn twins(setup: impl Fn(&Scratch)) -> (Scratch, Scratch) {
    let (a, b) = (Scratch::new(), Scratch::new());
    setup(&a);
    setup(&b);
    (a, b)
}

fn raw_image(s: &Scratch) {
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "a.raw", "1M"]));
}

#[test]
fn probed_raw_opened_writable_is_warned_about() {
    let (q, b) = twins(raw_image);
    for args in [
        &["resize", "a.raw", "2M"][..],
        &["commit", "a.raw"],
        &["amend", "-o", "lazy_refcounts=on", "a.raw"],
        &["snapshot", "-c", "s1", "a.raw"],
    ] {
        let err = same(&q, &b, args);
        assert!(
            err.starts_with("WARNING: Image format was not specified for 'a.raw'"),
            "{args:?}: {err}"
        );
    }
    // Read-only opens, an explicit format, and a mode refused before the open: no warning.
    for args in [
        &["resize", "-f", "raw", "a.raw", "3M"][..],
        &["snapshot", "-l", "a.raw"],
        &["resize", "--preallocation=bogus", "a.raw", "4M"],
    ] {
        assert!(!same(&q, &b, args).contains("WARNING"), "{args:?}");
    }
}

#[test]
fn formatting_line_comes_before_a_refused_value() {
    let (q, b) = twins(|_| {});
    for args in [
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3k",
            "x.qcow2",
            "64M",
        ][..],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=3",
            "x.qcow2",
            "64M",
        ],
        &["create", "-f", "qcow2", "nodir/x.qcow2", "64M"],
        &["create", "-f", "qcow2", "x.qcow2", "1E"],
        // Refused by the option parser: no line.
        &["create", "-f", "qcow2", "-o", "bogus=1", "x.qcow2", "64M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=abc",
            "x.qcow2",
            "64M",
        ],
    ] {
        same(&q, &b, args);
    }
}

#[test]
fn backing_file_errors_have_qemu_img_second_line() {
    let (q, b) = twins(|s| {
        ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]));
    });
    let err = same(
        &q,
        &b,
        &["create", "-f", "qcow2", "-b", "base.qcow2", "o.qcow2"],
    );
    assert!(err.ends_with("Detected format of qcow2.\n"), "{err}");
    let missing = [
        "create", "-f", "qcow2", "-b", "no.qcow2", "-F", "qcow2", "o.qcow2",
    ];
    let err = same(&q, &b, &missing);
    assert!(err.ends_with("Could not open backing image.\n"), "{err}");
    // The backing file given with -o, the size taken from it.
    same(
        &q,
        &b,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=base.qcow2,backing_fmt=qcow2",
            "p.qcow2",
        ],
    );
}

#[test]
fn refusals_said_as_qemu_img_says_them() {
    let (q, b) = twins(|s| {
        ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]));
        raw_image(s);
    });
    same(&q, &b, &["resize", "a.qcow2", "32M"]);
    same(&q, &b, &["amend", "-o", "cluster_size=4k", "a.qcow2"]);
    same(&q, &b, &["compare", "-T", "bogus", "a.qcow2", "a.raw"]);
    same(&q, &b, &["check", "-r", "all", "-U", "a.qcow2"]);
    same(&q, &b, &["bench", "-c", "1", "-w", "-U", "a.raw"]);
    same(
        &q,
        &b,
        &["amend", "-o", "lazy_refcounts=on", "-t", "bogus", "a.qcow2"],
    );
}

#[test]
fn dirty_image_repair_is_reported_on_a_writable_open() {
    let (q, b) = twins(|s| {
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "d.qcow2",
            "16M",
        ]));
        // qemu-io aborts after the write, leaving the image dirty.
        let _ = s.qemu_io(&["-c", "write -P 0x42 0 64k", "-c", "abort", "d.qcow2"]);
    });
    let err = same(&q, &b, &["amend", "-o", "lazy_refcounts=off", "d.qcow2"]);
    assert!(err.contains("Rebuilding refcount structure"), "{err}");
    ok(&b.qemu_img(&["check", "d.qcow2"]));
}

#[test]
fn commit_rate_rebase_compressed_and_amend_cache() {
    let (q, b) = twins(|s| {
        ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]));
        ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "other.qcow2", "4M"]));
        ok(&s.qemu_io(&["-c", "write -P 0x11 0 1M", "base.qcow2"]));
        for top in ["top.qcow2", "top2.qcow2"] {
            ok(&s.qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                top,
            ]));
            ok(&s.qemu_io(&["-c", "write -P 0x22 1M 64k", top]));
        }
    });
    same(&q, &b, &["commit", "-r", "100M", "top.qcow2"]);
    same(&q, &b, &["commit", "-r", "1X", "top2.qcow2"]);
    same(
        &q,
        &b,
        &[
            "rebase",
            "-c",
            "-b",
            "other.qcow2",
            "-F",
            "qcow2",
            "top2.qcow2",
        ],
    );
    same(
        &q,
        &b,
        &[
            "amend",
            "-o",
            "lazy_refcounts=on",
            "-t",
            "none",
            "other.qcow2",
        ],
    );
    for name in ["base.qcow2", "top2.qcow2", "other.qcow2"] {
        let cmp = b.qemu_img(&[
            "compare",
            &q.path(name).to_string_lossy(),
            &b.path(name).to_string_lossy(),
        ]);
        assert_eq!(code(&cmp), 0, "{name}: {}", stdout(&cmp));
        ok(&b.qemu_img(&["check", name]));
    }
    // The rebased image stores the clusters it copied compressed, as qemu-img's does.
    let compressed = |s: &Scratch| {
        let report = ok(&s.qemu_img(&["check", "--output=json", "top2.qcow2"]));
        report
            .lines()
            .find(|l| l.contains("compressed-clusters"))
            .map(str::to_string)
    };
    let ours = compressed(&b);
    assert!(ours.is_some(), "compressed clusters in the rebased image");
    assert_eq!(ours, compressed(&q));
}

/// `convert --salvage` copies past a cluster that cannot be read (a compressed cluster with broken data):
/// one warning per 512-byte sector, zeros in the target, exit code 0; without it the copy fails.
#[test]
fn convert_salvage_reads_past_errors() {
    let (q, b) = twins(|s| {
        ok(&s.qemu_img(&["create", "-q", "-f", "raw", "d.raw", "1M"]));
        ok(&s.qemu_io(&["-f", "raw", "-c", "write -P 0x61 0 1M", "d.raw"]));
        ok(&s.qemu_img(&["convert", "-c", "-O", "qcow2", "d.raw", "c.qcow2"]));
        // Break the compressed data of the first cluster.
        let mut image = s.read("c.qcow2");
        let be64 = |at: usize| u64::from_be_bytes(image[at..at + 8].try_into().unwrap());
        let l1 = be64(40) as usize;
        let l2 = (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize;
        // 64 KiB clusters: the host offset is the low 62 - 8 bits of a compressed entry.
        let data = (be64(l2) & ((1 << 54) - 1)) as usize;
        for byte in &mut image[data..data + 64] {
            *byte ^= 0xff;
        }
        s.write("c.qcow2", &image);
    });
    same(
        &q,
        &b,
        &["convert", "-O", "qcow2", "c.qcow2", "plain.qcow2"],
    );
    let err = same(
        &q,
        &b,
        &["convert", "--salvage", "-O", "qcow2", "c.qcow2", "s.qcow2"],
    );
    assert!(err.contains("error while reading offset 512"), "{err}");
    let cmp = b.qemu_img(&[
        "compare",
        &q.path("s.qcow2").to_string_lossy(),
        &b.path("s.qcow2").to_string_lossy(),
    ]);
    assert_eq!(code(&cmp), 0, "{}", stdout(&cmp));
    same(&q, &b, &["convert", "-C", "--salvage", "c.qcow2", "x.raw"]);
}

/// `blk io` against qemu-io: the warning for a probed raw image only when it is writable, and the repair of
/// a dirty image reported on a writable open (exit code and stderr lines compared).
#[test]
fn io_open_messages() {
    let dirty = |s: &Scratch| {
        raw_image(s);
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "d.qcow2",
            "16M",
        ]));
        let _ = s.qemu_io(&["-c", "write -P 0x42 0 64k", "-c", "abort", "d.qcow2"]);
    };
    let (q, b) = twins(dirty);
    for args in [
        &["-r", "-c", "read 0 512", "a.raw"][..],
        &["-c", "read 0 512", "a.raw"],
        &["-c", "read -P 0x42 0 64k", "d.qcow2"],
    ] {
        let theirs = q.qemu_io(args);
        let mut full = vec!["io"];
        full.extend_from_slice(args);
        let ours = b.blk(&full);
        assert_eq!(code(&ours), code(&theirs), "{args:?}: {}", stderr(&ours));
        assert_eq!(
            stderr(&ours).lines().count(),
            stderr(&theirs).lines().count(),
            "{args:?}\nqemu-io: {}\nblk: {}",
            stderr(&theirs),
            stderr(&ours)
        );
    }
}
