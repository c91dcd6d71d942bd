//! The asynchronous path (`MappedQueue`s on the `Vhd` mapper) against the synchronous one and QEMU: reads of
//! images qemu-img and qemu-io made, writes compared with qemu-io's result of the same writes, per-request
//! errors, and the mapper's answers one by one.

mod common;

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    AsyncDiskFile, AsyncIo, DiskFile, ErrorKind, ImageAdmin, IoBuf, MappedQueue, Mapper,
    ReadMapping, RepairMode, SyncHostBackend, WriteMapping,
};
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
    qemu_io("vpc", &path, QEMU_WRITES);
    path
}

#[test]
fn reads_equal_the_sync_path_and_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    for subformat in ["dynamic", "fixed"] {
        let path = qemu_image(dir.path(), &format!("{subformat}.vhd"), subformat);
        let expected = qemu_raw("vpc", &path, dir.path());
        let disk = open_ro(&path);
        let size = disk.logical_size();
        let arena = arena(size);
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert_eq!(queue.ring_depth(), DEPTH);
        // Cold (first touches of allocated blocks read their bitmaps while mapping), then warm.
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
    let mut model = qemu_raw("vpc", &base, dir);
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
            // Warm the blocks' bitmap states (the mapping would read them on first touch anyway).
            read_through(queue.as_mut(), size, arena(size));
            write_through(queue.as_mut(), writes);
            let report = disk.check(RepairMode::None).unwrap();
            assert_eq!(report.corruptions, 0, "{subformat}: {report:?}");
        }
        qemu_io("vpc", &twin, &qemu_commands(writes));
        qemu_compare("vpc", &path, "vpc", &twin);
        // qemu-img has no check for vpc; it must still open and convert the image.
        assert!(qemu_raw("vpc", &path, dir.path()) == qemu_raw("vpc", &twin, dir.path()));
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
    let mapper: &dyn Mapper = &*disk;
    assert_eq!(mapper.host_files().len(), 1);
    let bat = disk.bat();
    let data = |block: usize, in_block: u64| u64::from(bat[block]) * 512 + 512 + in_block;
    let mut reads = Vec::new();
    // Holes (blocks 3 and 5 after 4) read as zeros, merged.
    mapper.map_read(6 << 20, 1000, &mut reads).unwrap();
    assert_eq!(reads, [ReadMapping::Zero { len: 1000 }]);
    reads.clear();
    // An allocated block whose bitmap was never read: the mapping reads it (every bit set) and answers the
    // host range at once.
    mapper.map_read(4 << 20, 4 << 20, &mut reads).unwrap();
    assert_eq!(
        reads,
        [
            ReadMapping::Host {
                file: 0,
                offset: data(2, 0),
                len: 2 << 20
            },
            ReadMapping::Zero { len: 2 << 20 },
        ]
    );
    reads.clear();
    let mut scratch = vec![0u8; 16 << 20];
    disk.read_exact_at(0, &mut scratch).unwrap();
    mapper.map_read(5 << 20, 3 << 20, &mut reads).unwrap();
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
    mapper.map_write(4097, 10, &mut writes).unwrap();
    assert_eq!(
        writes,
        [WriteMapping::Host {
            file: 0,
            offset: data(0, 4097),
            len: 10
        }]
    );
    writes.clear();
    // Across two allocated blocks: in place.
    mapper
        .map_write((2 << 20) - 512, 1024, &mut writes)
        .unwrap();
    assert!(
        writes
            .iter()
            .all(|w| matches!(w, WriteMapping::Host { .. })),
        "{writes:?}"
    );
    writes.clear();
    // Into a hole: a fresh block reserved at the end of the file (the allocated block's part stays in place).
    let file_len = std::fs::metadata(&path).unwrap().len();
    mapper
        .map_write((6 << 20) - 512, 1024, &mut writes)
        .unwrap();
    let [first, WriteMapping::Allocated {
        file: 0,
        offset,
        len: 512,
        link,
    }] = writes[..]
    else {
        panic!("{writes:?}");
    };
    assert_eq!(
        first,
        WriteMapping::Host {
            file: 0,
            offset: data(2, (2 << 20) - 512),
            len: 512
        }
    );
    // QEMU's footer sits right after the last block: the new block's bitmap goes there or later, so that its
    // data starts on a 4 KiB boundary.
    assert_eq!(
        offset,
        file_len.next_multiple_of(4096),
        "data after the bitmap, aligned"
    );
    // The file grew ahead (a hole, the footer at its end) so that the block lies inside it.
    let grown = std::fs::metadata(&path).unwrap().len();
    assert!(grown >= offset + (2 << 20) + 512, "{grown}");
    // Given back (the write never ran): the block stays unallocated, the image clean.
    let never = blk_core::Error::new(blk_core::ErrorKind::Io, "not run");
    assert!(mapper.finish_allocation(link, Err(never)).is_err());
    assert_eq!(disk.bat()[3], 0xffff_ffff);
    let report = disk.check(RepairMode::None).unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");
    writes.clear();
    // Out of range.
    let size = disk.logical_size();
    let err = mapper.map_read(size - 512, 1024, &mut reads).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    assert!(mapper.map_write(size, 1, &mut writes).is_err());
    // Closed: the grown part is cut off again; reopened, the image is clean.
    drop(disk);
    assert!(std::fs::metadata(&path).unwrap().len() < file_len + 4096);
    let report = open_ro(&path).check(RepairMode::None).unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");

    // Fixed disks map to one range; a read-only disk refuses writes.
    let fixed = qemu_image(dir.path(), "fixed.vhd", "fixed");
    let fixed = open_ro(&fixed);
    let mapper: &dyn Mapper = &*fixed;
    reads.clear();
    mapper.map_read(100, 5 << 20, &mut reads).unwrap();
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
    let mapper: &dyn Mapper = &*disk;
    let bat = disk.bat();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    // Block 1 was written whole: full bitmap.
    mapper.map_read(2 << 20, 2 << 20, &mut reads).unwrap();
    assert_eq!(reads.len(), 1);
    assert!(matches!(reads[0], ReadMapping::Host { .. }));
    mapper.map_write(3 << 20, 4096, &mut writes).unwrap();
    assert!(matches!(writes[..], [WriteMapping::Host { .. }]));
    writes.clear();
    // Unaligned: merged with the parent's data, slow.
    mapper.map_write((3 << 20) + 1, 4096, &mut writes).unwrap();
    assert_eq!(writes, [WriteMapping::Slow { len: 4096 }]);
    // Unallocated: the parent's data; partial block 4: its bitmap, per run of sectors.
    reads.clear();
    mapper.map_read(0, 512, &mut reads).unwrap();
    assert_eq!(
        reads,
        [ReadMapping::Disk {
            disk: 0,
            offset: 0,
            len: 512
        }]
    );
    reads.clear();
    mapper.map_read((9 << 20) - 512, 1024, &mut reads).unwrap();
    assert_eq!(
        reads,
        [
            ReadMapping::Disk {
                disk: 0,
                offset: (9 << 20) - 512,
                len: 512
            },
            ReadMapping::Host {
                file: 0,
                offset: u64::from(bat[4]) * 512 + 512 + (1 << 20),
                len: 512
            },
        ]
    );
}

#[test]
fn bad_requests_fail_alone_and_the_queue_keeps_working() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = qemu_image(dir.path(), "dynamic.vhd", "dynamic");
    let expected = qemu_raw("vpc", &path, dir.path());
    let disk = open_rw(&path);
    let size = disk.logical_size();
    let arena = arena(size);
    let image: Arc<dyn Mapper> = Arc::clone(disk.image()) as Arc<dyn Mapper>;
    let mut queue = MappedQueue::new(image, &SyncHostBackend, DEPTH).unwrap();
    read_through(&mut queue, size, arena);

    // Past the end, read and write, between good requests.
    let bufs = [arena.subslice(0, 4096).unwrap()];
    let tail = [arena.subslice(4096, 1024).unwrap()];
    let data: &'static [u8] = Box::leak(vec![1u8; 1024].into_boxed_slice());
    let wbufs = [IoBuf::from(data)];
    queue
        .submit(&[
            read_request(1, 0, &bufs),
            read_request(2, size - 512, &tail),
            write_request(3, size, &wbufs),
            read_request(4, 12 << 20, &tail),
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
    // open, so a corrupt one never reaches a queue): both paths serve the one mapping, and the engines read
    // the host file's end as zeros (as QEMU's file driver does); no stale byte, and the queue goes on.
    let block6 = u64::from(disk.bat()[6]) * 512;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(block6).unwrap();
    queue
        .submit(&[read_request(5, 12 << 20, &bufs), read_request(6, 0, &tail)])
        .unwrap();
    let mut done = reap(&mut queue, 2);
    done.sort_by_key(|c| c.user_data);
    if done[0].result.is_ok() {
        let mut lost = [1u8; 4096];
        bufs[0].as_io_buf().copy_to(&mut lost);
        assert_eq!(lost, [0u8; 4096]);
    }
    let mut lost = [1u8; 4096];
    disk.read_exact_at(12 << 20, &mut lost).unwrap();
    assert_eq!(lost, [0u8; 4096]);
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
    assert_queue_write_reads_back(clone.as_ref(), &disk);
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
        let expected = qemu_raw("vpc", &path, dir.path());
        let writes = WRITES;
        {
            let disk = open_rw(&path);
            let mapper: &dyn Mapper = &*disk;
            let size = disk.logical_size();
            let mut fast = 0;
            for pass in 0..2 {
                let mut got = Vec::new();
                for (offset, len) in pieces(size) {
                    let (bytes, mapped) = read_via_mapper(mapper, offset, len);
                    fast += usize::from(mapped == Mapped::Fast);
                    got.extend_from_slice(&bytes);
                }
                assert!(got == expected, "{subformat}, pass {pass}");
            }
            assert!(fast > 0);
            let mut fast_writes = 0;
            for &(offset, byte, len) in writes {
                let mapped = write_via_mapper(mapper, offset, &vec![byte; len as usize]);
                fast_writes += usize::from(mapped == Mapped::Fast);
            }
            // The first three land in allocated blocks.
            assert!(fast_writes >= 3, "{subformat}: {fast_writes}");
            mapper.flush().unwrap();
        }
        qemu_io("vpc", &twin, &qemu_commands(writes));
        qemu_compare("vpc", &path, "vpc", &twin);
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
    let mapper: &dyn Mapper = &*disk;
    let size = disk.logical_size();
    for _ in 0..2 {
        for (offset, len) in pieces(size) {
            let (bytes, _) = read_via_mapper(mapper, offset, len);
            assert!(
                bytes[..] == model[offset as usize..(offset + len) as usize],
                "at {offset}"
            );
        }
    }
}
