//! Issue 15, item 3: `blk io -U` without `-r` opened an image writable without any lock, so a second writer's
//! flushed writes could be overwritten. Like qemu-io, `-U` is refused on a writable open.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use blk_test_support::have_qemu;
use common::{code, ok, stderr, stdout, Scratch};

const MESSAGE: &str = "force-share=on can only be used with read-only images";

#[test]
fn force_share_needs_read_only() {
    let s = Scratch::new();
    ok(&s.blk(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    let before = s.read("a.qcow2");
    let ours = s.blk(&["io", "-U", "-c", "write -P 0x5a 0 64k", "a.qcow2"]);
    assert_eq!(code(&ours), 1, "stdout: {}", stdout(&ours));
    assert!(stderr(&ours).contains(MESSAGE), "{}", stderr(&ours));
    assert!(stderr(&ours).contains("a.qcow2"), "{}", stderr(&ours));
    assert_eq!(stdout(&ours), "");
    assert!(s.read("a.qcow2") == before, "the image was written");
    // `open -U` inside a session is refused the same way; `-U -r` reads.
    let ours = s.blk(&["io", "-c", "open -U a.qcow2", "-c", "write 0 512"]);
    assert_eq!(code(&ours), 1);
    assert!(stderr(&ours).contains(MESSAGE), "{}", stderr(&ours));
    assert!(s.read("a.qcow2") == before, "the image was written");
    ok(&s.blk(&["io", "-U", "-r", "-c", "read -P 0 0 64k", "a.qcow2"]));
    if have_qemu() {
        let theirs = s.qemu_io(&["-U", "-c", "write -P 0x5a 0 64k", "a.qcow2"]);
        assert_eq!(code(&theirs), code(&ours));
        assert!(stderr(&theirs).contains(MESSAGE));
    }
}

#[test]
fn a_second_writer_with_force_share_cannot_overwrite_flushed_writes() {
    let s = Scratch::new();
    ok(&s.blk(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    // The first writer: `blk io` reading commands from stdin, holding the image open.
    let mut writer = Command::new(env!("CARGO_BIN_EXE_blk"))
        .args(["io", "a.qcow2"])
        .current_dir(s.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the first writer");
    let mut input = writer.stdin.take().expect("stdin");
    let mut output = BufReader::new(writer.stdout.take().expect("stdout"));
    input
        .write_all(b"write -P 0x11 0 64k\nflush\n")
        .expect("send commands");
    let mut line = String::new();
    while !line.contains("wrote 65536/65536 bytes at offset 0") {
        line.clear();
        assert_ne!(
            output.read_line(&mut line).expect("read"),
            0,
            "writer ended"
        );
    }
    // The second writer with -U is refused and changes nothing; a -U reader sees the flushed data.
    let second = s.blk(&[
        "io",
        "-U",
        "-c",
        "write -P 0x22 0 64k",
        "-c",
        "flush",
        "a.qcow2",
    ]);
    assert_eq!(code(&second), 1);
    assert!(stderr(&second).contains(MESSAGE), "{}", stderr(&second));
    ok(&s.blk(&["io", "-U", "-r", "-c", "read -P 0x11 0 64k", "a.qcow2"]));
    input
        .write_all(b"read -P 0x11 0 64k\nquit\n")
        .expect("send commands");
    drop(input);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut output, &mut rest).expect("read");
    let status = writer.wait().expect("wait");
    assert!(status.success(), "the first writer failed: {rest}");
    assert!(!rest.contains("Pattern verification failed"), "{rest}");
    ok(&s.blk(&["io", "-r", "-c", "read -P 0x11 0 64k", "a.qcow2"]));
}
