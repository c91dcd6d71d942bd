//! Running QEMU's tools (`qemu-img`, `qemu-io`), which the interoperability tests compare against.

use std::path::Path;
use std::process::{Command, Output};

/// Whether `qemu-img` and `qemu-io` can be run; when not, says so on stdout (the caller skips its test).
pub fn have_qemu() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !found {
        println!("note: qemu-img or qemu-io not found, skipping the QEMU interop test");
    }
    found
}

/// Runs `program` with `args` and returns what it did, without asserting anything (a program that cannot be
/// started panics).
pub fn run_output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs `program` with `args`, panicking with its status and stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = run_output(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `program` with `args` and returns its exit code (-1 when killed by a signal) and its stdout followed
/// by its stderr, without asserting anything.
pub fn run_status(program: &str, args: &[&str]) -> (i32, String) {
    let out = run_output(program, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The path as `&str` (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// qemu-io's arguments that run `commands` on `image`: `-f format -c command... image` (`blk io` takes the
/// same).
pub fn qemu_io_args<'a>(
    format: &'a str,
    image: &'a str,
    commands: &'a [impl AsRef<str>],
) -> Vec<&'a str> {
    let mut args = vec!["-f", format];
    for command in commands {
        args.extend(["-c", command.as_ref()]);
    }
    args.push(image);
    args
}

/// Runs `qemu-io -f format -c command... image` and returns its stdout, asserting that it succeeded and that
/// no command printed a failure or an error (qemu-io reports some failed commands only there).
pub fn qemu_io(format: &str, image: &Path, commands: &[impl AsRef<str>]) -> String {
    let args = qemu_io_args(format, path_str(image), commands);
    let out = run_output("qemu-io", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io {args:?} failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The guest contents of `image` as QEMU reads them: `qemu-img convert -U -f format -O raw` into
/// `dir/<image's file name>.raw`, read back (`-U`: without taking the image's locks, so a test may still hold
/// it open).
pub fn qemu_raw(format: &str, image: &Path, dir: &Path) -> Vec<u8> {
    let name = image.file_name().expect("an image file name");
    let raw = dir.join(format!("{}.raw", name.to_string_lossy()));
    run(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            format,
            "-O",
            "raw",
            path_str(image),
            path_str(&raw),
        ],
    );
    std::fs::read(raw).expect("reading qemu-img's conversion")
}

/// Asserts that `qemu-img compare` finds the guest contents of `a` (of format `a_format`) and `b` (of
/// `b_format`) equal.
pub fn qemu_compare(a_format: &str, a: &Path, b_format: &str, b: &Path) {
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            a_format,
            "-F",
            b_format,
            path_str(a),
            path_str(b),
        ],
    );
}

/// `(offset, byte, len)` writes as qemu-io commands (`write -P byte offset len`).
pub fn qemu_commands(writes: &[(u64, u8, u64)]) -> Vec<String> {
    writes
        .iter()
        .map(|(o, b, l)| format!("write -P {b:#x} {o} {l}"))
        .collect()
}
