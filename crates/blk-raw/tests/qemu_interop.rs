//! Interoperability with QEMU: images written by qemu-io read back through `Raw`, images written through `Raw`
//! compare equal with `qemu-img compare`, and a raw disk's `map` gives exactly `qemu-img map --output=json`.

mod common;

use std::path::Path;
use std::process::Command;

use blk_core::{DiskFile, ExtentKind, MappedDisk};
use blk_raw::{Preallocation, Raw, RawCreateOptions};
use common::*;

const SIZE: u64 = 16 << 20;

/// `qemu-img map --output=json` as (start, length, zero, data, offset) runs, checking the fields that are
/// constant for raw files.
fn qemu_map(path: &Path) -> Vec<(u64, u64, bool, bool, u64)> {
    let output = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", path_str(path)],
    );
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

/// `DiskFile::map` of a raw disk over the whole image, in the same terms.
fn blk_map(disk: &dyn DiskFile) -> Vec<(u64, u64, bool, bool, u64)> {
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
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let qemu_image = dir.path().join("qemu.img");
    run(
        "qemu-img",
        &["create", "-f", "raw", path_str(&qemu_image), "16M"],
    );
    qemu_io("raw", &qemu_image, &qemu_io_commands(REFERENCE_WRITES));

    let model = model(SIZE, REFERENCE_WRITES);
    // What QEMU wrote, read through Raw, is the file, qemu-img convert's output and the model. Our handles are
    // closed before qemu-img runs: blk's whole-file read lock makes qemu's lock probe fail.
    let (contents, map) = {
        let disk = open_disk(&qemu_image, ro()).unwrap();
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
            path_str(&qemu_image),
            path_str(&converted),
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
        let disk = MappedDisk::new(
            Raw::create(
                &twin,
                &RawCreateOptions {
                    size: SIZE,
                    preallocation: Preallocation::Off,
                },
            )
            .unwrap(),
        );
        // qemu-io `write -z` without `-u` must not unmap: neither does `replay`.
        replay(&disk, REFERENCE_WRITES);
    }
    let status = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            path_str(&twin),
            path_str(&qemu_image),
        ])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(0), "qemu-img compare: images differ");
    // qemu-img info agrees on the size; Raw's map of the twin agrees with qemu-img's.
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", path_str(&twin)],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], SIZE);
    let (physical, map) = {
        let disk = open_disk(&twin, ro()).unwrap();
        (disk.physical_size().unwrap(), blk_map(&disk))
    };
    assert_eq!(info["actual-size"], physical);
    assert_eq!(map, qemu_map(&twin));
}

#[test]
fn qemu_reads_what_raw_creates() {
    let _serial = serial();
    if !have_qemu() {
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
                path_str(&qemu),
                &size.to_string(),
            ],
        );
        let blk_len = std::fs::metadata(&blk).unwrap().len();
        assert_eq!(blk_len, std::fs::metadata(&qemu).unwrap().len(), "{mode}");
        let status = Command::new("qemu-img")
            .args([
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                path_str(&blk),
                path_str(&qemu),
            ])
            .output()
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(0), "{mode}");
        let (physical, map) = {
            let disk = open_disk(&blk, ro()).unwrap();
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
        .args(["-f", "raw", "-c", "read 0 512", path_str(path)])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn blk_and_qemu_locks_see_each_other() {
    let _serial = serial();
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 1 << 20);

    // A blk writer keeps QEMU writers out; QEMU readers share writes (as next to a QEMU writer) and get in.
    let disk = open_disk(&path, rw()).unwrap();
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512", path_str(&path)])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("\"write\" lock"),
        "{output:?}"
    );
    run("qemu-img", &["map", "-f", "raw", path_str(&path)]);
    run("qemu-img", &["map", "-U", "-f", "raw", path_str(&path)]);
    drop(disk);

    // A blk reader refuses to share writes, like `qemu-img convert`'s source.
    let reader = open_disk(&path, ro()).unwrap();
    assert!(!qemu_writer_gets_in(&path));
    drop(reader);
    assert!(qemu_writer_gets_in(&path));

    // A QEMU writer keeps blk readers and writers out.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw", path_str(&path)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        match open_disk(&path, rw()) {
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
        open_disk(&path, ro()).unwrap_err().kind(),
        blk_core::ErrorKind::Locked
    );
    open_disk(&path, unlocked()).unwrap();
    drop(qemu.stdin.take());
    qemu.wait().unwrap();
    open_disk(&path, rw()).unwrap();
}
