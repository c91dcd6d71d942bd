//! Helpers for the integration tests: run `blk`, `qemu-img` and `qemu-io` in a temporary directory and build
//! the QEMU-written reference image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use blk_test_support::qemu_io_args;
use blk_test_support::{qemu_io_commands, REFERENCE_WRITES};

/// The qemu-io commands that write the reference image: the workspace's reference script (data, a 9 KiB
/// unaligned write, zeroes, a discard inside data, a write in the last MiB).
pub fn reference_script() -> Vec<String> {
    qemu_io_commands(REFERENCE_WRITES)
}

/// A scratch directory; every command runs with it as working directory, so file names stay relative.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"))
    }

    /// Runs the `blk` under test.
    pub fn blk(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_blk"), args)
    }

    /// Runs qemu-img.
    pub fn qemu_img(&self, args: &[&str]) -> Output {
        self.run("qemu-img", args)
    }

    /// Runs qemu-io.
    pub fn qemu_io(&self, args: &[&str]) -> Output {
        self.run("qemu-io", args)
    }

    /// Creates a LUKS-encrypted QCOW2 `name` of `size` with qemu-img, keyed by the secret `object`
    /// (`secret,id=ID,data=...`) whose id is `id`, PBKDF2 at 10 ms, and `extra` (`,option=value...`).
    pub fn create_luks_qcow2(&self, object: &str, id: &str, extra: &str, name: &str, size: &str) {
        let o = format!("encrypt.format=luks,encrypt.key-secret={id},encrypt.iter-time=10{extra}");
        ok(&self.qemu_img(&[
            "create", "-q", "-f", "qcow2", "--object", object, "-o", &o, name, size,
        ]));
    }

    /// Creates a 16 MiB raw image with qemu-img and writes [`reference_script`] into it with qemu-io.
    pub fn reference_image(&self, name: &str) -> PathBuf {
        ok(&self.qemu_img(&["create", "-q", "-f", "raw", name, "16M"]));
        ok(&self.qemu_io(&qemu_io_args("raw", name, &reference_script())));
        self.path(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    pub fn write(&self, name: &str, data: &[u8]) {
        std::fs::write(self.path(name), data).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    }
}

/// The exit code (a signal counts as a failure distinct from every code).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Asserts the error contract: exit code `expected`, exactly one line on stderr, starting `blk: ` unless
/// `prefix` says otherwise, naming `path`, and no panic.
pub fn assert_one_line_error(out: &Output, expected: i32, prefix: &str, path: &str) -> String {
    let err = stderr(out);
    assert_eq!(code(out), expected, "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "exactly one stderr line, got: {err:?}"
    );
    assert!(
        err.starts_with(prefix),
        "stderr should start with {prefix:?}: {err}"
    );
    assert!(err.contains(path), "stderr should name {path}: {err}");
    err
}

/// The size of `path` on the host (allocated bytes).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// `qemu-img info --output=json` of `image` without what legitimately differs between twins made by two tools
/// (the file name, the disk usage, the file child).
pub fn qemu_info_without_names(s: &Scratch, image: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&ok(&s.qemu_img(&["info", "--output=json", image]))).unwrap();
    for key in ["filename", "actual-size", "children"] {
        if let Some(map) = v.as_object_mut() {
            map.remove(key);
        }
    }
    v
}

/// Runs `args` with qemu-img and blk: both must fail with exit code 1 and say `message` on stderr; returns
/// blk's stderr.
pub fn assert_both_fail_with(s: &Scratch, args: &[&str], message: &str) -> String {
    let theirs = s.qemu_img(args);
    let ours = s.blk(args);
    assert_eq!(code(&theirs), 1, "qemu-img {args:?}");
    assert_eq!(code(&ours), 1, "blk {args:?}");
    assert!(
        stderr(&theirs).contains(message),
        "qemu-img {args:?}: {}",
        stderr(&theirs)
    );
    assert!(
        stderr(&ours).contains(message),
        "blk {args:?}: {}",
        stderr(&ours)
    );
    stderr(&ours)
}

/// Runs `args` with qemu-img and blk: both must fail with exit code 1, and blk's one error line must contain
/// the first line of qemu-img's message.
pub fn assert_same_failure(s: &Scratch, args: &[&str]) {
    let theirs = s.qemu_img(args);
    let ours = s.blk(args);
    assert_eq!(code(&theirs), 1, "qemu-img {args:?}");
    assert_eq!(code(&ours), 1, "blk {args:?}");
    let message = stderr(&theirs);
    let first = message
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("qemu-img: ");
    assert!(
        stderr(&ours).contains(first),
        "{args:?}: blk says {} where qemu-img says {first}",
        stderr(&ours)
    );
}
