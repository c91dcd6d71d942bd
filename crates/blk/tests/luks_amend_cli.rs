//! `blk amend` of LUKS key slots against `qemu-img amend`, on twin encrypted images qemu-img made (PBKDF2 at
//! 10 ms): the same commands through both tools give the same exit codes and messages, and afterwards each
//! image opens with exactly the same passwords in both tools (each tool opening the other's result), its data
//! unchanged and `qemu-img check` clean.
#![cfg(feature = "qcow2")]

mod common;

use std::process::Output;

use common::{code, ok, stderr, stdout, Scratch};

/// The secrets every amend command defines: `s0` is the image's first password.
const OBJECTS: [&str; 3] = [
    "secret,id=s0,data=old pass",
    "secret,id=s1,data=new pass",
    "secret,id=s2,data=third pass",
];
/// Every password tried after a change (the last is never set).
const PASSWORDS: [&str; 4] = ["old pass", "new pass", "third pass", "never set"];
const IMAGE: &str = "x.qcow2";
/// The guest data qemu-io writes before the amends.
const PATTERN: u8 = 0x5a;
const SIZE: usize = 1 << 20;

/// The same image in two scratch directories: one amended by qemu-img, one by blk.
struct Twins {
    qemu: Scratch,
    blk: Scratch,
}

fn image_opts(key: &str) -> String {
    format!("driver=qcow2,file.filename={IMAGE},encrypt.key-secret={key}")
}

/// qemu-img's message without its prefixes (`qemu-img: `, `Could not open '...': `): what blk must say too.
fn qemu_message(out: &Output) -> String {
    let err = stderr(out);
    let first = err
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("qemu-img: ");
    match first.strip_prefix("Could not open '") {
        Some(rest) => rest
            .split_once("': ")
            .map_or(first, |(_, message)| message)
            .to_string(),
        None => first.to_string(),
    }
}

impl Twins {
    fn new() -> Twins {
        let qemu = Scratch::new();
        ok(&qemu.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            OBJECTS[0],
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            IMAGE,
            "1M",
        ]));
        let opts = image_opts("s0");
        ok(&qemu.qemu_io(&[
            "--object",
            OBJECTS[0],
            "--image-opts",
            &opts,
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "write -P 0x5a 64k 960k",
        ]));
        let blk = Scratch::new();
        std::fs::copy(qemu.path(IMAGE), blk.path(IMAGE)).unwrap();
        Twins { qemu, blk }
    }

    /// Runs `qemu-img amend` and `blk amend` with the secrets defined and `args`; asserts the same exit code
    /// and message; returns the exit code.
    fn amend(&self, args: &[&str]) -> i32 {
        let mut full = vec!["amend"];
        for object in OBJECTS {
            full.extend(["--object", object]);
        }
        full.extend(args);
        let theirs = self.qemu.qemu_img(&full);
        let ours = self.blk.blk(&full);
        assert_eq!(
            code(&ours),
            code(&theirs),
            "{args:?}: blk says {:?}, qemu-img {:?}",
            stderr(&ours),
            stderr(&theirs)
        );
        assert_eq!(stdout(&ours), stdout(&theirs), "{args:?}");
        if code(&theirs) == 0 {
            assert_eq!(stderr(&ours), "", "{args:?}");
        } else {
            let err = stderr(&ours);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            // One line, or two where qemu-img adds a hint.
            let lines = stderr(&theirs).lines().count();
            assert_eq!(err.lines().count(), lines, "{args:?}: {err}");
            let message = qemu_message(&theirs);
            assert!(
                err.contains(&message),
                "{args:?}: blk says {err:?} where qemu-img says {message:?}"
            );
        }
        code(&theirs)
    }

    /// Amends the key slots through `--image-opts` opened with the secret `key`, `-o opts`, `--force` when
    /// `force`.
    fn amend_slots(&self, opts: &str, key: &str, force: bool) -> i32 {
        let image = image_opts(key);
        let mut args = vec!["-o", opts];
        if force {
            args.push("--force");
        }
        args.extend(["--image-opts", &image]);
        self.amend(&args)
    }

    /// Asserts that both images open with the same passwords in both tools, with the data unchanged, and
    /// that `qemu-img check` finds both clean; returns the passwords that open them.
    fn assert_same_passwords(&self) -> Vec<&'static str> {
        let mut opening = Vec::new();
        for password in PASSWORDS {
            let object = format!("secret,id=k,data={password}");
            let opts = image_opts("k");
            let mut results = Vec::new();
            for scratch in [&self.qemu, &self.blk] {
                for (tool, raw) in [("qemu-img", "by-qemu.raw"), ("blk", "by-blk.raw")] {
                    let args = [
                        "convert",
                        "--object",
                        &object,
                        "--image-opts",
                        &opts,
                        "-O",
                        "raw",
                        raw,
                    ];
                    let out = if tool == "qemu-img" {
                        scratch.qemu_img(&args)
                    } else {
                        scratch.blk(&args)
                    };
                    let opened = code(&out) == 0;
                    if opened {
                        assert_eq!(scratch.read(raw), vec![PATTERN; SIZE], "{tool} {password}");
                    } else {
                        assert!(
                            stderr(&out).contains("Invalid password, cannot unlock any keyslot"),
                            "{tool} {password}: {}",
                            stderr(&out)
                        );
                    }
                    results.push(opened);
                }
            }
            assert!(
                results.iter().all(|&r| r == results[0]),
                "password {password:?} opens (qemu's image by qemu-img, by blk; blk's image by qemu-img, by \
                 blk): {results:?}"
            );
            if results[0] {
                opening.push(password);
            }
        }
        if let Some(password) = opening.first() {
            let object = format!("secret,id=k,data={password}");
            for scratch in [&self.qemu, &self.blk] {
                ok(&scratch.qemu_img(&[
                    "check",
                    "--object",
                    &object,
                    "--image-opts",
                    &image_opts("k"),
                ]));
            }
        }
        opening
    }
}

#[test]
fn key_slots_are_added_and_erased_as_qemu_img_does() {
    let t = Twins::new();
    assert_eq!(t.assert_same_passwords(), ["old pass"]);
    let add = "encrypt.keyslot=1,encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10";
    assert_eq!(t.amend_slots(add, "s0", false), 0);
    assert_eq!(t.assert_same_passwords(), ["old pass", "new pass"]);
    // Refusals, with nothing changed.
    for opts in [
        add,
        "encrypt.keyslot=8,encrypt.state=active,encrypt.new-secret=s2",
        "encrypt.keyslot=-1,encrypt.state=active,encrypt.new-secret=s2",
        "encrypt.keyslot=x,encrypt.state=active,encrypt.new-secret=s2",
        "encrypt.state=active",
        "encrypt.keyslot=2",
        "encrypt.state=bogus",
        "encrypt.state=inactive,encrypt.new-secret=s1",
        "encrypt.state=inactive,encrypt.iter-time=10,encrypt.keyslot=1",
        "encrypt.state=inactive",
        "encrypt.state=inactive,encrypt.keyslot=3",
        "encrypt.state=inactive,encrypt.keyslot=1,encrypt.old-secret=s2",
        "encrypt.state=inactive,encrypt.old-secret=s2",
        "encrypt.state=active,encrypt.new-secret=nosuch",
        "encrypt.state=active,encrypt.new-secret=s2,encrypt.old-secret=s1",
        "encrypt.state=active,encrypt.new-secret=s2,encrypt.iter-time=x",
        "encrypt.format=luks",
        "encrypt.cipher-alg=aes-128",
    ] {
        assert_eq!(t.amend_slots(opts, "s0", false), 1, "{opts}");
    }
    // The image is opened with a password that no slot holds, or without one.
    let third = "encrypt.state=active,encrypt.new-secret=s2,encrypt.iter-time=10";
    assert_eq!(t.amend_slots(third, "s2", false), 1);
    assert_eq!(t.amend(&["-o", third, "-f", "qcow2", IMAGE]), 1);
    assert_eq!(t.amend(&["-o", third, IMAGE]), 1);
    assert_eq!(t.assert_same_passwords(), ["old pass", "new pass"]);
    // A free slot (2), unlocked with the second password.
    assert_eq!(t.amend_slots(third, "s1", false), 0);
    assert_eq!(
        t.assert_same_passwords(),
        ["old pass", "new pass", "third pass"]
    );
    // Erasing the slots a password opens, then a slot by index with its password.
    assert_eq!(
        t.amend_slots("encrypt.state=inactive,encrypt.old-secret=s1", "s0", false),
        0
    );
    assert_eq!(t.assert_same_passwords(), ["old pass", "third pass"]);
    let erase_0 = "encrypt.state=inactive,encrypt.keyslot=0,encrypt.old-secret=s0";
    assert_eq!(t.amend_slots(erase_0, "s2", false), 0);
    assert_eq!(t.assert_same_passwords(), ["third pass"]);
    // The last active slot is neither erased nor overwritten without --force.
    for opts in [
        "encrypt.state=inactive,encrypt.keyslot=2",
        "encrypt.state=inactive,encrypt.old-secret=s2",
        "encrypt.state=active,encrypt.new-secret=s0,encrypt.keyslot=2,encrypt.iter-time=10",
    ] {
        assert_eq!(t.amend_slots(opts, "s2", false), 1, "{opts}");
    }
    assert_eq!(t.assert_same_passwords(), ["third pass"]);
    // Overwritten with --force.
    let overwrite =
        "encrypt.state=active,encrypt.new-secret=s0,encrypt.keyslot=2,encrypt.iter-time=10";
    assert_eq!(t.amend_slots(overwrite, "s2", true), 0);
    assert_eq!(t.assert_same_passwords(), ["old pass"]);
    // Erased with --force: nothing opens the image any more.
    let erase_2 = "encrypt.state=inactive,encrypt.keyslot=2";
    assert_eq!(t.amend_slots(erase_2, "s0", true), 0);
    assert!(t.assert_same_passwords().is_empty());
    assert_eq!(t.amend_slots(erase_2, "s0", true), 1);
}

#[test]
fn a_full_header_refuses_another_slot() {
    let t = Twins::new();
    let add = "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=1";
    for _ in 1..8 {
        assert_eq!(t.amend_slots(add, "s0", false), 0);
    }
    assert_eq!(t.amend_slots(add, "s0", false), 1);
    assert_eq!(t.assert_same_passwords(), ["old pass", "new pass"]);
    // Erasing every slot one password opens (7 of 8) leaves the other.
    assert_eq!(
        t.amend_slots("encrypt.state=inactive,encrypt.old-secret=s1", "s0", false),
        0
    );
    assert_eq!(t.assert_same_passwords(), ["old pass"]);
}

#[test]
fn an_unencrypted_image_has_no_key_slots_to_amend() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"]));
    let args = [
        "amend",
        "--object",
        OBJECTS[1],
        "-o",
        "encrypt.state=active,encrypt.new-secret=s1",
        "-f",
        "qcow2",
        "plain.qcow2",
    ];
    let theirs = s.qemu_img(&args);
    let ours = s.blk(&args);
    assert_eq!((code(&theirs), code(&ours)), (1, 1));
    let message = "Can't amend encryption options - encryption not present";
    assert!(stderr(&theirs).contains(message));
    assert!(stderr(&ours).contains(message), "{}", stderr(&ours));
}
