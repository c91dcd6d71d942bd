//! Interoperability with QEMU: images written by qemu-io read back through `Raw`, images written through `Raw`
//! compare equal with `qemu-img compare`, and `Raw::map` gives exactly `qemu-img map --output=json`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use blk_core::{DiskFile, ExtentKind};
use blk_raw::{Preallocation, Raw, RawCreateOptions};
use common::*;

const SIZE: u64 = 16 << 20;

/// One step of the scenario, as qemu-io writes it and as `Raw` does it.
enum Step {
    Pattern { offset: u64, len: u64, byte: u8 },
    Zero { offset: u64, len: u64 },
    Discard { offset: u64, len: u64 },
}

const STEPS: &[Step] = &[
    Step::Pattern {
        offset: 0,
        len: 128 << 10,
        byte: 0xa7,
    },
    Step::Pattern {
        offset: 2 << 20,
        len: 512,
        byte: 0x5c,
    },
    Step::Pattern {
        offset: 6_295_040,
        len: 9 << 10,
        byte: 0x3e,
    },
    Step::Zero {
        offset: 7 << 20,
        len: 64 << 10,
    },
    Step::Pattern {
        offset: 9 << 20,
        len: 512 << 10,
        byte: 0x81,
    },
    Step::Discard {
        offset: 9_502_720,
        len: 128 << 10,
    },
    Step::Pattern {
        offset: 12_581_376,
        len: 3 << 10,
        byte: 0xf0,
    },
];

const QEMU_IO_COMMANDS: &[&str] = &[
    "write -P 0xa7 0 128k",
    "write -P 0x5c 2M 512",
    "write -P 0x3e 6295040 9k",
    "write -z 7M 64k",
    "write -P 0x81 9M 512k",
    "discard 9502720 128k",
    "write -P 0xf0 12581376 3k",
];

fn qemu_available() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !found {
        println!("note: qemu-img or qemu-io not found, skipping the QEMU interop test");
    }
    found
}

fn run(program: &str, args: &[&str]) -> Output {
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

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn model() -> Vec<u8> {
    let mut model = vec![0u8; SIZE as usize];
    for step in STEPS {
        match *step {
            Step::Pattern { offset, len, byte } => {
                model[offset as usize..(offset + len) as usize].fill(byte)
            }
            Step::Zero { offset, len } | Step::Discard { offset, len } => {
                model[offset as usize..(offset + len) as usize].fill(0)
            }
        }
    }
    model
}

/// `qemu-img map --output=json` as (start, length, zero, data, offset) runs, checking the fields that are
/// constant for raw files.
fn qemu_map(path: &Path) -> Vec<(u64, u64, bool, bool, u64)> {
    let output = run("qemu-img", &["map", "--output=json", "-f", "raw", s(path)]);
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    runs.as_array()
        .unwrap()
        .iter()
        .map(|run| {
            assert_eq!(run["depth"], 0, "{run}");
            assert_eq!(run["present"], true, "{run}");
            assert_eq!(run["compressed"], false, "{run}");
            (
                run["start"].as_u64().unwrap(),
                run["length"].as_u64().unwrap(),
                run["zero"].as_bool().unwrap(),
                run["data"].as_bool().unwrap(),
                run["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `Raw::map` over the whole image, in the same terms.
fn blk_map(disk: &Raw) -> Vec<(u64, u64, bool, bool, u64)> {
    full_map(disk)
        .into_iter()
        .map(|e| {
            assert_eq!(e.depth, 0);
            assert!(!e.compressed);
            let zero = match e.kind {
                ExtentKind::Data => false,
                ExtentKind::Zero | ExtentKind::AllocatedZero => true,
                ExtentKind::Unallocated => panic!("raw images have no unallocated runs: {e:?}"),
            };
            (e.offset, e.length, zero, !zero, e.host_offset.unwrap())
        })
        .collect()
}

#[test]
fn raw_and_qemu_agree() {
    let _serial = serial();
    if !qemu_available() {
        return;
    }
    let dir = tempdir();
    let qemu_image = dir.path().join("qemu.img");
    run("qemu-img", &["create", "-f", "raw", s(&qemu_image), "16M"]);
    let mut args = vec!["-f", "raw"];
    for command in QEMU_IO_COMMANDS {
        args.extend(["-c", command]);
    }
    args.push(s(&qemu_image));
    run("qemu-io", &args);

    let model = model();
    // What QEMU wrote, read through Raw, is the file, qemu-img convert's output and the model. Our handles are
    // closed before qemu-img runs: blk's whole-file read lock makes qemu's lock probe fail.
    let (contents, map) = {
        let disk = Raw::open(&qemu_image, ro()).unwrap();
        assert_eq!(disk.logical_size(), SIZE);
        (read_all(&disk), blk_map(&disk))
    };
    assert!(contents == model, "Raw reads differ from the model");
    assert!(contents == std::fs::read(&qemu_image).unwrap());
    let converted = dir.path().join("converted.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            s(&qemu_image),
            s(&converted),
        ],
    );
    assert!(contents == std::fs::read(&converted).unwrap());
    // The map, run for run.
    let qemu = qemu_map(&qemu_image);
    assert_eq!(map, qemu);
    assert!(qemu.iter().any(|run| run.2) && qemu.iter().any(|run| run.3));

    // The same steps through Raw on a blk-created twin.
    let twin = dir.path().join("twin.img");
    {
        let disk = Raw::create(
            &twin,
            &RawCreateOptions {
                size: SIZE,
                preallocation: Preallocation::Off,
            },
        )
        .unwrap();
        for step in STEPS {
            match *step {
                Step::Pattern { offset, len, byte } => disk
                    .write_all_at(offset, &vec![byte; len as usize])
                    .unwrap(),
                // qemu-io `write -z` without `-u` must not unmap.
                Step::Zero { offset, len } => disk.write_zeroes(offset, len, false).unwrap(),
                Step::Discard { offset, len } => disk.discard(offset, len).unwrap(),
            }
        }
        disk.flush().unwrap();
    }
    let status = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            s(&twin),
            s(&qemu_image),
        ])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(0), "qemu-img compare: images differ");
    // qemu-img info agrees on the size; Raw's map of the twin agrees with qemu-img's.
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", s(&twin)],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], SIZE);
    let (physical, map) = {
        let disk = Raw::open(&twin, ro()).unwrap();
        (disk.physical_size().unwrap(), blk_map(&disk))
    };
    assert_eq!(info["actual-size"], physical);
    assert_eq!(map, qemu_map(&twin));
}

#[test]
fn qemu_reads_what_raw_creates() {
    let _serial = serial();
    if !qemu_available() {
        return;
    }
    let dir = tempdir();
    for (mode, size) in [
        (Preallocation::Off, 1000u64),
        (Preallocation::Falloc, 3 << 20),
        (Preallocation::Full, 5 << 20),
    ] {
        let blk = dir.path().join(format!("blk-{mode}.img"));
        let qemu = dir.path().join(format!("qemu-{mode}.img"));
        drop(
            Raw::create(
                &blk,
                &RawCreateOptions {
                    size,
                    preallocation: mode,
                },
            )
            .unwrap(),
        );
        run(
            "qemu-img",
            &[
                "create",
                "-f",
                "raw",
                "-o",
                &format!("preallocation={mode}"),
                s(&qemu),
                &size.to_string(),
            ],
        );
        let blk_len = std::fs::metadata(&blk).unwrap().len();
        assert_eq!(blk_len, std::fs::metadata(&qemu).unwrap().len(), "{mode}");
        let status = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", s(&blk), s(&qemu)])
            .output()
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(0), "{mode}");
        let (physical, map) = {
            let disk = Raw::open(&blk, ro()).unwrap();
            (disk.physical_size().unwrap(), blk_map(&disk))
        };
        // Preallocated images hold all their blocks, as qemu's do.
        if mode != Preallocation::Off {
            assert!(physical >= size, "{mode}");
        }
        assert_eq!(map, qemu_map(&blk), "{mode}");
        assert_eq!(
            map,
            qemu_map(&qemu),
            "{mode}: blk and qemu images map alike"
        );
    }
}

/// Whether `qemu-io` (writable, so it asks for the "write" permission) can open `path` right now.
fn qemu_writer_gets_in(path: &Path) -> bool {
    Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512", s(path)])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn blk_and_qemu_locks_see_each_other() {
    let _serial = serial();
    if !qemu_available() {
        return;
    }
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);

    // A blk writer keeps QEMU writers out; QEMU readers share writes (as next to a QEMU writer) and get in.
    let disk = Raw::open(&path, rw()).unwrap();
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512", s(&path)])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("\"write\" lock"),
        "{output:?}"
    );
    run("qemu-img", &["map", "-f", "raw", s(&path)]);
    run("qemu-img", &["map", "-U", "-f", "raw", s(&path)]);
    drop(disk);

    // A blk reader refuses to share writes, like `qemu-img convert`'s source.
    let reader = Raw::open(&path, ro()).unwrap();
    assert!(!qemu_writer_gets_in(&path));
    drop(reader);
    assert!(qemu_writer_gets_in(&path));

    // A QEMU writer keeps blk readers and writers out.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw", s(&path)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        match Raw::open(&path, rw()) {
            Err(e) => break e,
            Ok(d) => {
                drop(d);
                assert!(
                    std::time::Instant::now() < deadline,
                    "qemu-io never took its locks"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    assert_eq!(err.kind(), blk_core::ErrorKind::Locked, "{err}");
    assert_eq!(
        Raw::open(&path, ro()).unwrap_err().kind(),
        blk_core::ErrorKind::Locked
    );
    Raw::open(&path, unlocked()).unwrap();
    drop(qemu.stdin.take());
    qemu.wait().unwrap();
    Raw::open(&path, rw()).unwrap();
}
