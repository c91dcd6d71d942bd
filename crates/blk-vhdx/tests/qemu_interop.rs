//! QEMU writes, blk reads; blk writes, QEMU checks and compares.

mod common;

use blk_core::{DiskFile, ErrorKind, ImageAdmin, RepairMode};
use common::*;

#[test]
fn qemu_made_images_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [
        ("dynamic", ""),
        ("fixed", "subformat=fixed"),
        ("block1m", "block_size=1M"),
        (
            "fixednz",
            "subformat=fixed,block_state_zero=off,block_size=1M",
        ),
    ] {
        let image = dir.path().join(format!("{name}.vhdx"));
        let mut args = vec!["create", "-q", "-f", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([path_str(&image), "64M"]);
        run("qemu-img", &args);
        qemu_io("vhdx", &image, PATTERN);
        let expected = qemu_raw("vhdx", &image, dir.path());
        let disk = open(&image, true).unwrap();
        assert!(
            read_all(&disk) == expected,
            "{name}: blk reads different bytes than qemu-img convert"
        );
        assert_eq!(
            disk.image_info().unwrap().cluster_size,
            Some(if opts.contains("1M") {
                1 << 20
            } else {
                8 << 20
            })
        );
    }
}

#[test]
fn blk_written_images_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kv) in [
        ("dyn", vec![]),
        ("b1m", vec![("block_size", "1M")]),
        ("fixed", vec![("subformat", "fixed")]),
        ("nz", vec![("block_state_zero", "off")]),
    ] {
        let ours = dir.path().join(format!("{name}-blk.vhdx"));
        let theirs = dir.path().join(format!("{name}-qemu.vhdx"));
        create(&ours, 64 << 20, &kv);
        let opts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["create", "-q", "-f", "vhdx"];
        let joined = opts.join(",");
        if !joined.is_empty() {
            args.extend(["-o", joined.as_str()]);
        }
        args.extend([path_str(&theirs), "64M"]);
        run("qemu-img", &args);
        run("qemu-img", &["check", "-f", "vhdx", path_str(&ours)]);
        {
            let disk = open(&ours, false).unwrap();
            disk.write_all_at(0, &vec![0xa7; 128 << 10]).unwrap();
            disk.write_all_at(1 << 20, &vec![0x5c; 64 << 10]).unwrap();
            disk.write_all_at(3_000_000, &vec![0x11; 70000]).unwrap();
            disk.write_all_at(9 << 20, &vec![0x22; 4096]).unwrap();
            disk.write_zeroes(1 << 20, 4096, false).unwrap();
            disk.write_all_at(20 << 20, &vec![0x33; 2 << 20]).unwrap();
            disk.write_all_at(63 << 20, &vec![0x44; 1 << 20]).unwrap();
            disk.flush().unwrap();
            let report = disk.check(RepairMode::None).unwrap();
            assert_eq!(report.corruptions, 0, "{:?}", report.messages);
        }
        // QEMU's vhdx ignores discards: leave that one out of the comparison (tested on its own below).
        let pattern: Vec<&str> = PATTERN
            .iter()
            .copied()
            .filter(|c| !c.starts_with("discard"))
            .collect();
        qemu_io("vhdx", &theirs, &pattern);
        run("qemu-img", &["check", "-f", "vhdx", path_str(&ours)]);
        let (code, out) = run_status(
            "qemu-img",
            &[
                "compare",
                "-f",
                "vhdx",
                "-F",
                "vhdx",
                path_str(&ours),
                path_str(&theirs),
            ],
        );
        assert_eq!(code, 0, "{name}: {out}");
        // And blk reads what QEMU reads.
        let expected = qemu_raw("vhdx", &ours, dir.path());
        assert!(read_all(&open(&ours, true).unwrap()) == expected);
        // Discard of a whole block and of a partial range: zeros, and the image stays consistent.
        {
            let disk = open(&ours, false).unwrap();
            let bs = disk.block_size();
            disk.discard(16 << 20, bs).unwrap();
            disk.discard((63 << 20) + 4096, 8192).unwrap();
            let mut buf = vec![1u8; bs as usize];
            disk.read_exact_at(16 << 20, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
            let mut small = vec![1u8; 8192];
            disk.read_exact_at((63 << 20) + 4096, &mut small).unwrap();
            assert!(small.iter().all(|&b| b == 0));
        }
        run("qemu-img", &["check", "-f", "vhdx", path_str(&ours)]);
        let expected = qemu_raw("vhdx", &ours, dir.path());
        assert!(read_all(&open(&ours, true).unwrap()) == expected);
    }
}

#[test]
fn qemu_abort_leaves_a_clean_log_and_blk_replays_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("abort.vhdx");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            path_str(&image),
            "16M",
        ],
    );
    // qemu-io aborts after the write completed: QEMU resets its log after every update (vhdx_log_flush), so
    // the image it leaves has no log to replay (checked here: the header's log GUID is zero).
    let _ = run_status(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "abort",
            path_str(&image),
        ],
    );
    let bytes = std::fs::read(&image).unwrap();
    let log_guid = |slot: usize| bytes[slot + 48..slot + 64].to_vec();
    assert!(log_guid(64 << 10) == vec![0; 16] && log_guid(128 << 10) == vec![0; 16]);
    let disk = open(&image, true).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    disk.read_exact_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
}

#[test]
fn create_matches_qemu_layout_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.vhdx");
    create(&ours, 200 << 30, &[]);
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-f", "vhdx", path_str(&ours)],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 200u64 << 30);
    assert_eq!(info["cluster-size"], 32u64 << 20);
    let disk = open(&ours, true).unwrap();
    let mine = disk.image_info().unwrap();
    assert_eq!(mine.cluster_size, Some(32 << 20));
    assert_eq!(std::fs::metadata(&ours).unwrap().len(), 8 << 20);
    // Region table, BAT at 2 MiB, metadata at 3 MiB as qemu-img lays them out.
    let bytes = std::fs::read(&ours).unwrap();
    assert_eq!(&bytes[..8], b"vhdxfile");
    let rt = &bytes[192 << 10..];
    assert_eq!(&rt[..4], b"regi");
    assert_eq!(u64::from_le_bytes(rt[32..40].try_into().unwrap()), 2 << 20);
    assert_eq!(u64::from_le_bytes(rt[64..72].try_into().unwrap()), 3 << 20);
    let (code, _) = run_status("qemu-img", &["check", "-f", "vhdx", path_str(&ours)]);
    assert_eq!(code, 0);
}

#[test]
fn read_only_open_of_dirty_log_fails_and_writable_replays_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("dirty.vhdx");
    create(&image, 16 << 20, &[("block_size", "1M")]);
    let crashed = dir.path().join("crashed.vhdx");
    {
        let disk = open(&image, false).unwrap();
        disk.write_all_at(0, &vec![0x5a; 4096]).unwrap();
        disk.flush().unwrap();
        // A crash now: the file as it is while open (the log GUID is in the header until a clean close).
        std::fs::copy(&image, &crashed).unwrap();
    }
    let image = crashed;
    let err = open(&image, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    // qemu-img check -r all on a copy replays our log.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&image, &copy).unwrap();
    let (code, out) = run_status(
        "qemu-img",
        &["check", "-r", "all", "-f", "vhdx", path_str(&copy)],
    );
    assert_eq!(code, 0, "{out}");
    let mut buf = vec![0u8; 4096];
    open(&copy, true)
        .unwrap()
        .read_exact_at(0, &mut buf)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
    // blk replays on a writable open and check reports it as a fixed corruption.
    let disk = open(&image, false).unwrap();
    assert_eq!(disk.check(RepairMode::All).unwrap().corruptions_fixed, 1);
    disk.read_exact_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
}

#[test]
fn threads_on_cloned_handles_allocate_the_same_blocks_safely() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("threads.vhdx");
    create(&image, 32 << 20, &[("block_size", "1M")]);
    let disk = open(&image, false).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let handle = disk.try_clone().unwrap();
            scope.spawn(move || {
                // Every thread writes its own 4 KiB slot of every block: allocations of one block race.
                for block in 0..32u64 {
                    let offset = block * (1 << 20) + t * 4096;
                    handle
                        .write_all_at(offset, &vec![t as u8 + 1; 4096])
                        .unwrap();
                    let mut back = vec![0u8; 4096];
                    handle.read_exact_at(offset, &mut back).unwrap();
                    assert!(back.iter().all(|&b| b == t as u8 + 1));
                }
            });
        }
    });
    drop(disk);
    run("qemu-img", &["check", "-f", "vhdx", path_str(&image)]);
    let raw = qemu_raw("vhdx", &image, dir.path());
    for block in 0..32usize {
        for t in 0..4usize {
            let at = block * (1 << 20) + t * 4096;
            assert!(
                raw[at..at + 4096].iter().all(|&b| b == t as u8 + 1),
                "block {block} thread {t}"
            );
        }
    }
}
