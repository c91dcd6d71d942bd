//! The asynchronous path ([`VhdAsync`], [`VhdMapper`]) against the synchronous one and QEMU: reads of images
//! qemu-img and qemu-io made, writes compared with qemu-io's result of the same writes, per-request errors, and
//! the mapper's answers one by one.

mod async_support;
mod common;

use std::path::Path;

use async_support::*;
use blk_core::{
    AsyncDiskFile, AsyncIo, AsyncMapper, DiskFile, ErrorKind, IoBuf, Mapped, ReadMapping,
    RepairMode, Request, RequestOp, SyncHostBackend, WriteMapping,
};
use blk_vhd::{VhdAsync, VhdMapper};
use common::*;

/// Data qemu-io writes into the images: scattered, partial blocks, holes left (2 MiB blocks).
const QEMU_WRITES: &[&str] = &[
    "write -P 0xa7 0 128k",
    "write -P 0x5c 3M 64k",
    "write -P 0x11 5000000 70000",
    "write -P 0x22 9M 4k",
    "write -P 0x33 12M 2M",
];

/// Writes through the queue and by qemu-io: in allocated blocks (aligned, unaligned, across two blocks), into
/// holes, across a block and a hole; never overlapping, as a batch's requests complete in any order.
const WRITES: &[(u64, u8, u64)] = &[
    (4096, 0x61, 8192),
    (3_000_000, 0x62, 5000),
    ((1 << 20) + 512, 0x63, (1 << 20) + 1536),
    (6 << 20, 0x64, 65536),
    ((14 << 20) + 1000, 0x65, 7000),
    (9_961_472, 0x66, 1 << 20),
];

fn qemu_image(dir: &Path, name: &str, subformat: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let sub = format!("subformat={subformat}");
    run(
        "qemu-img",
        &["create", "-f", "vpc", "-o", &sub, path_str(&path), "16M"],
    );
    qemu_io(&path, QEMU_WRITES);
    path
}

fn qemu_io(path: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "vpc"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(path_str(path));
    run("qemu-io", &args);
}

fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            path_str(image),
            path_str(&raw),
        ],
    );
    std::fs::read(raw).unwrap()
}

#[test]
fn reads_equal_the_sync_path_and_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for subformat in ["dynamic", "fixed"] {
        let path = qemu_image(dir.path(), &format!("{subformat}.vhd"), subformat);
        let expected = qemu_raw(&path);
        let disk = open_ro(&path);
        let size = disk.logical_size();
        let arena = arena(size);
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert_eq!(queue.ring_depth(), DEPTH);
        // Cold (first touches of allocated blocks are slow and warm the bitmap states), then warm.
        for pass in 0..2 {
            let got = read_through(queue.as_mut(), size, arena);
            assert!(got == expected, "{subformat}, pass {pass}");
        }
        assert!(read_all(&disk) == expected);
    }
}

/// A qemu-made base with a blk-made child, written through the sync path in whole and partial blocks.
fn differencing(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let base = qemu_image(dir, "base.vhd", "dynamic");
    let mut model = qemu_raw(&base);
    let child = dir.join("child.vhd");
    create(
        &child,
        None,
        &[("backing_file", "base.vhd"), ("backing_fmt", "vpc")],
    );
    let disk = open_rw(&child);
    for (offset, seed, len) in [
        (2u64 << 20, 1u64, 2u64 << 20),
        (9 << 20, 2, 4096),
        (12 << 20, 3, 1000),
        (15 << 20, 4, 512),
    ] {
        let data = pattern(seed, len as usize);
        disk.write_all_at(offset, &data).unwrap();
        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
    }
    (child, model)
}

#[test]
fn differencing_reads_equal_the_sync_path() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let (child, model) = differencing(dir.path());
    let disk = open_ro(&child);
    let size = disk.logical_size();
    let arena = arena(size);
    let mut queue = disk.create_async_io(DEPTH).unwrap();
    for _ in 0..2 {
        assert!(read_through(queue.as_mut(), size, arena) == model);
    }
    assert!(read_all(&disk) == model);
}

#[test]
fn writes_equal_qemu_io_of_the_same_writes() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for subformat in ["dynamic", "fixed"] {
        let path = qemu_image(dir.path(), &format!("{subformat}.vhd"), subformat);
        let twin = dir.path().join(format!("{subformat}-twin.vhd"));
        std::fs::copy(&path, &twin).unwrap();
        let writes = WRITES;
        {
            let disk = open_rw(&path);
            let size = disk.logical_size();
            let mut queue = disk.create_async_io(DEPTH).unwrap();
            // Warm the blocks' bitmap states, so writes into allocated blocks take the fast path.
            read_through(queue.as_mut(), size, arena(size));
            write_through(queue.as_mut(), writes);
            let report = disk.check(RepairMode::None).unwrap();
            assert_eq!(report.corruptions, 0, "{subformat}: {report:?}");
        }
        let commands = qemu_commands(writes);
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        qemu_io(&twin, &commands);
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "vpc",
                "-F",
                "vpc",
                path_str(&path),
                path_str(&twin),
            ],
        );
        // qemu-img has no check for vpc; it must still open and convert the image.
        assert!(qemu_raw(&path) == qemu_raw(&twin));
    }
}

#[test]
fn differencing_writes_equal_the_sync_path() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let (child, _) = differencing(dir.path());
    let twin = dir.path().join("twin.vhd");
    std::fs::copy(&child, &twin).unwrap();
    // Into a full block (aligned: fast; unaligned: slow merge), a partial block, a hole.
    let writes: &[(u64, u8, u64)] = &[
        (3 << 20, 0x71, 8192),
        ((3 << 20) + 100_000, 0x72, 777),
        ((9 << 20) + 8192, 0x73, 4096),
        (7 << 20, 0x74, 1500),
    ];
    {
        let disk = open_rw(&child);
        let size = disk.logical_size();
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        read_through(queue.as_mut(), size, arena(size));
        write_through(queue.as_mut(), writes);
    }
    {
        let disk = open_rw(&twin);
        for &(offset, byte, len) in writes {
            disk.write_all_at(offset, &vec![byte; len as usize])
                .unwrap();
        }
    }
    let (a, b) = (open_ro(&child), open_ro(&twin));
    assert!(read_all(&a) == read_all(&b));
    assert_eq!(a.check(RepairMode::None).unwrap().corruptions, 0);
}

#[test]
fn mapper_answers_from_the_bat() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = qemu_image(dir.path(), "dynamic.vhd", "dynamic");
    let disk = open_rw(&path);
    let mapper = VhdMapper::new(&disk).unwrap();
    assert_eq!(mapper.host_files().len(), 1);
    let bat = disk.bat();
    let data = |block: usize, in_block: u64| u64::from(bat[block]) * 512 + 512 + in_block;
    let mut reads = Vec::new();
    // Holes (blocks 3 and 5 after 4) read as zeros, merged.
    assert_eq!(
        mapper.map_read(6 << 20, 1000, &mut reads).unwrap(),
        Mapped::Fast
    );
    assert_eq!(reads, [ReadMapping::Zero { len: 1000 }]);
    reads.clear();
    // An allocated block whose bitmap was never read is slow, and nothing is left pushed.
    assert_eq!(
        mapper.map_read(4 << 20, 4 << 20, &mut reads).unwrap(),
        Mapped::Slow
    );
    assert!(reads.is_empty());
    let mut scratch = vec![0u8; 16 << 20];
    disk.read_exact_at(0, &mut scratch).unwrap();
    assert_eq!(
        mapper.map_read(5 << 20, 3 << 20, &mut reads).unwrap(),
        Mapped::Fast
    );
    assert_eq!(
        reads,
        [
            ReadMapping::Host {
                file: 0,
                offset: data(2, 1 << 20),
                len: 1 << 20
            },
            ReadMapping::Zero { len: 2 << 20 },
        ]
    );
    let mut writes = Vec::new();
    assert_eq!(
        mapper.map_write(4097, 10, &mut writes).unwrap(),
        Mapped::Fast
    );
    assert_eq!(
        writes,
        [WriteMapping::Host {
            file: 0,
            offset: data(0, 4097),
            len: 10
        }]
    );
    writes.clear();
    // Into a hole: allocation, slow.
    assert_eq!(
        mapper
            .map_write((2 << 20) - 512, 1024, &mut writes)
            .unwrap(),
        Mapped::Fast
    );
    writes.clear();
    assert_eq!(
        mapper
            .map_write((6 << 20) - 512, 1024, &mut writes)
            .unwrap(),
        Mapped::Slow
    );
    assert!(writes.is_empty());
    // Out of range.
    let size = disk.logical_size();
    let err = mapper.map_read(size - 512, 1024, &mut reads).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    assert!(mapper.map_write(size, 1, &mut writes).is_err());

    // Fixed disks map to one range; a read-only disk refuses writes.
    let fixed = qemu_image(dir.path(), "fixed.vhd", "fixed");
    let fixed = open_ro(&fixed);
    let mapper = VhdMapper::new(&fixed).unwrap();
    reads.clear();
    assert_eq!(
        mapper.map_read(100, 5 << 20, &mut reads).unwrap(),
        Mapped::Fast
    );
    assert_eq!(
        reads,
        [ReadMapping::Host {
            file: 0,
            offset: 100,
            len: 5 << 20
        }]
    );
    let err = mapper.map_write(0, 512, &mut writes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
}

#[test]
fn differencing_mapper_sends_parents_and_merges_to_the_slow_path() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let (child, _) = differencing(dir.path());
    let disk = open_rw(&child);
    let mapper = VhdMapper::new(&disk).unwrap();
    let mut scratch = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut scratch).unwrap();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    // Block 1 was written whole: full bitmap.
    assert_eq!(
        mapper.map_read(2 << 20, 2 << 20, &mut reads).unwrap(),
        Mapped::Fast
    );
    assert_eq!(reads.len(), 1);
    assert_eq!(
        mapper.map_write(3 << 20, 4096, &mut writes).unwrap(),
        Mapped::Fast
    );
    assert_eq!(
        mapper.map_write((3 << 20) + 1, 4096, &mut writes).unwrap(),
        Mapped::Slow
    );
    // Unallocated: the parent's data; partial block 4: its bitmap.
    reads.clear();
    assert_eq!(mapper.map_read(0, 512, &mut reads).unwrap(), Mapped::Slow);
    assert_eq!(
        mapper.map_read(9 << 20, 512, &mut reads).unwrap(),
        Mapped::Slow
    );
    assert!(reads.is_empty());
}

#[test]
fn bad_requests_fail_alone_and_the_queue_keeps_working() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = qemu_image(dir.path(), "dynamic.vhd", "dynamic");
    let expected = qemu_raw(&path);
    let disk = open_rw(&path);
    let size = disk.logical_size();
    let arena = arena(size);
    let mut queue = VhdAsync::new(&disk, &SyncHostBackend, DEPTH).unwrap();
    read_through(&mut queue, size, arena);

    // Past the end, read and write, between good requests.
    let bufs = [arena.subslice(0, 4096).unwrap()];
    let tail = [arena.subslice(4096, 1024).unwrap()];
    let data: &'static [u8] = Box::leak(vec![1u8; 1024].into_boxed_slice());
    let wbufs = [IoBuf::from(data)];
    queue
        .submit(&[
            Request::new(
                1,
                RequestOp::Read {
                    offset: 0,
                    bufs: &bufs,
                },
            ),
            Request::new(
                2,
                RequestOp::Read {
                    offset: size - 512,
                    bufs: &tail,
                },
            ),
            Request::new(
                3,
                RequestOp::Write {
                    offset: size,
                    bufs: &wbufs,
                },
            ),
            Request::new(
                4,
                RequestOp::Read {
                    offset: 12 << 20,
                    bufs: &tail,
                },
            ),
        ])
        .unwrap();
    let mut done = reap(&mut queue, 4);
    done.sort_by_key(|c| c.user_data);
    assert_eq!(done[0].result.as_ref().unwrap(), &4096);
    assert_eq!(
        done[1].result.as_ref().unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    assert_eq!(
        done[2].result.as_ref().unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    assert_eq!(done[3].result.as_ref().unwrap(), &1024);

    // Blocks lost under the open image (the file truncated behind its back; BAT entries are all checked at
    // open, so a corrupt one never reaches a queue): the synchronous path fails, the queue's engine reads the
    // host file's end as zeros (as QEMU's file driver does); either way no stale byte, and the queue goes on.
    let block6 = u64::from(disk.bat()[6]) * 512;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(block6).unwrap();
    queue
        .submit(&[
            Request::new(
                5,
                RequestOp::Read {
                    offset: 12 << 20,
                    bufs: &bufs,
                },
            ),
            Request::new(
                6,
                RequestOp::Read {
                    offset: 0,
                    bufs: &tail,
                },
            ),
        ])
        .unwrap();
    let mut done = reap(&mut queue, 2);
    done.sort_by_key(|c| c.user_data);
    if done[0].result.is_ok() {
        let mut lost = [1u8; 4096];
        bufs[0].as_io_buf().copy_to(&mut lost);
        assert_eq!(lost, [0u8; 4096]);
    }
    assert!(disk.read_exact_at(12 << 20, &mut [0u8; 4096]).is_err());
    assert_eq!(done[1].result.as_ref().unwrap(), &1024);
    let mut back = [0u8; 1024];
    tail[0].as_io_buf().copy_to(&mut back);
    assert!(back[..] == expected[..1024]);
}

#[test]
fn clones_keep_the_backend() {
    let dir = tempdir();
    let path = dir.path().join("d.vhd");
    create(&path, Some(4 << 20), &[]);
    let mut disk = open_rw(&path);
    disk.set_io_backend(std::sync::Arc::new(SyncHostBackend));
    let clone = disk.try_clone_async().unwrap();
    assert_eq!(disk.io_backend().name(), "sync");
    let mut queue = clone.create_async_io(4).unwrap();
    let data: &'static [u8] = Box::leak(vec![9u8; 512].into_boxed_slice());
    let bufs = [IoBuf::from(data)];
    queue
        .submit(&[Request::new(
            7,
            RequestOp::Write {
                offset: 0,
                bufs: &bufs,
            },
        )])
        .unwrap();
    assert_eq!(reap(queue.as_mut(), 1)[0].result.as_ref().unwrap(), &512);
    let mut back = [0u8; 512];
    disk.read_exact_at(0, &mut back).unwrap();
    assert_eq!(back, [9u8; 512]);
}

/// The mapper's answers, executed directly, equal qemu's reads and qemu-io's writes, and the fast path is
/// taken where it should be.
#[test]
fn mapper_answers_executed_equal_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for subformat in ["dynamic", "fixed"] {
        let path = qemu_image(dir.path(), &format!("{subformat}.vhd"), subformat);
        let twin = dir.path().join(format!("{subformat}-twin.vhd"));
        std::fs::copy(&path, &twin).unwrap();
        let expected = qemu_raw(&path);
        let writes = WRITES;
        {
            let disk = open_rw(&path);
            let mapper = VhdMapper::new(&disk).unwrap();
            let size = disk.logical_size();
            let mut fast = 0;
            for pass in 0..2 {
                let mut got = Vec::new();
                let mut offset = 0;
                for &len in SIZES.iter().cycle() {
                    if offset >= size {
                        break;
                    }
                    let len = len.min(size - offset);
                    let (bytes, mapped) = read_via_mapper(&mapper, offset, len);
                    fast += usize::from(mapped == Mapped::Fast);
                    got.extend_from_slice(&bytes);
                    offset += len;
                }
                assert!(got == expected, "{subformat}, pass {pass}");
            }
            assert!(fast > 0);
            let mut fast_writes = 0;
            for &(offset, byte, len) in writes {
                let mapped = write_via_mapper(&mapper, offset, &vec![byte; len as usize]);
                fast_writes += usize::from(mapped == Mapped::Fast);
            }
            // The first three land in allocated blocks.
            assert!(fast_writes >= 3, "{subformat}: {fast_writes}");
            mapper.disk().flush().unwrap();
        }
        let commands = qemu_commands(writes);
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        qemu_io(&twin, &commands);
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "vpc",
                "-F",
                "vpc",
                path_str(&path),
                path_str(&twin),
            ],
        );
    }
}

#[test]
fn differencing_mapper_answers_executed_equal_the_model() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let (child, model) = differencing(dir.path());
    let disk = open_ro(&child);
    let mapper = VhdMapper::new(&disk).unwrap();
    let size = disk.logical_size();
    for _ in 0..2 {
        let mut offset = 0;
        for &len in SIZES.iter().cycle() {
            if offset >= size {
                break;
            }
            let len = len.min(size - offset);
            let (bytes, _) = read_via_mapper(&mapper, offset, len);
            assert!(
                bytes[..] == model[offset as usize..(offset + len) as usize],
                "at {offset}"
            );
            offset += len;
        }
    }
}
