//! Test 7: bad input never panics; each case exits with its code and exactly one stderr line naming the file
//! (and the offset where there is one). Test 10: `blk demo` runs.

mod common;

use common::{assert_one_line_error, code, ok, stderr, stdout, Scratch};

/// Every subcommand that opens an image, as `(args before the file, args after)`.
const OPENERS: &[(&[&str], &[&str])] = &[
    (&["info"], &[]),
    (&["info", "--output=json"], &[]),
    (&["map"], &[]),
    (&["check"], &[]),
    (&["io", "-c", "read 0 512"], &[]),
    (&["convert", "-O", "raw"], &["out.raw"]),
];

fn run_openers(s: &Scratch, file: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for (before, after) in OPENERS {
        let mut args: Vec<&str> = before.to_vec();
        args.extend_from_slice(extra);
        args.push(file);
        args.extend_from_slice(after);
        let out = s.blk(&args);
        lines.push(assert_one_line_error(&out, 1, "blk: ", file));
    }
    lines
}

#[test]
fn missing_file_and_directory() {
    let s = Scratch::new();
    for line in run_openers(&s, "missing.raw", &[]) {
        assert!(line.contains("No such file or directory"), "{line}");
    }
    std::fs::create_dir(s.path("dir.img")).expect("mkdir");
    run_openers(&s, "dir.img", &[]);
    run_openers(&s, "dir.img", &["-f", "raw"]);
    // dd names its input too.
    let out = s.blk(&["dd", "if=missing.raw", "of=out.raw"]);
    assert_one_line_error(&out, 1, "blk: ", "missing.raw");
}

#[test]
fn empty_file_needs_an_explicit_format() {
    let s = Scratch::new();
    s.write("empty.img", b"");
    let lines = run_openers(&s, "empty.img", &[]);
    assert!(lines.iter().all(|l| l.contains("at 0x0")), "{lines:?}");
    // With -f raw it is an image of size 0, as qemu-img sees it.
    let json = ok(&s.blk(&["info", "-f", "raw", "--output=json", "empty.img"]));
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value["virtual-size"], 0);
    ok(&s.blk(&["convert", "-f", "raw", "-O", "raw", "empty.img", "copy.img"]));
    assert_eq!(s.read("copy.img").len(), 0);
}

#[test]
fn truncated_qcow2_headers() {
    let s = Scratch::new();
    s.write("magic.img", b"QFI\xfb");
    let lines = run_openers(&s, "magic.img", &[]);
    assert!(
        lines.iter().all(|l| l.contains("at 0x")),
        "offset named: {lines:?}"
    );
    let mut short = b"QFI\xfb".to_vec();
    short.resize(100, 0);
    s.write("short.img", &short);
    run_openers(&s, "short.img", &[]);
}

#[test]
fn unknown_format_name() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "a.raw", "1M"]));
    for line in run_openers(&s, "a.raw", &["-f", "foo"]) {
        assert!(line.contains("Unknown file format 'foo'"), "{line}");
    }
    let out = s.blk(&["convert", "-O", "foo", "a.raw", "b.raw"]);
    assert_one_line_error(&out, 1, "blk: ", "Unknown file format 'foo'");
    let out = s.blk(&["create", "-f", "foo", "c.raw", "1M"]);
    assert_one_line_error(&out, 1, "blk: ", "c.raw");
}

#[test]
fn read_past_the_end() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "a.raw", "16M"]));
    let theirs = s.qemu_io(&["-f", "raw", "-c", "read 16M 1", "a.raw"]);
    let ours = s.blk(&["io", "-f", "raw", "-c", "read 16M 1", "a.raw"]);
    // As qemu-io: `read failed: Input/output error` on stdout, nothing on stderr.
    assert_eq!(code(&ours), code(&theirs));
    assert_eq!(stdout(&ours), stdout(&theirs));
    assert_eq!(stdout(&ours), "read failed: Input/output error\n");
    assert_eq!(stderr(&ours), "");
    let ours = s.blk(&["io", "-f", "raw", "-c", "write 16M 512", "a.raw"]);
    assert_eq!(code(&ours), 1);
    assert_eq!(stdout(&ours), "write failed: Input/output error\n");
}

/// Usage errors: qemu-img's exit code and its number of lines (the message, and the `Try ... --help` line where
/// qemu-img prints one), the first naming blk.
#[test]
fn usage_errors_are_said_as_qemu_img_says_them() {
    let s = Scratch::new();
    for args in [
        &["frobnicate"][..],
        &["info"],
        &["info", "--output=xml", "a.raw"],
        &["convert", "a.raw"],
        &["dd", "bs=0", "if=a", "of=b"],
        &["convert", "-S", "1000", "a.raw", "b.raw"],
    ] {
        let out = s.blk(args);
        let theirs = stderr(&s.qemu_img(args));
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            theirs.lines().count(),
            "{args:?}: {err} where qemu-img says {theirs}"
        );
        assert!(err.starts_with("blk"), "{err}");
    }
    assert_eq!(code(&s.blk(&["--help"])), 0);
    assert_eq!(code(&s.blk(&["convert", "--help"])), 0);
}

/// 10. The README's demo runs to the end.
#[test]
fn demo_runs() {
    let s = Scratch::new();
    let out = s.blk(&["demo"]);
    let text = ok(&out);
    assert!(text.contains("Images are identical."), "{text}");
    assert!(text.contains("all steps succeeded"), "{text}");
    assert!(!stderr(&out).contains("panicked"));
}
