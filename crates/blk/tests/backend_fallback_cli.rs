//! io_uring unavailable: `blk bench -i io_uring` falls back (to Linux AIO, else synchronous I/O), says why in
//! a warning on stderr, and runs; stdout stays qemu-img's. Once with `BLK_DISABLE_IO_URING`, and, when the
//! test runs as root on a kernel with `kernel.io_uring_disabled`, once with io_uring really disabled (the
//! sysctl is put back afterwards). This binary holds one test, so nothing else runs while the sysctl is set.

mod common;

use std::process::Command;

use common::{ok, stderr, Scratch};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Puts the sysctl back when dropped (also when the test fails).
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

fn assert_fell_back(out: &std::process::Output, why: &str) {
    let text = ok(out);
    assert!(text.contains("Sending 64 read requests"), "{text}");
    let err = stderr(out);
    assert!(err.contains("io_uring is not available"), "{err}");
    assert!(err.contains(why), "{err}");
    assert!(
        err.contains("using aio") || err.contains("using sync"),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with("blk: warning: ")),
        "only warnings: {err}"
    );
}

#[test]
fn io_uring_unavailable_falls_back_with_a_message() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]));
    let args = [
        "bench", "-f", "qcow2", "-i", "io_uring", "-t", "none", "-c", "64", "-d", "8", "d.qcow2",
    ];

    let out = Command::new(env!("CARGO_BIN_EXE_blk"))
        .args(args)
        .current_dir(s.dir.path())
        .env("BLK_DISABLE_IO_URING", "1")
        .output()
        .unwrap();
    assert_fell_back(&out, "BLK_DISABLE_IO_URING");

    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("note: {SYSCTL} is missing; the kernel-disabled case is not tested");
        return;
    };
    if std::fs::write(SYSCTL, "2").is_err() {
        eprintln!(
            "note: cannot write {SYSCTL} (not root?); the kernel-disabled case is not tested"
        );
        return;
    }
    let restore = Restore(before);
    let out = s.blk(&args);
    drop(restore);
    assert_fell_back(&out, "Operation not permitted");
}
