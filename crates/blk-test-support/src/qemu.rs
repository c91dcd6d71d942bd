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

/// Runs `program` with `args`, panicking with its status and stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
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
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The path as `&str` (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `qemu-io -f format -c command... image`, asserting success.
pub fn qemu_io(format: &str, image: &Path, commands: &[impl AsRef<str>]) {
    let mut args = vec!["-f", format];
    for command in commands {
        args.extend(["-c", command.as_ref()]);
    }
    args.push(path_str(image));
    run("qemu-io", &args);
}

/// The guest contents of `image` as QEMU reads them: `qemu-img convert -f format -O raw` into
/// `dir/<image's file name>.raw`, read back.
pub fn qemu_raw(format: &str, image: &Path, dir: &Path) -> Vec<u8> {
    let name = image.file_name().expect("an image file name");
    let raw = dir.join(format!("{}.raw", name.to_string_lossy()));
    run(
        "qemu-img",
        &[
            "convert",
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
