//! `blk measure` against `qemu-img measure`: the same arguments give byte-identical output (human and JSON)
//! for sizes and input images, raw and QCOW2 targets; errors give qemu-img's exit code and one `blk:` line.

mod common;

use common::{assert_one_line_error, code, ok, qemu_io_args, stderr, stdout, Scratch};

/// Runs `measure ARGS` with both tools, in human and JSON form; both must succeed with the same output.
fn same_as_qemu(s: &Scratch, args: &[&str]) {
    for output in ["--output=human", "--output=json"] {
        let mut full = vec!["measure", output];
        full.extend(args);
        let q = s.qemu_img(&full);
        let b = s.blk(&full);
        assert_eq!(code(&q), 0, "qemu-img {full:?}: {}", stderr(&q));
        assert_eq!(code(&b), 0, "blk {full:?}: {}", stderr(&b));
        assert_eq!(stdout(&b), stdout(&q), "output of {full:?}");
    }
}

/// Runs `measure ARGS` with both tools; both must fail with exit code 1, blk with one `blk:` line.
fn fails_as_qemu(s: &Scratch, args: &[&str], needle: &str) {
    let mut full = vec!["measure"];
    full.extend(args);
    let q = s.qemu_img(&full);
    assert_eq!(code(&q), 1, "qemu-img {full:?} should fail: {}", stdout(&q));
    let b = s.blk(&full);
    assert!(stdout(&b).is_empty(), "blk {full:?} printed {}", stdout(&b));
    let err = assert_one_line_error(&b, 1, "blk: ", needle);
    assert!(
        stderr(&q).contains(needle),
        "qemu-img {full:?} said {} (blk: {err})",
        stderr(&q)
    );
}

#[test]
fn sizes_match_qemu_img() {
    let s = Scratch::new();
    for args in [
        &["--size", "1G"][..],
        &["--size", "1000", "-O", "raw"],
        &["--size", "0", "-O", "qcow2"],
        &["--size", "1G", "-O", "qcow2"],
        &["--size", "1000", "-O", "qcow2"],
        &["--size", "1G", "-O", "qcow2", "-o", "cluster_size=512"],
        &["--size", "1G", "-O", "qcow2", "-o", "cluster_size=4k"],
        &["--size", "1G", "-O", "qcow2", "-o", "cluster_size=2M"],
        &["--size", "1G", "-O", "qcow2", "-o", "refcount_bits=1"],
        &[
            "--size",
            "1G",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=64,cluster_size=4k",
        ],
        &["--size", "1G", "-O", "qcow2", "-o", "extended_l2=on"],
        &[
            "--size",
            "100G",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=16k",
        ],
        &[
            "--size",
            "1G",
            "-O",
            "qcow2",
            "-o",
            "preallocation=metadata",
        ],
        &["--size", "1G", "-O", "qcow2", "-o", "preallocation=falloc"],
        &["--size", "1G", "-O", "qcow2", "-o", "preallocation=full"],
        &["--size", "1G", "-O", "qcow2", "-o", "compat=0.10"],
        // Accepted by measure although create refuses them.
        &[
            "--size",
            "1G",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10,lazy_refcounts=on",
        ],
        &[
            "--size",
            "1G",
            "-O",
            "qcow2",
            "-o",
            "backing_file=x,preallocation=full",
        ],
        &[
            "--size",
            "1G",
            "-O",
            "qcow2",
            "-o",
            "data_file=x,compression_type=zstd",
        ],
        &[
            "--size", "1G", "-O", "qcow2", "-o", "nocow=on", "-o", "size=5M",
        ],
        &["--size", "1G", "-O", "raw", "-o", "preallocation=full"],
        &["--size", "1k", "--size", "3G", "-O", "qcow2"],
    ] {
        same_as_qemu(&s, args);
    }
}

#[test]
fn input_images_match_qemu_img() {
    let s = Scratch::new();
    // Raw with holes (data, a 512-byte write, a hole-free tail).
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "holes.raw", "20M"]));
    let writes = ["write 1M 100k", "write 5M 512", "write 19M 1M"];
    ok(&s.qemu_io(&qemu_io_args("raw", "holes.raw", &writes)));
    // QCOW2 with data, zero and compressed clusters and a partial cluster.
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "10M"]));
    ok(&s.qemu_io(&[
        "-c",
        "write 0 100k",
        "-c",
        "write -z 1M 1M",
        "-c",
        "write -c 4M 64k",
        "-c",
        "write 8M 4k",
        "base.qcow2",
    ]));
    // An overlay with its own data over the base.
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]));
    ok(&s.qemu_io(&["-c", "write 6M 64k", "-c", "write -z 0 64k", "top.qcow2"]));
    // A version 2 image (no bitmaps figure) and one with persistent bitmaps.
    ok(&s.qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        "base.qcow2",
        "v2.qcow2",
    ]));
    std::fs::copy(s.path("base.qcow2"), s.path("bitmaps.qcow2")).unwrap();
    ok(&s.qemu_img(&["bitmap", "--add", "bitmaps.qcow2", "b0"]));
    ok(&s.qemu_img(&[
        "bitmap",
        "--add",
        "-g",
        "512",
        "bitmaps.qcow2",
        "a-longer-bitmap-name",
    ]));

    for input in [
        "holes.raw",
        "base.qcow2",
        "top.qcow2",
        "v2.qcow2",
        "bitmaps.qcow2",
    ] {
        for target in [
            &["-O", "raw"][..],
            &["-O", "qcow2"],
            &["-O", "qcow2", "-o", "cluster_size=512"],
            &["-O", "qcow2", "-o", "cluster_size=4k"],
            &["-O", "qcow2", "-o", "cluster_size=2M"],
            &["-O", "qcow2", "-o", "compat=0.10"],
        ] {
            let mut args = target.to_vec();
            args.push(input);
            same_as_qemu(&s, &args);
        }
    }
    for extra in [
        &["-o", "refcount_bits=1"][..],
        &["-o", "extended_l2=on"],
        &["-o", "preallocation=metadata"],
        &["-o", "preallocation=falloc"],
        &["-o", "preallocation=full"],
        &["-o", "backing_file=other.qcow2"],
        &["-f", "qcow2", "-U"],
    ] {
        let mut args = vec!["-O", "qcow2"];
        args.extend(extra);
        args.push("top.qcow2");
        same_as_qemu(&s, &args);
    }
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "in.raw", "1M"]));
    let cases: &[(&[&str], &str)] = &[
        (
            &["--size", "1G", "-O", "vpc"],
            "Block driver 'vpc' does not support size measurement",
        ),
        (
            &["--size", "1G", "-O", "vhdx"],
            "Block driver 'vhdx' does not support size measurement",
        ),
        (&[], "Either --size N or one filename must be specified."),
        (
            &["-O", "qcow2"],
            "Either --size N or one filename must be specified.",
        ),
        (
            &["--size", "1G", "in.raw"],
            "--size N cannot be used together with a filename.",
        ),
        (
            &["in.raw", "in.raw"],
            "At most one filename argument is allowed.",
        ),
        (
            &["--size", "1G", "-f", "raw"],
            "-f, and -l require a filename argument.",
        ),
        (&["--size", "1.5x"], "Invalid image size specified: '1.5x'."),
        (
            &["--size", "-1"],
            "Must be between 0 and 9223372036854775807.",
        ),
        (
            &["--size", "1G", "-O", "bogus"],
            "Unknown file format 'bogus'",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "help"],
            "Invalid parameter 'help'",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "bogus=1"],
            "Invalid parameter 'bogus'",
        ),
        (
            &["--size", "1G", "-O", "raw", "-o", "compat=1.1"],
            "Invalid parameter 'compat'",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "refcount_bits=x"],
            "expects a number",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "lazy_refcounts=maybe"],
            "expects 'on' or 'off'",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "cluster_size=3k"],
            "Cluster size must be a power of two",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "compat=9"],
            "Invalid compatibility level: '9'",
        ),
        (
            &[
                "--size",
                "1G",
                "-O",
                "qcow2",
                "-o",
                "compat=0.10,refcount_bits=1",
            ],
            "compatibility level 1.1",
        ),
        (
            &[
                "--size",
                "1G",
                "-O",
                "qcow2",
                "-o",
                "extended_l2=on,cluster_size=4k",
            ],
            "16384",
        ),
        (
            &["--size", "1G", "-O", "qcow2", "-o", "preallocation=bogus"],
            "invalid parameter value: bogus",
        ),
        (
            &["--size", "9223372036854775807", "-O", "qcow2"],
            "The image size is too large",
        ),
        (&["missing.raw"], "missing.raw"),
    ];
    for (args, needle) in cases {
        fails_as_qemu(&s, args, needle);
    }
}

#[test]
fn more_inputs_match_qemu_img() {
    let s = Scratch::new();
    // An unaligned raw file, a subcluster image, a metadata-preallocated image, VHDX and VHD inputs.
    s.write("odd.raw", &[0x5a; 70000]);
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "sub.qcow2",
        "4M",
    ]));
    ok(&s.qemu_io(&[
        "-c",
        "write 0 8k",
        "-c",
        "write 100k 4k",
        "-c",
        "write -z 1M 64k",
        "sub.qcow2",
    ]));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        "pre.qcow2",
        "4M",
    ]));
    ok(&s.qemu_io(&["-c", "write 0 8k", "pre.qcow2"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "vhdx", "disk.vhdx", "8M"]));
    ok(&s.qemu_io(&[
        "-f",
        "vhdx",
        "-c",
        "write 0 8k",
        "-c",
        "write 3M 1M",
        "disk.vhdx",
    ]));
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "disk.vhd", "8M"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write 1M 8k", "disk.vhd"]));
    for input in ["odd.raw", "sub.qcow2", "pre.qcow2", "disk.vhdx", "disk.vhd"] {
        for target in [
            &["-O", "raw"][..],
            &["-O", "qcow2"],
            &["-O", "qcow2", "-o", "cluster_size=512"],
            &["-O", "qcow2", "-o", "cluster_size=4k,extended_l2=off"],
            &["-O", "qcow2", "-o", "extended_l2=on"],
        ] {
            let mut args = target.to_vec();
            args.push(input);
            same_as_qemu(&s, &args);
        }
    }
}

/// `-l`: an internal snapshot of the input is measured, not its current disk.
#[test]
fn snapshots_of_the_input_match_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "8M"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 1M", "s.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "small", "s.qcow2"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 2 1M 5M", "s.qcow2"]));
    for selector in ["small", "1", "snapshot.name=small"] {
        same_as_qemu(&s, &["-l", selector, "-O", "qcow2", "s.qcow2"]);
        same_as_qemu(&s, &["-l", selector, "-O", "raw", "s.qcow2"]);
    }
    same_as_qemu(&s, &["-O", "qcow2", "s.qcow2"]);
}
