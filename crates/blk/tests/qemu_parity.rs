//! `blk` against qemu-img and qemu-io on the same QEMU-written images: same bytes, same output text, same exit
//! codes.

mod common;

use common::{
    allocated, assert_both_fail_with, code, ok, qemu_io_args, reference_script, stderr, stdout,
    Scratch,
};

/// Test 1: `blk convert -O raw` reads the QEMU-written image back byte-identical to `qemu-img convert -O raw`,
/// with the default `-S`, `-S 0` and `-S 64k`; `-S 0` fully allocates, the default keeps the copy sparse.
#[test]
fn convert_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    ok(&s.qemu_img(&["convert", "-f", "raw", "-O", "raw", "ref.raw", "qemu.raw"]));
    let expected = s.read("qemu.raw");
    assert_eq!(expected, s.read("ref.raw"));
    for sparse in [None, Some("0"), Some("64k")] {
        let mut args = vec!["convert", "-f", "raw", "-O", "raw"];
        if let Some(size) = sparse {
            args.extend(["-S", size]);
        }
        args.extend(["ref.raw", "blk.raw"]);
        let out = s.blk(&args);
        assert_eq!(stdout(&out), "", "convert prints nothing");
        ok(&out);
        assert!(
            s.read("blk.raw") == expected,
            "content differs with -S {sparse:?}"
        );
        let size = allocated(&s.path("blk.raw"));
        if sparse == Some("0") {
            assert!(size >= 16 << 20, "-S 0 allocates everything ({size})");
        } else {
            assert!(size < 2 << 20, "sparse copy allocates {size} bytes");
        }
    }
    // Several sources are concatenated, as qemu-img does; -p without a terminal prints qemu-img's progress
    // lines on stdout, from 0 to 100%.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "small.raw", "1M"]));
    ok(&s.qemu_img(&["convert", "-O", "raw", "ref.raw", "small.raw", "qcat.raw"]));
    let out = s.blk(&[
        "convert",
        "-p",
        "-O",
        "raw",
        "ref.raw",
        "small.raw",
        "cat.raw",
    ]);
    let progress = ok(&out);
    assert!(
        progress.starts_with("    (0.00/100%)\r") && progress.ends_with("    (100.00/100%)\r\n"),
        "{progress:?}"
    );
    assert!(s.read("cat.raw") == s.read("qcat.raw"));
    // -n writes into an existing, larger target, zeroing what the source has as holes.
    s.write("existing.raw", &vec![0xffu8; 17 << 20]);
    ok(&s.blk(&["convert", "-n", "-O", "raw", "ref.raw", "existing.raw"]));
    let existing = s.read("existing.raw");
    assert!(existing[..16 << 20] == expected[..]);
    assert!(existing[16 << 20..].iter().all(|&b| b == 0xff));
    // -c on a format without compression fails as qemu-img does.
    let out = s.blk(&["convert", "-c", "-O", "raw", "ref.raw", "c.raw"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("Compression not supported for this file format"));
}

/// Test 2: `blk compare` and `qemu-img compare` agree on exit codes and messages.
#[test]
fn compare_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("a.raw");
    let a = s.read("a.raw");
    s.write("same.raw", &a);
    let mut flipped = a.clone();
    flipped[5_000_000] ^= 0x01;
    s.write("byte.raw", &flipped);
    let mut padded = a.clone();
    padded.resize(20 << 20, 0);
    s.write("padded.raw", &padded);
    padded[18_000_000] = 1;
    s.write("tail.raw", &padded);

    let cases: &[(&[&str], i32)] = &[
        (&["a.raw", "same.raw"], 0),
        (&["a.raw", "byte.raw"], 1),
        (&["-s", "a.raw", "byte.raw"], 1),
        (&["-s", "a.raw", "same.raw"], 1),
        (&["-s", "a.raw", "a.raw"], 0),
        (&["-q", "a.raw", "byte.raw"], 1),
        (&["a.raw", "padded.raw"], 0),
        (&["padded.raw", "a.raw"], 0),
        (&["-s", "a.raw", "padded.raw"], 1),
        (&["a.raw", "tail.raw"], 1),
        (&["tail.raw", "a.raw"], 1),
        (&["a.raw", "missing.raw"], 2),
        (&["missing.raw", "a.raw"], 2),
    ];
    for (args, expected) in cases {
        let mut full = vec!["compare", "-f", "raw", "-F", "raw"];
        full.extend_from_slice(args);
        let ours = s.blk(&full);
        let theirs = s.qemu_img(&full);
        assert_eq!(code(&theirs), *expected, "qemu-img compare {args:?}");
        assert_eq!(
            code(&ours),
            *expected,
            "blk compare {args:?}: {}",
            stderr(&ours)
        );
        assert_eq!(stdout(&ours), stdout(&theirs), "output of compare {args:?}");
        if *expected == 2 {
            common::assert_one_line_error(&ours, 2, "blk: ", "missing.raw");
        }
    }
}

/// Test 3: `blk info` prints exactly qemu-img's JSON (key order and indentation included) and human text.
#[test]
fn info_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    s.write("empty.raw", b"");
    for (format, file) in [
        (None, "ref.raw"),
        (Some("raw"), "ref.raw"),
        (Some("raw"), "empty.raw"),
    ] {
        for output in ["--output=json", "--output=human"] {
            let mut args = vec!["info", output];
            if let Some(f) = format {
                args.extend(["-f", f]);
            }
            args.push(file);
            let ours = ok(&s.blk(&args));
            let theirs = ok(&s.qemu_img(&args));
            assert_eq!(ours, theirs, "blk {args:?}");
            if output == "--output=json" {
                let a: serde_json::Value = serde_json::from_str(&ours).expect("blk JSON");
                let b: serde_json::Value = serde_json::from_str(&theirs).expect("qemu JSON");
                assert_eq!(a, b);
            }
        }
    }
    // -U and --backing-chain on an image without backing file print the same single image.
    let plain = ok(&s.blk(&["info", "--output=json", "ref.raw"]));
    let chain = ok(&s.blk(&["info", "-U", "--backing-chain", "--output=json", "ref.raw"]));
    let chain: serde_json::Value = serde_json::from_str(&chain).expect("chain JSON");
    let plain: serde_json::Value = serde_json::from_str(&plain).expect("JSON");
    assert_eq!(chain, serde_json::Value::Array(vec![plain]));
    // `-b` is qemu-img's short form of --backing-chain.
    let short = ok(&s.blk(&["info", "-b", "--output=json", "ref.raw"]));
    let short: serde_json::Value = serde_json::from_str(&short).expect("-b JSON");
    assert_eq!(short, chain);
}

/// Test 4: `blk map` prints exactly qemu-img's map, JSON and human, also for sub-ranges.
#[test]
fn map_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    s.write("empty.raw", b"");
    let ranges: &[&[&str]] = &[
        &[],
        &["--start-offset", "1M", "--max-length", "3M"],
        &["--start-offset=1000", "--max-length=1000"],
        &["--start-offset", "20M"],
    ];
    for range in ranges {
        for output in ["--output=json", "--output=human"] {
            let mut args = vec!["map", "-f", "raw", output];
            args.extend_from_slice(range);
            args.push("ref.raw");
            assert_eq!(ok(&s.blk(&args)), ok(&s.qemu_img(&args)), "blk {args:?}");
        }
    }
    let args = ["map", "-f", "raw", "--output=json", "empty.raw"];
    assert_eq!(ok(&s.blk(&args)), ok(&s.qemu_img(&args)));
}

/// Drops qemu-io's timing line (`..., 1 ops; 00.00 sec (...)`), which differs run to run.
fn without_timings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !(l.contains(" ops; ") && l.ends_with(" ops/sec)")))
        .map(str::to_string)
        .collect()
}

/// Test 5: `blk io` replays the qemu-io script byte-identically, with qemu-io's output lines and exit codes.
#[test]
fn io_matches_qemu_io() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "q.raw", "16M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "b.raw", "16M"]));
    let script = reference_script();
    let theirs = ok(&s.qemu_io(&qemu_io_args("raw", "q.raw", &script)));
    let mut ours_args = vec!["io"];
    ours_args.extend(qemu_io_args("raw", "b.raw", &script));
    let ours = ok(&s.blk(&ours_args));
    assert!(s.read("b.raw") == s.read("q.raw"), "images differ");
    assert_eq!(without_timings(&ours), without_timings(&theirs));
    assert_eq!(
        ours.lines().count(),
        2 * script.len(),
        "a stats line per command"
    );

    let cases: &[&str] = &[
        "read -P 0xa7 0 128k",
        "read -P 0xa8 0 128k",
        "read -v 2M 20",
        "read -q -P 0x5c 2M 512",
        "write -P 0x1 -z 0 1",
        "read 0 1x",
        "read 0",
        "bogus 0 1",
        "flush",
    ];
    for c in cases {
        let theirs = s.qemu_io(&["-f", "raw", "-c", c, "q.raw"]);
        let ours = s.blk(&["io", "-f", "raw", "-c", c, "b.raw"]);
        assert_eq!(code(&ours), code(&theirs), "exit code of {c:?}");
        assert_eq!(
            without_timings(&stdout(&ours)),
            without_timings(&stdout(&theirs)),
            "stdout of {c:?}"
        );
        assert!(!stderr(&ours).contains("panicked"));
    }
    // A failed command does not stop the next ones; the exit code still says failure.
    let ours = s.blk(&[
        "io",
        "-f",
        "raw",
        "-c",
        "read -P 0 0 512",
        "-c",
        "read 0 512",
        "b.raw",
    ]);
    let theirs = s.qemu_io(&[
        "-f",
        "raw",
        "-c",
        "read -P 0 0 512",
        "-c",
        "read 0 512",
        "q.raw",
    ]);
    assert_eq!(code(&ours), code(&theirs));
    assert_eq!(code(&ours), 1);
    assert_eq!(
        without_timings(&stdout(&ours)),
        without_timings(&stdout(&theirs))
    );
    // Read-only opens refuse writes.
    let ours = s.blk(&["io", "-r", "-f", "raw", "-c", "write 0 512", "b.raw"]);
    let theirs = s.qemu_io(&["-r", "-f", "raw", "-c", "write 0 512", "q.raw"]);
    assert_eq!(code(&ours), code(&theirs));
    assert!(s.read("b.raw") == s.read("q.raw"));
}

/// Test 6: `blk check` on raw: qemu-img's message and exit code 63.
#[test]
fn check_on_raw_is_unsupported_like_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    for output in ["--output=human", "--output=json"] {
        let theirs = s.qemu_img(&["check", output, "ref.raw"]);
        let ours = s.blk(&["check", output, "ref.raw"]);
        assert_eq!(code(&theirs), 63);
        assert_eq!(code(&ours), 63);
        assert_eq!(
            stderr(&ours),
            "blk: This image format does not support checks\n"
        );
        assert_eq!(stdout(&ours), "");
    }
}

/// `convert -c` into a format without compression fails as qemu-img does, before creating the target.
#[test]
fn convert_compressed_to_a_format_without_compression() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    for format in ["raw", "vpc", "vhdx"] {
        let target = format!("out.{format}");
        let theirs = s.qemu_img(&["convert", "-c", "-O", format, "ref.raw", &target]);
        assert_eq!(code(&theirs), 1, "qemu-img convert -c -O {format}");
        assert!(!s.path(&target).exists(), "qemu-img left {target}");
        let ours = s.blk(&["convert", "-c", "-O", format, "ref.raw", &target]);
        assert_eq!(code(&ours), 1, "blk convert -c -O {format}");
        assert!(
            stderr(&ours).contains("Compression not supported for this file format"),
            "{}",
            stderr(&ours)
        );
        assert!(!s.path(&target).exists(), "blk left {target}");
    }
}

/// qemu-img convert's tuning flags: `-m` (validated), `-W`, `-C` and `--target-is-zero` are taken with
/// qemu-img's checks, and the copies stay equal.
#[test]
fn convert_tuning_flags_match_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    for args in [&["-m", "16", "-W"][..], &["-m", "1"][..], &["-C"][..]] {
        let mut full = vec!["convert", "-f", "raw", "-O", "raw"];
        full.extend_from_slice(args);
        ok(&s.qemu_img(&[&full[..], &["ref.raw", "q.raw"][..]].concat()));
        ok(&s.blk(&[&full[..], &["ref.raw", "b.raw"][..]].concat()));
        assert!(s.read("q.raw") == s.read("b.raw"), "convert {args:?}");
    }
    // --target-is-zero with -n onto a fresh (zero) target.
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "t.qcow2", "16M"]));
    ok(&s.blk(&[
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "ref.raw",
        "t.qcow2",
    ]));
    assert_eq!(code(&s.qemu_img(&["compare", "ref.raw", "t.qcow2"])), 0);
    for (args, message) in [
        (
            &["-m", "17"][..],
            "Invalid number of coroutines specified. Must be between 1 and 16.",
        ),
        (
            &["-m", "x"][..],
            "Invalid number of coroutines specified: 'x'.",
        ),
        (
            &["--target-is-zero"][..],
            "--target-is-zero requires use of -n flag",
        ),
        (
            &["-C", "-S", "0"][..],
            "Cannot enable copy offloading when -S is used",
        ),
    ] {
        let mut full = vec!["convert", "-f", "raw", "-O", "raw"];
        full.extend_from_slice(args);
        full.extend(["ref.raw", "x.raw"]);
        assert_both_fail_with(&s, &full, message);
    }
}

/// Test 8: `blk create`: qemu-img's `Formatting` line, a size qemu-img reads back, preallocation, bad options.
#[test]
fn create_matches_qemu_img() {
    let s = Scratch::new();
    for (args, name) in [
        (vec!["create", "-f", "raw", "x.raw", "1G"], "x.raw"),
        (vec!["create", "x.raw", "1.5G"], "x.raw"),
        (
            vec![
                "create",
                "-f",
                "raw",
                "-o",
                "preallocation=full",
                "p.raw",
                "1M",
            ],
            "p.raw",
        ),
    ] {
        let ours = ok(&s.blk(&args));
        let theirs = ok(&s.qemu_img(&args));
        assert_eq!(ours, theirs, "{args:?}");
        let size = args.last().expect("size");
        let info = ok(&s.qemu_img(&["info", "--output=json", name]));
        let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
        let expected = if *size == "1G" {
            1 << 30
        } else if *size == "1.5G" {
            3 << 29
        } else {
            1 << 20
        };
        assert_eq!(info["virtual-size"], expected);
        assert_eq!(info["format"], "raw");
    }
    assert!(
        allocated(&s.path("p.raw")) >= 1 << 20,
        "preallocation=full allocates"
    );
    assert!(
        allocated(&s.path("x.raw")) < 1 << 20,
        "the default is sparse"
    );
    assert_eq!(
        ok(&s.blk(&["create", "-q", "-f", "raw", "q.raw", "4k"])),
        ""
    );

    let out = s.blk(&["create", "-f", "raw", "-o", "foo=bar", "bad.raw", "1M"]);
    common::assert_one_line_error(&out, 1, "blk: ", "bad.raw");
    let out = s.blk(&["create", "-f", "raw", "nosize.raw"]);
    common::assert_one_line_error(&out, 1, "blk: ", "nosize.raw");
    let out = s.blk(&["create", "-f", "raw", "size.raw", "12x"]);
    common::assert_one_line_error(&out, 1, "blk: ", "12x");

    // `-o help` (or `?`, anywhere in the list) lists the options and creates nothing.
    for args in [
        vec!["create", "-f", "raw", "-o", "help", "h.raw", "1M"],
        vec!["create", "-f", "raw", "-o", "preallocation=full,?", "h.raw"],
        vec!["convert", "-O", "raw", "-o", "help", "x.raw", "h.raw"],
    ] {
        let ours = ok(&s.blk(&args));
        assert!(ours.starts_with("Supported options:\n"), "{args:?}: {ours}");
        assert_eq!(ours, ok(&s.qemu_img(&args)), "{args:?}");
        assert!(!s.path("h.raw").exists(), "{args:?}");
    }
}

/// Test 9: `blk dd` makes the same output as `qemu-img dd` (qemu-img's count-before-skip semantics included).
#[test]
fn dd_matches_qemu_img() {
    let s = Scratch::new();
    s.reference_image("ref.raw");
    let cases: &[&[&str]] = &[
        &["bs=64k", "count=10", "skip=2"],
        &["bs=1M", "count=3"],
        &["bs=4k", "skip=1000"],
        &["bs=512", "count=100", "skip=7"],
        &["bs=1000", "count=3", "skip=1"],
        &[],
    ];
    for ops in cases {
        let run = |tool: &str, out: &str| {
            let mut args = vec!["dd", "-f", "raw", "-O", "raw"];
            args.extend_from_slice(ops);
            let of = format!("of={out}");
            args.extend(["if=ref.raw", of.as_str()]);
            if tool == "blk" {
                ok(&s.blk(&args))
            } else {
                ok(&s.qemu_img(&args))
            }
        };
        assert_eq!(run("blk", "b.out"), run("qemu", "q.out"), "{ops:?}");
        assert!(s.read("b.out") == s.read("q.out"), "dd {ops:?}");
    }
    // A skip past the end: qemu-img says so in one line, makes the (empty) output and exits 0; so does blk.
    let ours = s.blk(&["dd", "bs=1M", "skip=20", "if=ref.raw", "of=x.out"]);
    let theirs = s.qemu_img(&["dd", "bs=1M", "skip=20", "if=ref.raw", "of=y.out"]);
    assert_eq!(ours.status.code(), theirs.status.code());
    common::assert_one_line_error(&ours, 0, "blk: ", "cannot skip to specified offset");
    assert_eq!(s.read("x.out"), s.read("y.out"));
}
