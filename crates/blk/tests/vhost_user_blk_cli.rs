//! `blk vhost-user-blk`'s command line: an encrypted QCOW2 is served with its secret from `--object` and
//! `--image-opts ...,encrypt.key-secret=ID` (as qemu-storage-daemon's `--object` and `--blockdev` give it),
//! refused without it; option strings take runtime options and refuse `-f`. (The data path over vhost-user,
//! encrypted images included, is tested with libblkio in `blk-vhost-user`'s tests; a guest boots on it in
//! `cargo xtask guest`.)
#![cfg(feature = "qcow2")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blk_test_support::have_qemu;
use common::{code, ok, stderr, Scratch};

const SECRET: &str = "secret,id=s0,data=pw";

/// Starts `blk vhost-user-blk --socket vhost.sock ARGS`; returns it once the socket exists (or it exited).
fn serve(s: &Scratch, args: &[&str]) -> Child {
    let socket = s.path("vhost.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = Command::new(env!("CARGO_BIN_EXE_blk"))
        .current_dir(s.dir.path())
        .args(["vhost-user-blk", "--socket", "vhost.sock"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("blk runs");
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Sends SIGTERM and returns the exit code.
fn stop(mut child: Child) -> Option<i32> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    child.wait().expect("wait").code()
}

#[test]
fn an_encrypted_image_is_served_with_its_secret_and_refused_without() {
    if !have_qemu() {
        return;
    }
    let s = Scratch::new();
    s.create_luks_qcow2(SECRET, "s0", "", "enc.qcow2", "16M");
    // Without the secret: refused before serving, with QEMU's message.
    let out = s.blk(&[
        "vhost-user-blk",
        "--socket",
        "vhost.sock",
        "-f",
        "qcow2",
        "enc.qcow2",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{}",
        stderr(&out)
    );
    // With it (and a runtime option): served until SIGTERM.
    let server = serve(
        &s,
        &[
            "--object",
            SECRET,
            "--num-queues",
            "2",
            "--image-opts",
            "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s0,overlap-check=all",
        ],
    );
    assert!(s.path("vhost.sock").exists(), "blk did not start serving");
    assert_eq!(stop(server), Some(0));
    // `-f` beside `--image-opts` and a secret that was not defined are refused.
    let out = s.blk(&[
        "vhost-user-blk",
        "--socket",
        "vhost.sock",
        "-f",
        "qcow2",
        "--image-opts",
        "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s0",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("--image-opts and --format are mutually exclusive"),
        "{}",
        stderr(&out)
    );
    let out = s.blk(&[
        "vhost-user-blk",
        "--socket",
        "vhost.sock",
        "--image-opts",
        "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s1",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    ok(&s.qemu_img(&[
        "check",
        "--object",
        SECRET,
        "--image-opts",
        "driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=s0",
    ]));
}
