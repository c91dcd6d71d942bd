//! The async path (a `MappedQueue` over the image's `Mapper`) against the sync path and QEMU: reads of every
//! kind of image qemu-img makes, the mapper's answers, broken images failing per request while the queue goes
//! on, and the backend set on the disk. Writes and multi-queue runs are in `async_writes.rs`.
//!
//! Two drivers run requests (see `async_support`): the `MappedQueue` itself, and `ManualEngine`, which
//! executes the mapper's answers in the test, so the mapper's answers are exercised whatever the engine does.

mod async_support;
mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_support::*;
use blk_core::{AsyncDiskFile, AsyncIo, ErrorKind, ReadMapping, SyncHostBackend, WriteMapping};
use support::*;

/// Reads the whole disk through `queue` in batches of up to 32 requests of mixed sizes (walking it in order,
/// so every byte is read once), then a batch of random unaligned reads checked against the first pass.
fn read_through_queue(queue: &mut dyn AsyncIo, size: u64, seed: u64) -> Vec<u8> {
    let arena = Arena::new(32 * 160 * 1024);
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(size as usize);
    let mut pos = 0;
    while pos < size {
        let mut batch = Vec::new();
        let depth = 1 + rng.below(32);
        while pos < size && (batch.len() as u64) < depth {
            let len = ((1 + rng.below(300)) * 512).min(size - pos);
            batch.push(Op::Read { offset: pos, len });
            pos += len;
        }
        for (bytes, result) in run_queue(queue, &arena, &batch) {
            assert_eq!(result.expect("read"), bytes.len() as u64);
            out.extend_from_slice(&bytes);
        }
    }
    let batch: Vec<Op> = (0..32)
        .map(|_| {
            let offset = rng.below(size);
            let len = (1 + rng.below(100_000)).min(size - offset);
            Op::Read { offset, len }
        })
        .collect();
    for (op, (bytes, result)) in batch.iter().zip(run_queue(queue, &arena, &batch)) {
        let Op::Read { offset, len } = op else {
            continue;
        };
        result.expect("read");
        assert_same(
            &bytes,
            &out[*offset as usize..(*offset + *len) as usize],
            &format!("unaligned read at {offset} of {len}"),
        );
    }
    out
}

/// The images of the read test: (name, creation options, qemu-io commands, backing file wanted).
fn read_cases() -> Vec<(&'static str, String, Vec<String>, bool)> {
    let pattern = |cs: u64| -> Vec<String> {
        vec![
            "write -P 0x11 0 200k".to_string(),
            format!("write -P 0x22 {} 3k", (cs * 5).min(2 << 20) + 512),
            "write -z 1M 192k".to_string(),
            "write -P 0x33 1536k 1M".to_string(),
            "discard 1600k 128k".to_string(),
            "write -P 0x44 3M 100k".to_string(),
        ]
    };
    vec![
        ("plain", "cluster_size=64k".into(), pattern(65536), false),
        ("backing", "cluster_size=64k".into(), pattern(65536), true),
        (
            "zero",
            "cluster_size=64k".into(),
            {
                let mut p = pattern(65536);
                p.push("write -z -u 0 64k".to_string());
                p
            },
            false,
        ),
        (
            "extended",
            "cluster_size=64k,extended_l2=on".into(),
            pattern(65536),
            false,
        ),
        (
            "extended-backing",
            "cluster_size=64k,extended_l2=on".into(),
            pattern(65536),
            true,
        ),
        ("small", "cluster_size=512".into(), pattern(512), false),
        ("huge", "cluster_size=2M".into(), pattern(2 << 20), false),
        (
            "data-file",
            "cluster_size=64k,data_file=data.raw".into(),
            pattern(65536),
            false,
        ),
    ]
}

#[test]
fn reads_equal_the_sync_path_and_qemu() {
    let _g = serial();
    let dir = tempdir();
    let size = 4u64 << 20;
    // A raw backing file with its own pattern.
    let base = dir.path().join("base.raw");
    std::fs::write(
        &base,
        (0..size)
            .map(|i| (i / 4096 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    for (i, (name, opts, cmds, backing)) in read_cases().into_iter().enumerate() {
        let img = dir.path().join(format!("{name}.qcow2"));
        // qemu-img creates the data file relative to its working directory: name it absolutely.
        let mut opts = opts.replace(
            "data_file=",
            &format!("data_file={}/", path_str(dir.path())),
        );
        if backing {
            opts.push_str(",backing_file=base.raw,backing_fmt=raw");
        }
        qemu_create(&img, &opts, "4M");
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io("qcow2", &img, &cmds);
        check_reads(&img, size, i as u64 + 1, name);
    }
    // Compressed images, zlib and zstd, made by qemu-img convert -c (with an uncompressed tail written
    // afterwards, and a zero cluster).
    let raw = dir.path().join("src.raw");
    std::fs::write(
        &raw,
        (0..size).map(|i| (i % 253) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    for (i, kind) in ["zlib", "zstd"].iter().enumerate() {
        let img = dir.path().join(format!("{kind}.qcow2"));
        qemu_convert_compressed(&raw, &img, &format!("compression_type={kind}"));
        qemu_io("qcow2", &img, &["write -P 0x55 2M 256k", "write -z 3M 64k"]);
        check_reads(&img, size, 100 + i as u64, kind);
    }
}

/// Reads `img` through a queue, a manual engine and the sync path, and compares with qemu-img convert.
fn check_reads(img: &Path, size: u64, seed: u64, what: &str) {
    let expected = qemu_contents(img, "qcow2");
    check_reads_through_blk(img, size, seed, what, &expected);
    // qemu-io's own read of one range agrees too (once blk's handles are closed).
    let out = qemu_io("qcow2", img, &["read -v 1536k 512"]);
    let first = out.lines().next().unwrap_or_default().to_string();
    let byte = expected[1536 << 10];
    assert!(
        first.contains(&format!(" {byte:02x} ")),
        "{what}: qemu-io read -v: {first}"
    );
}

/// The blk half of `check_reads`, with an external data file opened both as a disk and as a host file of the
/// image's own.
fn check_reads_through_blk(img: &Path, size: u64, seed: u64, what: &str, expected: &[u8]) {
    check_reads_with(img, &ro_data(), size, seed, what, expected);
    if what.contains("data-file") {
        let what = format!("{what}, data file as host file");
        check_reads_with(img, &ro_host_data(), size, seed, &what, expected);
    }
}

fn check_reads_with(
    img: &Path,
    options: &blk_qcow::Qcow2OpenOptions,
    size: u64,
    seed: u64,
    what: &str,
    expected: &[u8],
) {
    let disk = support::open_disk(img, options).unwrap();
    assert_same(&read_all(&disk), expected, &format!("{what}: sync path"));
    let mut queue = queue_of(&disk, &SyncHostBackend, 32);
    let got = read_through_queue(&mut queue, size, seed);
    assert_same(&got, expected, &format!("{what}: MappedQueue"));
    let mut queue = disk.create_async_io(32).unwrap();
    let got = read_through_queue(queue.as_mut(), size, seed + 1000);
    assert_same(&got, expected, &format!("{what}: create_async_io"));
    let engine = ManualEngine::new(&disk);
    let mut rng = Rng(seed + 7);
    let mut pos = 0;
    let mut fast = 0;
    while pos < size {
        let len = ((1 + rng.below(300)) * 512).min(size - pos);
        let mut buf = vec![0u8; len as usize];
        if engine.read(pos, &mut buf).unwrap() {
            fast += 1;
        }
        assert_same(
            &buf,
            &expected[pos as usize..(pos + len) as usize],
            &format!("{what}: manual engine at {pos}"),
        );
        pos += len;
    }
    assert!(fast > 0, "{what}: some reads take the fast path");
}

/// Finds the raw L2 entry location of guest cluster `gc` in the image file (standard L2 entries).
fn l2_entry_offset(path: &Path, gc: u64, cluster_bits: u32) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, 40).unwrap();
    let l1 = u64::from_be_bytes(b);
    let entries = 1u64 << (cluster_bits - 3);
    file.read_exact_at(&mut b, l1 + gc / entries * 8).unwrap();
    let l2 = u64::from_be_bytes(b) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0, "guest cluster {gc} has an L2 table");
    l2 + gc % entries * 8
}

#[test]
fn mapper_answers_fast_and_slow_as_documented() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("m.qcow2");
    qemu_create(&img, "cluster_size=64k", "4M");
    qemu_io(
        "qcow2",
        &img,
        &[
            "write -P 0x11 0 128k",
            "write -z 128k 64k",
            "write -c -P 0x22 256k 64k",
        ],
    );
    let disk = support::open_disk(&img, &rw()).unwrap();
    let mapper = mapper_of(&disk);
    assert_eq!(mapper.host_files().len(), 1);
    let mut reads = Vec::new();
    // Two host-contiguous data clusters, a zero cluster, and an unallocated one: one host piece, one zero
    // piece (zero and unallocated merged).
    mapper
        .map_read(4096, 256 * 1024 - 4096, &mut reads)
        .unwrap();
    assert!(
        matches!(reads.as_slice(), [ReadMapping::Host { file: 0, len, .. }, ReadMapping::Zero { len: z }] if *len == 124 * 1024 && *z == 128 * 1024),
        "{reads:?}"
    );
    // A compressed cluster: an encoded piece (read by the backend, inflated by `decode`), after the zeros of
    // the unallocated cluster before it.
    let before = reads.len();
    mapper.map_read(200 * 1024, 100 * 1024, &mut reads).unwrap();
    assert!(
        matches!(
            &reads[before..],
            [ReadMapping::Zero { len: z }, ReadMapping::Encoded { decoded_len: 65536, skip: 0, len: n, .. }]
                if *z == 56 * 1024 && *n == 44 * 1024
        ),
        "{:?}",
        &reads[before..]
    );
    let ReadMapping::Encoded {
        file,
        offset,
        host_len,
        codec,
        ..
    } = reads[before + 1]
    else {
        unreachable!("matched above")
    };
    let mut encoded = vec![0u8; host_len as usize];
    let got = mapper.host_files()[file]
        .read_vectored_at(offset, &[blk_core::IoBufMut::from(&mut encoded[..])])
        .unwrap();
    encoded[got..].fill(0);
    let mut cluster = vec![0u8; 65536];
    mapper.decode(codec, &encoded, &mut cluster).unwrap();
    assert!(cluster.iter().all(|&b| b == 0x22));
    // Past the end: an error for this request only.
    let e = mapper.map_read(4 << 20, 1, &mut reads).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfBounds);

    let mut writes = Vec::new();
    // In place over allocated data.
    mapper.map_write(512, 70_000, &mut writes).unwrap();
    assert!(
        matches!(writes.as_slice(), [WriteMapping::Host { len: 70_000, .. }]),
        "{writes:?}"
    );
    // A partial write of an unallocated cluster (copy-on-write) and a compressed cluster: slow.
    writes.clear();
    mapper.map_write(1 << 20, 4096, &mut writes).unwrap();
    mapper.map_write(256 * 1024, 65536, &mut writes).unwrap();
    assert_eq!(
        writes,
        [
            WriteMapping::Slow { len: 4096 },
            WriteMapping::Slow { len: 65536 }
        ]
    );
    writes.clear();
    // Whole fresh clusters: one allocation, linked afterwards.
    mapper.map_write(1 << 20, 3 * 65536, &mut writes).unwrap();
    let [WriteMapping::Allocated {
        file: 0,
        offset: host,
        len,
        link,
    }] = writes.as_slice()
    else {
        panic!("{writes:?}");
    };
    assert_eq!((*len, link.count), (3 * 65536, 3));
    // While in flight: readers see the old contents (zeros), writers of those clusters go slow.
    let mut reads = Vec::new();
    mapper.map_read(1 << 20, 65536, &mut reads).unwrap();
    assert_eq!(reads, vec![ReadMapping::Zero { len: 65536 }]);
    let mut other = Vec::new();
    mapper
        .map_write((1 << 20) + 65536, 512, &mut other)
        .unwrap();
    assert_eq!(other, [WriteMapping::Slow { len: 512 }]);
    mapper.host_files()[0]
        .write_all_at(*host, &vec![0x77u8; *len as usize])
        .unwrap();
    mapper.finish_allocation(*link, Ok(())).unwrap();
    // A link handed back twice is refused.
    assert_eq!(
        mapper.finish_allocation(*link, Ok(())).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    reads.clear();
    mapper.map_read(1 << 20, 3 * 65536, &mut reads).unwrap();
    assert_eq!(
        reads,
        vec![ReadMapping::Host {
            file: 0,
            offset: *host,
            len: 3 * 65536
        }]
    );
    // A failed data write gives the clusters back.
    writes.clear();
    mapper.map_write(2 << 20, 65536, &mut writes).unwrap();
    let [WriteMapping::Allocated { link, .. }] = writes.as_slice() else {
        panic!("{writes:?}");
    };
    let failed = blk_core::Error::new(ErrorKind::Io, "injected");
    assert_eq!(
        mapper
            .finish_allocation(*link, Err(failed))
            .unwrap_err()
            .kind(),
        ErrorKind::Io
    );
    reads.clear();
    mapper.map_read(2 << 20, 65536, &mut reads).unwrap();
    assert_eq!(reads, vec![ReadMapping::Zero { len: 65536 }]);
    drop(mapper);
    drop(disk);
    assert_qemu_check_clean(&img);
    let contents = qemu_contents(&img, "qcow2");
    assert!(contents[1 << 20..(1 << 20) + 3 * 65536]
        .iter()
        .all(|&b| b == 0x77));
    assert!(contents[2 << 20..(2 << 20) + 65536].iter().all(|&b| b == 0));

    // Read-only: writes fail per request.
    let disk = support::open_disk(&img, &ro()).unwrap();
    let mapper = mapper_of(&disk);
    let e = mapper.map_write(0, 512, &mut writes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
}

/// Patches the L2 entry of guest cluster `gc` to `value`.
fn patch_l2(path: &Path, gc: u64, cluster_bits: u32, value: u64) {
    let at = l2_entry_offset(path, gc, cluster_bits);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_be_bytes(), at).unwrap();
}

fn corrupt_image(dir: &Path, name: &str, bad_host: impl Fn(&Path) -> u64) -> PathBuf {
    let img = dir.join(name);
    qemu_create(&img, "cluster_size=4k", "1M");
    qemu_io("qcow2", &img, &["write -P 0x11 0 64k"]);
    let host = bad_host(&img);
    patch_l2(&img, 3, 12, host | (1 << 63));
    img
}

#[test]
fn corrupt_entries_fail_per_request_and_the_queue_goes_on() {
    let _g = serial();
    let dir = tempdir();
    // Cluster 3's entry points past the end of the file, or onto the refcount table (header field at 48).
    let reftable = |p: &Path| {
        let file = std::fs::File::open(p).unwrap();
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, 48).unwrap();
        u64::from_be_bytes(b)
    };
    let past_eof = corrupt_image(dir.path(), "eof.qcow2", |_| 64 << 20);
    let onto_meta = corrupt_image(dir.path(), "meta.qcow2", reftable);
    let reftable_cluster = |p: &Path| {
        let mut table = vec![0u8; 4096];
        std::fs::File::open(p)
            .unwrap()
            .read_exact_at(&mut table, reftable(p))
            .unwrap();
        table
    };
    let before = reftable_cluster(&onto_meta);
    let arena = Arena::new(1 << 20);
    for (img, read_fails) in [(&past_eof, true), (&onto_meta, false)] {
        let disk = support::open_disk(img, &rw()).unwrap();
        let mut queue = disk.create_async_io(32).unwrap();
        let batch = vec![
            Op::Read {
                offset: 0,
                len: 8192,
            },
            Op::Read {
                offset: 3 * 4096,
                len: 4096,
            },
            Op::Write {
                offset: 3 * 4096 + 512,
                data: vec![1; 512],
                fua: false,
            },
            Op::Read {
                offset: 1 << 20,
                len: 512,
            },
            Op::Read {
                offset: 4096,
                len: 4096,
            },
        ];
        let out = run_queue(queue.as_mut(), &arena, &batch);
        assert!(out[0].1.is_ok());
        assert_eq!(out[1].1.is_err(), read_fails, "{}", img.display());
        if let Err(e) = &out[1].1 {
            assert_eq!(e.kind(), ErrorKind::CorruptImage);
        }
        let e = out[2]
            .1
            .as_ref()
            .expect_err(&format!("{}: write", img.display()));
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
        assert_eq!(
            out[3].1.as_ref().unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
        assert!(out[4].0 == vec![0x11; 4096], "read beside the errors");
        // The mapper gives the same errors directly.
        let mapper = mapper_of(&disk);
        let mut reads = Vec::new();
        let r = mapper.map_read(3 * 4096, 512, &mut reads);
        assert_eq!(r.is_err(), read_fails);
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::CorruptImage);
            assert_eq!(e.format(), Some("qcow2"));
        }
        let mut writes = Vec::new();
        let e = mapper.map_write(3 * 4096, 4096, &mut writes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
        assert!(writes.is_empty());
        // The queue keeps working.
        let out = run_queue(
            queue.as_mut(),
            &arena,
            &[Op::Read {
                offset: 0,
                len: 8192,
            }],
        );
        assert!(out[0].0 == vec![0x11; 8192], "read after the errors");
    }
    // Nothing was written over the refcount table.
    assert!(
        reftable_cluster(&onto_meta) == before,
        "the refcount table is intact"
    );
}

/// `set_io_backend` reaches the queues of `create_async_io` (and of clones), and fast requests do their data
/// I/O there: an allocating whole-cluster write and a read of it are host operations, a read of a hole is
/// not.
#[test]
fn queues_use_the_backend_set_on_the_image() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("b.qcow2");
    qemu_create(&img, "cluster_size=64k", "1M");
    let backend = Arc::new(CountingBackend::default());
    {
        let mut disk = support::open_disk(&img, &rw()).unwrap();
        disk.set_io_backend(backend.clone());
        let clone = disk.try_clone_async().unwrap();
        let mut queue = clone.create_async_io(8).unwrap();
        assert_eq!(backend.queues.load(Ordering::Relaxed), 1);
        let arena = Arena::new(256 << 10);
        let out = run_queue(
            queue.as_mut(),
            &arena,
            &[Op::Read {
                offset: 0,
                len: 65536,
            }],
        );
        assert!(out[0].0.iter().all(|&b| b == 0));
        assert_eq!(
            backend.ops.load(Ordering::Relaxed),
            0,
            "a hole reads without I/O"
        );
        let write = Op::Write {
            offset: 128 << 10,
            data: vec![0x3c; 128 << 10],
            fua: false,
        };
        run_queue(queue.as_mut(), &arena, &[write])[0]
            .1
            .as_ref()
            .unwrap();
        let out = run_queue(
            queue.as_mut(),
            &arena,
            &[Op::Read {
                offset: 128 << 10,
                len: 128 << 10,
            }],
        );
        assert!(out[0].0.iter().all(|&b| b == 0x3c));
        assert_eq!(
            backend.ops.load(Ordering::Relaxed),
            2,
            "one write, one read"
        );
    }
    assert_qemu_check_clean(&img);
}
