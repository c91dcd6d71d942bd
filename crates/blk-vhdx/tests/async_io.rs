//! The asynchronous path (queues of a [`MappedDisk`] of [`Vhdx`], and its mapper's answers) against the synchronous
//! one and QEMU: reads of images qemu-img and qemu-io made (dynamic, fixed, 4 KiB sectors, differencing), writes
//! compared with qemu-io's result of the same writes, per-request errors (corrupt BAT entries, past the end), and
//! the mapper's answers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blk_core::{
    AsyncDiskFile, AsyncIo, DiskFile, ErrorKind, ImageAdmin, IoBuf, MappedDisk, MappedQueue,
    Mapper, ReadMapping, SyncHostBackend,
};
use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};
use common::*;

const SIZE: u64 = 24 << 20;

/// Data written into the images (1 MiB blocks): scattered, partial blocks, holes left, zeros.
const BASE_WRITES: &[WriteStep] = &[
    WriteStep::Pattern {
        offset: 0,
        len: 128 << 10,
        byte: 0xa7,
    },
    WriteStep::Pattern {
        offset: 1 << 20,
        len: 64 << 10,
        byte: 0x5c,
    },
    WriteStep::Zero {
        offset: 1 << 20,
        len: 4096,
    },
    WriteStep::Pattern {
        offset: 3_000_000,
        len: 70000,
        byte: 0x11,
    },
    WriteStep::Pattern {
        offset: 9 << 20,
        len: 4096,
        byte: 0x22,
    },
    WriteStep::Pattern {
        offset: 12 << 20,
        len: 2 << 20,
        byte: 0x33,
    },
    WriteStep::Pattern {
        offset: 23 << 20,
        len: 1 << 20,
        byte: 0x44,
    },
];

/// What a disk holds after [`BASE_WRITES`].
fn base_model() -> Vec<u8> {
    model(SIZE, BASE_WRITES)
}

/// Writes done through the queue and by qemu-io: in present blocks (aligned, unaligned, across two), into
/// holes, across a present block and a hole. They do not overlap: a batch's requests complete in any order.
const WRITES: &[(u64, u8, u64)] = &[
    (4096, 0x61, 8192),
    (3_000_000, 0x62, 5000),
    ((1 << 20) + 512, 0x63, (1 << 20) + 1536),
    (6 << 20, 0x64, 65536),
    ((12 << 20) + 1000, 0x65, (1 << 20) + 7000),
    (9_961_472, 0x66, 1 << 20),
    ((23 << 20) + 4096, 0x67, 4096),
];

/// An image in `dir`: `kind` is `dynamic`, `fixed` (both qemu-img's, [`BASE_WRITES`] written by qemu-io) or
/// `4k` (4 KiB logical sectors, which QEMU does not open: made and written by blk's synchronous path).
fn image(dir: &Path, kind: &str) -> PathBuf {
    let path = dir.join(format!("{kind}.vhdx"));
    if kind == "4k" {
        let kv = [("block_size".to_string(), "1M".to_string())];
        let mut options = VhdxCreateOptions::from_key_values(Some(SIZE), &kv).unwrap();
        options.logical_sector_size = 4096;
        Vhdx::create(&path, &options, &VhdxOpener).unwrap();
        let disk = open(&path, false).unwrap();
        for step in BASE_WRITES {
            step.apply(&disk);
        }
        return path;
    }
    // A fixed image without block_state_zero has every block present (with it, qemu-img marks unwritten
    // blocks ZERO, which the dynamic image covers).
    let o = match kind {
        "fixed" => "subformat=fixed,block_size=1M,block_state_zero=off".to_string(),
        _ => format!("subformat={kind},block_size=1M"),
    };
    run(
        "qemu-img",
        &["create", "-f", "vhdx", "-o", &o, path_str(&path), "24M"],
    );
    qemu_io("vhdx", &path, &qemu_io_commands(BASE_WRITES));
    path
}

/// The image's content as QEMU reads it (for `4k`, which QEMU does not open, the model).
fn expected(path: &Path, kind: &str, dir: &Path) -> Vec<u8> {
    if kind == "4k" {
        return base_model();
    }
    let raw = qemu_raw("vhdx", path, dir);
    assert!(raw == base_model());
    raw
}

/// After the same writes through the queue on `path` and elsewhere on `twin`: QEMU finds both equal and
/// `path` consistent (for `4k`, blk's own check and reads).
fn assert_same(kind: &str, path: &Path, twin: &Path) {
    if kind == "4k" {
        let (a, b) = (open(path, true).unwrap(), open(twin, true).unwrap());
        assert!(read_all(&a) == read_all(&b));
        let report = a.check(blk_core::RepairMode::None).unwrap();
        assert_eq!(report.corruptions, 0, "{report:?}");
        return;
    }
    qemu_check(path);
    qemu_compare("vhdx", path, "vhdx", twin);
}

/// Applies [`WRITES`] to `path` through blk's synchronous path, or qemu-io when QEMU opens the image.
fn twin_writes(kind: &str, twin: &Path) {
    if kind == "4k" {
        let disk = open(twin, false).unwrap();
        for &(offset, byte, len) in WRITES {
            disk.write_all_at(offset, &vec![byte; len as usize])
                .unwrap();
        }
        return;
    }
    qemu_io("vhdx", twin, &qemu_commands(WRITES));
}

fn tempdir() -> tempfile::TempDir {
    target_tempdir!("blk-vhdx-async")
}

fn qemu_check(path: &Path) {
    run("qemu-img", &["check", "-f", "vhdx", path_str(path)]);
}

#[test]
fn reads_equal_the_sync_path_and_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let arena = arena(SIZE);
    for kind in ["dynamic", "fixed", "4k"] {
        let path = image(dir.path(), kind);
        let expected = expected(&path, kind, dir.path());
        let disk = open(&path, true).unwrap();
        assert_eq!(disk.logical_size(), SIZE);
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert_eq!(queue.ring_depth(), DEPTH);
        assert!(
            read_through(queue.as_mut(), SIZE, arena) == expected,
            "{kind}"
        );
        assert!(read_all(&disk) == expected, "{kind}");
        // The mapper's answers, executed directly, read the same; present blocks and holes are fast.
        let mapper: &Vhdx = &disk;
        let mut fast = 0;
        for (offset, len) in pieces(SIZE) {
            let (bytes, mapped) = read_via_mapper(mapper, offset, len);
            fast += usize::from(mapped == Mapped::Fast);
            let want = &expected[offset as usize..(offset + len) as usize];
            assert!(bytes[..] == *want, "{kind} at {offset}");
        }
        assert_eq!(fast, pieces(SIZE).len(), "{kind}");
    }
}

/// A qemu-made base with a blk-made child, written through the sync path; and the child's expected content.
fn differencing(dir: &Path) -> (PathBuf, Vec<u8>) {
    let base = image(dir, "dynamic");
    let mut model = expected(&base, "dynamic", dir);
    let child = dir.join("child.vhdx");
    let kv = [
        ("backing_file".to_string(), "dynamic.vhdx".to_string()),
        ("block_size".to_string(), "1M".to_string()),
    ];
    let options = VhdxCreateOptions::from_key_values(None, &kv).unwrap();
    Vhdx::create(&child, &options, &VhdxOpener).unwrap();
    let disk = open(&child, false).unwrap();
    for (offset, byte, len) in [
        (2u64 << 20, 0x81u8, 1u64 << 20),
        (9 << 20, 0x82, 4096),
        ((12 << 20) + 1000, 0x83, 1000),
        (15 << 20, 0x84, 512),
    ] {
        disk.write_all_at(offset, &vec![byte; len as usize])
            .unwrap();
        model[offset as usize..(offset + len) as usize].fill(byte);
    }
    (child, model)
}

#[test]
fn differencing_reads_and_writes_equal_the_sync_path() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let (child, model) = differencing(dir.path());
    {
        let disk = open(&child, true).unwrap();
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert!(read_through(queue.as_mut(), SIZE, arena(SIZE)) == model);
        let mapper: &Vhdx = &disk;
        // Block 2 is present in the child; block 0 only in the parent.
        assert_eq!(read_via_mapper(mapper, 2 << 20, 4096).1, Mapped::Fast);
        assert_eq!(read_via_mapper(mapper, 0, 4096).1, Mapped::Slow);
        for (offset, len) in pieces(SIZE) {
            let (bytes, _) = read_via_mapper(mapper, offset, len);
            assert!(bytes[..] == model[offset as usize..(offset + len) as usize]);
        }
    }
    let twin = dir.path().join("twin.vhdx");
    std::fs::copy(&child, &twin).unwrap();
    {
        let disk = open(&child, false).unwrap();
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        write_through(queue.as_mut(), &WRITES[..1]);
        write_through(queue.as_mut(), &WRITES[1..]);
    }
    {
        let disk = open(&twin, false).unwrap();
        for &(offset, byte, len) in WRITES {
            disk.write_all_at(offset, &vec![byte; len as usize])
                .unwrap();
        }
    }
    let (a, b) = (open(&child, true).unwrap(), open(&twin, true).unwrap());
    assert!(read_all(&a) == read_all(&b));
    let report = a.check(blk_core::RepairMode::None).unwrap();
    assert_eq!(report.corruptions, 0, "{report:?}");
}

#[test]
fn writes_equal_qemu_io_of_the_same_writes() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for kind in ["dynamic", "fixed", "4k"] {
        let path = image(dir.path(), kind);
        let twin = dir.path().join(format!("{kind}-twin.vhdx"));
        std::fs::copy(&path, &twin).unwrap();
        {
            let disk = open(&path, false).unwrap();
            let mut queue = disk.create_async_io(DEPTH).unwrap();
            // The session's first write changes the data write GUID (slow); the rest may be fast.
            write_through(queue.as_mut(), &WRITES[..1]);
            write_through(queue.as_mut(), &WRITES[1..]);
        }
        twin_writes(kind, &twin);
        assert_same(kind, &path, &twin);
    }
}

#[test]
fn mapper_answers_executed_equal_qemu_io() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for kind in ["dynamic", "fixed", "4k"] {
        let path = image(dir.path(), kind);
        let twin = dir.path().join(format!("{kind}-twin.vhdx"));
        std::fs::copy(&path, &twin).unwrap();
        {
            let disk = open(&path, false).unwrap();
            let mapper: &Vhdx = &disk;
            let mut answers = Vec::new();
            for &(offset, byte, len) in WRITES {
                answers.push(write_via_mapper(mapper, offset, &vec![byte; len as usize]));
            }
            // Every write is fast: the first one's data write GUID is updated while mapping, new blocks are
            // allocated while mapping, present blocks are written in place.
            let fast: Vec<bool> = answers.iter().map(|&m| m == Mapped::Fast).collect();
            assert_eq!(fast, vec![true; WRITES.len()], "{kind}");
            disk.flush().unwrap();
        }
        twin_writes(kind, &twin);
        assert_same(kind, &path, &twin);
    }
}

#[test]
fn mapper_merges_and_refuses() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = image(dir.path(), "fixed");
    let disk = open(&path, false).unwrap();
    let mapper: &Vhdx = &disk;
    assert_eq!(mapper.host_files().len(), 1);
    let mut reads = Vec::new();
    // A fixed image's blocks lie back to back: one host range for many blocks.
    assert_eq!(read_via_mapper(mapper, 100, 5 << 20).1, Mapped::Fast);
    mapper.map_read(100, 5 << 20, &mut reads).unwrap();
    assert_eq!(reads.len(), 1, "{reads:?}");
    let err = mapper.map_read(SIZE - 512, 1024, &mut reads).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    let mut writes = Vec::new();
    assert!(mapper.map_write(SIZE, 1, &mut writes).is_err());
    drop(disk);

    let dynamic = image(dir.path(), "dynamic");
    let disk = open(&dynamic, true).unwrap();
    let mapper: &Vhdx = &disk;
    reads.clear();
    // Holes (ZERO blocks as qemu-img makes them) merge into one zero piece.
    assert_eq!(read_via_mapper(mapper, 4 << 20, 4 << 20).1, Mapped::Fast);
    mapper.map_read(4 << 20, 4 << 20, &mut reads).unwrap();
    assert_eq!(reads, [ReadMapping::Zero { len: 4 << 20 }]);
    let err = mapper.map_write(0, 512, &mut writes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
}

/// The file offset of the BAT, from the region table (MS-VHDX 2.2.3) at 192 KiB.
fn bat_offset(path: &Path) -> u64 {
    const BAT_GUID: [u8; 16] = [
        0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A,
        0x08,
    ];
    let bytes = std::fs::read(path).unwrap();
    let table = &bytes[192 << 10..256 << 10];
    let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| &table[16 + 32 * i..48 + 32 * i])
        .find(|e| e[..16] == BAT_GUID)
        .map(|e| u64::from_le_bytes(e[16..24].try_into().unwrap()))
        .unwrap()
}

#[test]
fn bad_requests_fail_alone_and_the_queue_keeps_working() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = image(dir.path(), "dynamic");
    let expected = expected(&path, "dynamic", dir.path());
    // Block 2's entry gets the reserved state 4.
    let bat = bat_offset(&path);
    let mut file = std::fs::read(&path).unwrap();
    file[bat as usize + 16..bat as usize + 24].copy_from_slice(&4u64.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    assert_eq!(
        open(&path, true).unwrap_err().kind(),
        ErrorKind::CorruptImage
    );
    let mut options = VhdxOpenOptions::new(ro(), Arc::new(VhdxOpener));
    options.check_mode = true;
    let disk = MappedDisk::new(Vhdx::open(&path, &options).unwrap());

    // The mapper fails exactly as the synchronous reader does.
    let mapper: &Vhdx = &disk;
    let sync_err = disk.read_exact_at(2 << 20, &mut [0u8; 512]).unwrap_err();
    let async_err = mapper.map_read(2 << 20, 512, &mut Vec::new()).unwrap_err();
    assert_eq!(async_err.kind(), ErrorKind::CorruptImage);
    assert_eq!(async_err.to_string(), sync_err.to_string());

    let arena = arena(SIZE);
    let mut queue = MappedQueue::new(disk.image().clone(), &SyncHostBackend, DEPTH).unwrap();
    let good = [arena.subslice(0, 4096).unwrap()];
    let bad = [arena.subslice(2 << 20, 4096).unwrap()];
    let tail = [arena.subslice(4096, 1024).unwrap()];
    let data: &'static [u8] = Box::leak(vec![1u8; 512].into_boxed_slice());
    let wbufs = [IoBuf::from(data)];
    queue
        .submit(&[
            read_request(1, 0, &good),
            read_request(2, 2 << 20, &bad),
            read_request(3, SIZE - 512, &tail),
            write_request(4, 0, &wbufs),
            read_request(5, 12 << 20, &tail),
        ])
        .unwrap();
    let mut done = reap(&mut queue, 5);
    done.sort_by_key(|c| c.user_data);
    assert_eq!(done[0].result.as_ref().unwrap(), &4096);
    assert_eq!(
        done[1].result.as_ref().unwrap_err().kind(),
        ErrorKind::CorruptImage
    );
    assert_eq!(
        done[2].result.as_ref().unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    assert_eq!(
        done[3].result.as_ref().unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(done[4].result.as_ref().unwrap(), &1024);
    let mut back = vec![0u8; 4096];
    good[0].as_io_buf().copy_to(&mut back);
    assert!(back[..] == expected[..4096]);
    tail[0].as_io_buf().copy_to(&mut back[..1024]);
    assert!(back[..1024] == expected[12 << 20..(12 << 20) + 1024]);
}

#[test]
fn clones_keep_the_backend() {
    let dir = tempdir();
    let path = dir.path().join("d.vhdx");
    create(&path, 8 << 20, &[]);
    let mut disk = open(&path, false).unwrap();
    disk.set_io_backend(Arc::new(SyncHostBackend));
    assert_eq!(disk.io_backend().name(), "sync");
    let clone = disk.try_clone_async().unwrap();
    assert_queue_write_reads_back(clone.as_ref(), &disk);
}
