//! The image file grows ahead of allocation (holes, so allocating `O_DIRECT` writes land below the end of
//! file) and is cut back to its used end on close: lengths, `qemu-img check` and contents against qemu-io
//! twins doing the same writes; a crash's longer file; read-only opens.

mod async_support;
mod support;

use std::path::Path;

use async_support::*;
use blk_core::ImageAdmin;
use blk_core::{DiskFile, IoBuf, SyncHostBackend};
use support::*;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// `qemu-img check`'s verdict (asserted clean) and image end offset.
fn check_end_offset(image: &Path) -> u64 {
    assert_qemu_check_clean(image);
    let out = qemu_img(&["check", "--output=json", path_str(image)]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["image-end-offset"].as_u64().unwrap()
}

/// Asserts the state after close: clean, cut back to the used end, and equal to the qemu-io twin (guest
/// contents, and the length when `same_layout`: with 512-byte clusters blk places refcount blocks
/// differently, growing ahead or not).
#[track_caller]
fn assert_closed_like_twin(ours: &Path, theirs: &Path, same_layout: bool) {
    let end = check_end_offset(ours);
    let what = ours.display();
    assert_eq!(file_len(ours), end, "{what}: the file ends at the used end");
    if same_layout {
        assert_eq!(
            file_len(ours),
            file_len(theirs),
            "{what}: same length as qemu-io's"
        );
    }
    qemu_img(&["compare", "-q", path_str(ours), path_str(theirs)]);
}

/// Sequential 64 KiB writes from `start`, `count` of them, each with its own pattern.
fn sequential_writes(start: u64, count: u64) -> Vec<Op> {
    (0..count)
        .map(|i| Op::Write {
            offset: start + i * 65536,
            data: vec![(i % 250 + 1) as u8; 65536],
            fua: false,
        })
        .collect()
}

fn qemu_commands(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|op| match op {
            Op::Write { offset, data, .. } => {
                format!("write -P {} {offset} {}", data[0], data.len())
            }
            _ => unreachable!("only writes here"),
        })
        .collect()
}

/// Makes `ours` and `theirs` (same options and size), applies `ops` to `theirs` with qemu-io.
fn twins(
    dir: &Path,
    name: &str,
    opts: &str,
    size: &str,
    ops: &[Op],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ours = dir.join(format!("{name}-ours.qcow2"));
    let theirs = dir.join(format!("{name}-theirs.qcow2"));
    qemu_create(&ours, opts, size);
    qemu_create(&theirs, opts, size);
    let cmds = qemu_commands(ops);
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io("qcow2", &theirs, &cmds);
    (ours, theirs)
}

fn write_sync(disk: &support::Disk, ops: &[Op]) {
    for op in ops {
        if let Op::Write { offset, data, .. } = op {
            disk.write_at(*offset, &[IoBuf::from(&data[..])]).unwrap();
        }
    }
}

#[test]
fn sync_writes_grow_ahead_and_close_cuts_back() {
    let _g = serial();
    let dir = tempdir();
    for (name, opts) in [
        ("c64k", "cluster_size=64k"),
        ("c4k", "cluster_size=4k"),
        ("c512", "cluster_size=512"),
    ] {
        // 12 MiB of fresh clusters, then overwrites and a few scattered ones.
        let mut ops = sequential_writes(0, 192);
        ops.extend(sequential_writes(40 << 20, 16));
        ops.extend(sequential_writes(64 << 10, 4));
        let (ours, theirs) = twins(dir.path(), name, opts, "64M", &ops);
        let disk = support::open_disk(&ours, &rw()).unwrap();
        write_sync(&disk, &ops);
        disk.flush().unwrap();
        assert!(
            file_len(&ours) > file_len(&theirs),
            "{name}: while open the file is grown ahead ({} <= {})",
            file_len(&ours),
            file_len(&theirs)
        );
        drop(disk);
        assert_closed_like_twin(&ours, &theirs, name != "c512");
    }
}

#[test]
fn async_writes_grow_ahead_and_close_cuts_back() {
    let _g = serial();
    let dir = tempdir();
    for (name, opts) in [("c64k", "cluster_size=64k"), ("c4k", "cluster_size=4k")] {
        let ops = sequential_writes(0, 256);
        let (ours, theirs) = twins(dir.path(), name, opts, "64M", &ops);
        let disk = support::open_disk(&ours, &rw()).unwrap();
        {
            let arena = Arena::new(32 * 65536);
            let mut queue = async_support::queue_of(&disk, &SyncHostBackend, 32);
            for batch in ops.chunks(32) {
                for (op, (_, r)) in batch.iter().zip(run_queue(&mut queue, &arena, batch)) {
                    r.unwrap_or_else(|e| panic!("{name}: {op:?}: {e}"));
                }
            }
        }
        assert!(
            file_len(&ours) > file_len(&theirs),
            "{name}: while open the file is grown ahead"
        );
        drop(disk);
        assert_closed_like_twin(&ours, &theirs, true);
    }
}

/// A crash while the file was grown ahead leaves it longer than its used end: QEMU accepts that, and so must
/// blk (open, allocate from the used end, stay clean, cut the tail at close), also where the tail lies past
/// the last refcount block (512-byte clusters: one block describes 128 KiB).
#[test]
fn a_crash_tail_is_used_and_cut_back() {
    let _g = serial();
    let dir = tempdir();
    for (name, opts) in [("c64k", "cluster_size=64k"), ("c512", "cluster_size=512")] {
        let first = sequential_writes(0, 8);
        let then = sequential_writes(1 << 20, 24);
        let (ours, theirs) = twins(dir.path(), name, opts, "64M", &first);
        let cmds = qemu_commands(&first);
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io("qcow2", &ours, &cmds);
        // The crash: 64 MiB more file, a hole.
        let used = file_len(&ours);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ours)
            .unwrap()
            .set_len(used + (64 << 20))
            .unwrap();
        assert_eq!(
            check_end_offset(&ours),
            used,
            "{name}: qemu-img check accepts the tail"
        );
        let cmds = qemu_commands(&then);
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io("qcow2", &theirs, &cmds);

        let disk = support::open_disk(&ours, &rw()).unwrap();
        write_sync(&disk, &then);
        drop(disk);
        assert_closed_like_twin(&ours, &theirs, name != "c512");
    }
}

#[test]
fn read_only_opens_never_change_the_length() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("ro.qcow2");
    qemu_create(&img, "cluster_size=64k", "16M");
    qemu_io("qcow2", &img, &["write -P 7 0 1M"]);
    let used = file_len(&img);
    for tail in [0u64, 64 << 20] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(used + tail)
            .unwrap();
        let disk = support::open_disk(&img, &ro()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        disk.read_exact_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        drop(disk);
        assert_eq!(
            file_len(&img),
            used + tail,
            "a read-only open keeps the length"
        );
    }
}

/// With an external data file only the image file (L2 tables) is allocated: it is cut back like QEMU's, and
/// the data file keeps its length.
#[test]
fn external_data_file_keeps_its_length() {
    let _g = serial();
    let dir = tempdir();
    let ops = sequential_writes(0, 64);
    let cmds = qemu_commands(&ops);
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let mut made = Vec::new();
    for who in ["ours", "theirs"] {
        let img = dir.path().join(format!("df-{who}.qcow2"));
        let data = dir.path().join(format!("df-{who}.raw"));
        let opts = format!("cluster_size=64k,data_file={}", path_str(&data));
        qemu_create(&img, &opts, "64M");
        made.push((img, data));
    }
    let [(ours, our_data), (theirs, their_data)] = &made[..] else {
        unreachable!()
    };
    qemu_io("qcow2", theirs, &cmds);
    let data_len = file_len(our_data);
    let disk = support::open_disk(ours, &rw_data()).unwrap();
    write_sync(&disk, &ops);
    drop(disk);
    assert_eq!(file_len(our_data), data_len, "the data file never grows");
    assert_eq!(file_len(our_data), file_len(their_data));
    assert_eq!(file_len(ours), check_end_offset(ours));
    assert_eq!(file_len(ours), file_len(theirs));
    assert_same(
        &qemu_contents(ours, "qcow2"),
        &qemu_contents(theirs, "qcow2"),
        "guest contents",
    );
}

/// Compressed clusters packed into the last cluster of the file: cut back to their end rounded up to 512
/// bytes (where blk's compressed writes leave the file; qemu-io does not round, qemu-img convert does), not
/// to the end of their cluster; in a second open plain clusters follow, and the file ends on a cluster again.
#[test]
fn compressed_writes_are_cut_back_like_qemu() {
    let _g = serial();
    let dir = tempdir();
    let plain = sequential_writes(16 << 20, 16);
    let compressed: Vec<(u64, u8)> = (0..40).map(|c| (c * 65536, (c % 200 + 1) as u8)).collect();
    let ours = dir.path().join("ours.qcow2");
    let theirs = dir.path().join("theirs.qcow2");
    // The L2 table and some data first, so the compressed cluster is the last one.
    let (ours_first, theirs_first) = twins(dir.path(), "first", "cluster_size=64k", "64M", &plain);
    std::fs::rename(ours_first, &ours).unwrap();
    std::fs::rename(theirs_first, &theirs).unwrap();
    let disk = support::open_disk(&ours, &rw()).unwrap();
    write_sync(&disk, &plain);
    drop(disk);
    assert_closed_like_twin(&ours, &theirs, true);

    let cmds: Vec<String> = compressed
        .iter()
        .map(|(o, p)| format!("write -c -P {p} {o} 65536"))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io("qcow2", &theirs, &cmds);
    let disk = support::open_disk(&ours, &rw()).unwrap();
    for &(o, p) in &compressed {
        disk.write_compressed(o, &vec![p; 65536]).unwrap();
    }
    drop(disk);
    let end = check_end_offset(&ours);
    assert_eq!(file_len(&ours), file_len(&theirs).div_ceil(512) * 512);
    assert!(file_len(&ours) < end && end - file_len(&ours) < 65536);
    qemu_img(&["compare", "-q", path_str(&ours), path_str(&theirs)]);

    let more = sequential_writes(32 << 20, 4);
    let cmds = qemu_commands(&more);
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io("qcow2", &theirs, &cmds);
    let disk = support::open_disk(&ours, &rw()).unwrap();
    write_sync(&disk, &more);
    drop(disk);
    assert_closed_like_twin(&ours, &theirs, true);
}
