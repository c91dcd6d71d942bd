//! Guest I/O round trips, errors, map, info and creation on real files.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use blk_core::{
    AsyncDiskFile, DiskFile, ErrorKind, ExtentKind, HostFile, ImageAdmin, IoBuf, MappedDisk,
    Operation,
};
use blk_raw::{Preallocation, Raw, RawCreateOptions, FORMAT_NAME};
use common::*;

const MIB: u64 = 1 << 20;

#[test]
fn read_write_zero_discard_round_trip() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk = open_disk(&path, rw()).unwrap();
    assert_eq!(disk.logical_size(), MIB);
    assert!(!disk.is_read_only());
    assert_eq!(read_all(&disk), vec![0; MIB as usize]);

    let data = pattern(1, 300_000);
    disk.write_at(12_345, &split(&data, &[0, 1, 4096, 4096, 100_000]))
        .unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read_at(12_345, &split_mut(&mut back, &[7, 8, 250_000]))
        .unwrap();
    assert_eq!(back, data);
    disk.flush().unwrap();

    let mut model = vec![0u8; MIB as usize];
    model[12_345..12_345 + data.len()].copy_from_slice(&data);
    for (offset, len, unmap) in [(20_000u64, 70_000u64, true), (150_001, 9_999, false)] {
        disk.write_zeroes(offset, len, unmap).unwrap();
        model[offset as usize..(offset + len) as usize].fill(0);
    }
    disk.discard(200_000, 65_536).unwrap();
    model[200_000..265_536].fill(0);
    disk.discard(270_001, 3).unwrap();
    model[270_001..270_004].fill(0);
    assert_eq!(read_all(&disk), model);
    // The file is the image: what blk wrote is in the file byte for byte.
    assert_eq!(fs::read(&path).unwrap(), model);

    // Empty requests are fine anywhere up to the end.
    disk.read_at(MIB, &[]).unwrap();
    disk.write_at(MIB, &[IoBuf::from(&[][..])]).unwrap();
    disk.write_zeroes(MIB, 0, true).unwrap();
    disk.discard(MIB, 0).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), MIB);
}

#[test]
fn whole_blocks_unmapped_are_deallocated() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk = open_disk(&path, rw()).unwrap();
    disk.write_all_at(0, &pattern(2, MIB as usize)).unwrap();
    disk.flush().unwrap();
    let full = disk.physical_size().unwrap();
    assert!(full >= MIB, "{full}");
    disk.write_zeroes(0, 256 << 10, true).unwrap();
    disk.discard(512 << 10, 256 << 10).unwrap();
    // Without unmap the range stays allocated (FALLOC_FL_ZERO_RANGE).
    disk.write_zeroes(256 << 10, 256 << 10, false).unwrap();
    assert_eq!(disk.physical_size().unwrap(), full - (512 << 10));
    let mut model = pattern(2, MIB as usize);
    model[..768 << 10].fill(0);
    assert_eq!(read_all(&disk), model);
}

fn assert_out_of_bounds(
    err: &blk_core::Error,
    offset: u64,
    operation: Operation,
    path: &std::path::Path,
) {
    assert_eq!(err.kind(), ErrorKind::OutOfBounds, "{err}");
    assert_eq!(err.offset(), Some(offset), "{err}");
    assert_eq!(err.path(), Some(path), "{err}");
    assert_eq!(err.format(), Some(FORMAT_NAME), "{err}");
    assert_eq!(err.operation(), Some(operation), "{err}");
}

#[test]
fn requests_past_the_end_are_out_of_bounds() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 64 << 10);
    let disk = open_disk(&path, rw()).unwrap();
    let size = disk.logical_size();
    let mut buf = [0u8; 20];
    let err = disk.read_exact_at(size - 10, &mut buf).unwrap_err();
    assert_out_of_bounds(&err, size - 10, Operation::Read, &path);
    let err = disk.write_all_at(size - 10, &buf).unwrap_err();
    assert_out_of_bounds(&err, size - 10, Operation::Write, &path);
    let err = disk.write_all_at(size, &buf[..1]).unwrap_err();
    assert_out_of_bounds(&err, size, Operation::Write, &path);
    let err = disk.read_exact_at(u64::MAX, &mut buf).unwrap_err();
    assert_out_of_bounds(&err, u64::MAX, Operation::Read, &path);
    let err = disk.write_zeroes(0, size + 1, true).unwrap_err();
    assert_out_of_bounds(&err, 0, Operation::WriteZeroes, &path);
    let err = disk.discard(size - 1, 2).unwrap_err();
    assert_out_of_bounds(&err, size - 1, Operation::Discard, &path);
    let err = disk.map(size - 1, 2).unwrap_err();
    assert_out_of_bounds(&err, size - 1, Operation::Map, &path);
    // Nothing grew the file.
    assert_eq!(fs::metadata(&path).unwrap().len(), size);
    assert!(err
        .to_string()
        .starts_with(&format!("raw image {}: ", path.display())));
}

#[test]
fn read_only_disks_refuse_changes() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 64 << 10);
    fs::write(&path, pattern(3, 64 << 10)).unwrap();
    let disk = open_disk(&path, ro()).unwrap();
    assert!(disk.is_read_only());
    for (err, operation) in [
        (disk.write_all_at(0, b"x").unwrap_err(), Operation::Write),
        (
            disk.write_zeroes(4096, 4096, true).unwrap_err(),
            Operation::WriteZeroes,
        ),
        (
            disk.write_zeroes(4096, 4096, false).unwrap_err(),
            Operation::WriteZeroes,
        ),
        (disk.discard(0, 4096).unwrap_err(), Operation::Discard),
    ] {
        assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
        assert_eq!(err.path(), Some(path.as_path()));
        assert_eq!(err.format(), Some(FORMAT_NAME));
        assert_eq!(err.operation(), Some(operation));
    }
    disk.flush().unwrap();
    assert_eq!(read_all(&disk), pattern(3, 64 << 10));
    let clone = disk.try_clone().unwrap();
    assert!(clone.is_read_only());
    assert_eq!(
        clone.write_all_at(0, b"x").unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
}

#[test]
fn opening_a_directory_or_a_missing_file_fails() {
    let dir = tempdir();
    let err = open_disk(dir.path(), rw()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(err.path(), Some(dir.path()));
    assert_eq!(err.format(), Some(FORMAT_NAME));
    assert_eq!(err.operation(), Some(Operation::Open));

    let missing = dir.path().join("missing.img");
    let err = open_disk(&missing, ro()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.path(), Some(missing.as_path()));
    assert_eq!(err.format(), Some(FORMAT_NAME));
    assert_eq!(
        err.to_string(),
        format!(
            "raw image {}: No such file or directory (while opening)",
            missing.display()
        )
    );
}

#[test]
fn a_file_truncated_under_us_reads_zeros_past_its_end() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", 64 << 10);
    let disk = open_disk(&path, rw()).unwrap();
    disk.write_all_at(0, &pattern(4, 64 << 10)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10_000)
        .unwrap();
    assert_eq!(disk.logical_size(), 64 << 10);
    let mut model = pattern(4, 10_000);
    model.resize(64 << 10, 0);
    let mut back = vec![0xffu8; 64 << 10];
    disk.read_at(0, &split_mut(&mut back, &[9_000, 10_000, 10_001, 20_000]))
        .unwrap();
    assert_eq!(back, model);
    let run = disk.map(12_288, 4096).unwrap();
    assert_eq!(run.kind, ExtentKind::Zero);
    // Writing there works and grows the file back.
    disk.write_all_at(60_000, b"tail").unwrap();
    model[60_000..60_004].copy_from_slice(b"tail");
    assert_eq!(read_all(&disk), model);
}

#[test]
fn map_reports_holes_and_data() {
    let dir = tempdir();
    let path = dir.path().join("a.img");
    fs::File::create(&path).unwrap().set_len(MIB).unwrap();
    let disk = open_disk(&path, rw()).unwrap();
    assert_eq!(
        full_map(&disk),
        vec![blk_core::Extent::zero(0, MIB, Some(0))]
    );
    disk.write_all_at(64 << 10, &[1; 4096]).unwrap();
    disk.write_all_at(512 << 10, &[2; 8192]).unwrap();
    let runs: Vec<_> = full_map(&disk)
        .into_iter()
        .map(|e| {
            (
                e.offset,
                e.length,
                e.kind,
                e.host_offset,
                e.depth,
                e.compressed,
            )
        })
        .collect();
    use ExtentKind::{Data, Zero};
    assert_eq!(
        runs,
        [
            (0, 64 << 10, Zero, Some(0), 0, false),
            (64 << 10, 4096, Data, Some(64 << 10), 0, false),
            (68 << 10, 444 << 10, Zero, Some(68 << 10), 0, false),
            (512 << 10, 8192, Data, Some(512 << 10), 0, false),
            (
                520 << 10,
                MIB - (520 << 10),
                Zero,
                Some(520 << 10),
                0,
                false
            ),
        ]
    );
    // Lengths are clipped to the query.
    let run = disk.map(100, 50).unwrap();
    assert_eq!((run.offset, run.length, run.kind), (100, 50, Zero));
    let run = disk.map((64 << 10) + 100, 10_000).unwrap();
    assert_eq!((run.length, run.kind), (3996, Data));
    let run = disk.map((64 << 10) + 100, 50).unwrap();
    assert_eq!((run.length, run.kind), (50, Data));
    assert_eq!(disk.map(MIB, 0).unwrap().length, 0);
}

#[test]
fn info_sizes_and_topology() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk = open_disk(&path, rw()).unwrap();
    disk.write_all_at(0, &[7; 8192]).unwrap();
    let info = disk.image_info().unwrap();
    assert_eq!(info.format, "raw");
    assert_eq!(info.filename, path);
    assert_eq!(info.virtual_size, MIB);
    assert_eq!(
        info.actual_size,
        fs::metadata(&path).unwrap().blocks() * 512
    );
    assert_eq!(info.actual_size, disk.physical_size().unwrap());
    assert!(info.actual_size >= 8192 && info.actual_size < MIB);
    assert_eq!(info.cluster_size, None);
    assert!(!info.dirty);
    assert_eq!(info.backing_filename, None);
    assert_eq!(info.full_backing_filename, None);
    assert_eq!(info.backing_format, None);
    assert_eq!(info.format_specific, None);

    let topology = disk.topology();
    assert_eq!(topology, disk.host_file().topology());
    assert_eq!(topology.logical_block_size, 512);
    assert!(topology.discard_granularity >= 512);

    let err = disk.check(blk_core::RepairMode::None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    drop(disk);

    // O_DIRECT's host alignment (often 4 KiB) stays in the host layer: the guest still sees 512-byte sectors.
    let direct = open_disk(&path, direct()).unwrap();
    let alignment = direct.host_file().direct_io_alignment().unwrap();
    assert!(alignment.offset >= 512 && alignment.memory >= 1);
    assert_eq!(direct.topology(), topology);
}

#[test]
fn from_host_file_serves_an_open_file() {
    let dir = tempdir();
    let path = dir.path().join("fd.img");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(12_345).unwrap();
    let host = HostFile::from_file(file, "fd:3", rw()).unwrap();
    let disk = MappedDisk::new(Raw::from_host_file(host).unwrap());
    // Whole sectors, as QEMU shows them: the partial last sector reads as zeros and can be written.
    assert_eq!(disk.logical_size(), 12_800);
    let mut tail = [1u8; 60];
    disk.read_exact_at(12_740, &mut tail).unwrap();
    assert!(tail[..5] == [0; 5] && tail.iter().all(|&b| b == 0));
    disk.write_all_at(12_340, b"hello").unwrap();
    assert_eq!(&fs::read(&path).unwrap()[12_340..], b"hello");
    let err = disk.write_all_at(12_796, b"hello").unwrap_err();
    assert_eq!(err.path(), Some(std::path::Path::new("fd:3")));
    assert_eq!(
        disk.image_info().unwrap().filename,
        std::path::Path::new("fd:3")
    );
}

#[test]
fn clones_share_the_disk() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk = open_disk(&path, rw()).unwrap();
    let clone = disk.try_clone().unwrap();
    let async_clone = disk.try_clone_async().unwrap();
    clone.write_all_at(100, b"from the clone").unwrap();
    let mut back = [0u8; 14];
    async_clone.read_exact_at(100, &mut back).unwrap();
    assert_eq!(&back, b"from the clone");
    assert_eq!(clone.logical_size(), MIB);
    drop(disk);
    // A clone outlives its original.
    clone.read_exact_at(100, &mut back).unwrap();
}

#[test]
fn create_rounds_up_and_preallocates() {
    let dir = tempdir();
    let path = dir.path().join("c.img");
    let create = |size, preallocation| {
        MappedDisk::new(
            Raw::create(
                &path,
                &RawCreateOptions {
                    size,
                    preallocation,
                },
            )
            .unwrap(),
        )
    };

    let disk = create(1000, Preallocation::Off);
    assert_eq!(
        disk.logical_size(),
        1024,
        "rounded up to 512 bytes as qemu does"
    );
    assert!(!disk.is_read_only());
    drop(disk);

    let disk = create(4 * MIB, Preallocation::Off);
    assert_eq!(disk.logical_size(), 4 * MIB);
    // Sparse but for the first block, which qemu allocates too.
    assert_eq!(disk.physical_size().unwrap(), 4096);
    assert_eq!(
        full_map(&disk),
        [
            blk_core::Extent::data(0, 4096, Some(0)),
            blk_core::Extent::zero(4096, 4 * MIB - 4096, Some(4096))
        ]
    );
    disk.write_all_at(MIB, b"written").unwrap();
    drop(disk);

    for mode in [Preallocation::Falloc, Preallocation::Full] {
        let disk = create(4 * MIB + 512, mode);
        assert_eq!(disk.logical_size(), 4 * MIB + 512);
        assert!(disk.physical_size().unwrap() >= 4 * MIB + 512, "{mode:?}");
        assert_eq!(
            read_all(&disk),
            vec![0; (4 * MIB + 512) as usize],
            "{mode:?}"
        );
        drop(disk);
    }
    // The last image was fully written: all data.
    let disk = open_disk(&path, ro()).unwrap();
    assert!(full_map(&disk).iter().all(|e| e.kind == ExtentKind::Data));
    drop(disk);

    let disk = create(0, Preallocation::Full);
    assert_eq!(disk.logical_size(), 0);
}

#[test]
fn create_over_an_image_in_use_fails_and_keeps_it() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk = open_disk(&path, rw()).unwrap();
    disk.write_all_at(0, b"precious").unwrap();
    let err = Raw::create(
        &path,
        &RawCreateOptions {
            size: 2 * MIB,
            preallocation: Preallocation::Off,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(err.format(), Some(FORMAT_NAME));
    assert_eq!(fs::metadata(&path).unwrap().len(), MIB);
    assert_eq!(&fs::read(&path).unwrap()[..8], b"precious");
}

#[test]
fn create_failures_name_the_path() {
    let dir = tempdir();
    let path = dir.path().join("no-such-dir").join("a.img");
    let err = Raw::create(
        &path,
        &RawCreateOptions {
            size: MIB,
            preallocation: Preallocation::Off,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(err.operation(), Some(Operation::Create));

    // Larger than ext4 allows: qemu-img's message.
    let path = dir.path().join("huge.img");
    let err = Raw::create(
        &path,
        &RawCreateOptions {
            size: 1 << 60,
            preallocation: Preallocation::Off,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string()
            .contains("The image size is too large for file format 'raw'"),
        "{err}"
    );
    let err = Raw::create(
        &path,
        &RawCreateOptions {
            size: u64::MAX,
            preallocation: Preallocation::Off,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn direct_io_aligned_and_unaligned() {
    let dir = tempdir();
    // Not a multiple of 4096: the last block is partial.
    let size = MIB + 1024;
    let path = dir.path().join("d.img");
    fs::write(&path, pattern(5, size as usize)).unwrap();
    let mut model = pattern(5, size as usize);
    let disk = open_disk(&path, direct()).unwrap();
    assert!(disk.host_file().direct_io_alignment().is_some());
    assert_eq!(disk.logical_size(), size);

    // (offset, len, aligned memory, cuts)
    let cases: &[(u64, usize, bool, &[usize])] = &[
        (0, 8192, true, &[]),
        (4096, 16384, true, &[4096, 8192]),
        (8192, 4096, false, &[]),
        (1, 1, true, &[]),
        (511, 4098, false, &[2, 3]),
        (12_288 + 100, 3000, true, &[]),
        (MIB - 100, 1100, false, &[50]),
        (MIB, 1000, true, &[]),
        (size - 1, 1, false, &[]),
        (MIB - 4096, 5096, true, &[4096]),
    ];
    for (i, &(offset, len, aligned, cuts)) in cases.iter().enumerate() {
        let data = pattern(100 + i as u64, len);
        let mut src = buffer(len, aligned);
        src.as_mut_slice().copy_from_slice(&data);
        disk.write_at(offset, &split(src.as_slice(), cuts)).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            size,
            "case {i} changed the file size"
        );
        let mut dst = buffer(len, aligned);
        disk.read_at(offset, &split_mut(dst.as_mut_slice(), cuts))
            .unwrap();
        assert_eq!(dst.as_slice(), &data[..], "case {i}");
    }
    disk.write_zeroes(1000, 10_000, true).unwrap();
    disk.write_zeroes(40_000, 10_000, false).unwrap();
    disk.discard(size - 500, 500).unwrap();
    for (o, l) in [(1000, 10_000), (40_000, 10_000), (size as usize - 500, 500)] {
        model[o..o + l].fill(0);
    }
    let mut all = buffer(size as usize, true);
    disk.read_exact_at(0, all.as_mut_slice()).unwrap();
    assert_eq!(all.as_slice(), &model[..]);
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(fs::read(&path).unwrap(), model);
}

#[test]
fn queues_come_from_async_disks() {
    let dir = tempdir();
    let path = new_image(dir.path(), "a.img", MIB);
    let disk: Box<dyn AsyncDiskFile> = Box::new(open_disk(&path, rw()).unwrap());
    let queue = disk.create_async_io(8).unwrap();
    assert_eq!(queue.ring_depth(), 8);
}
