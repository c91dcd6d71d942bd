//! Reading images made by qemu-img / qemu-io, writing with blk and checking with qemu-img.

mod support;

use blk_core::ImageAdmin;
use blk_core::{DiskFile, ExtentKind};
use support::*;

/// A qemu-made image with data, zero clusters and discards reads back as qemu reads it.
#[test]
fn reads_qemu_images() {
    let _g = serial();
    let dir = tempdir();
    for opts in [
        "compat=1.1",
        "compat=0.10",
        "cluster_size=512,refcount_bits=1",
        "cluster_size=4096,refcount_bits=64",
        "cluster_size=2M,refcount_bits=8",
    ] {
        let img = dir.path().join("q.qcow2");
        qemu_create(&img, opts, "5000k");
        qemu_io(
            "qcow2",
            &img,
            &[
                "write -P 0x11 0 100k",
                "write -P 0x22 3000k 1500k",
                "write -z 64k 128k",
                "discard 3100k 512k",
                "write -P 0x33 4999k 1k",
            ],
        );
        let disk = support::open_disk(&img, &ro()).unwrap();
        assert_same(&read_all(&disk), &qemu_contents(&img, "qcow2"), opts);
    }
}

/// Compressed clusters (zlib and zstd) made by qemu-img convert -c read back.
#[test]
fn reads_compressed() {
    let _g = serial();
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = ((i / 1000) % 7) as u8 * (i % 3) as u8;
    }
    data[2 << 20..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 7919 % 251) as u8);
    std::fs::write(&raw, &data).unwrap();
    for ct in ["zlib", "zstd"] {
        for cs in ["4k", "64k"] {
            let img = dir.path().join("c.qcow2");
            let o = format!("compression_type={ct},cluster_size={cs}");
            qemu_convert_compressed(&raw, &img, &o);
            let disk = support::open_disk(&img, &ro()).unwrap();
            assert_same(&read_all(&disk), &data, &o);
            assert!(disk.map(0, 4096).unwrap().compressed);
        }
    }
}

/// blk-created images with blk writes are clean for qemu-img check and read back through qemu.
#[test]
fn writes_are_clean_for_qemu() {
    let _g = serial();
    let dir = tempdir();
    for opts in [
        vec![],
        vec![("compat", "0.10")],
        vec![("cluster_size", "512"), ("refcount_bits", "1")],
        vec![("cluster_size", "512"), ("refcount_bits", "64")],
        vec![
            ("cluster_size", "4k"),
            ("refcount_bits", "2"),
            ("compression_type", "zstd"),
        ],
    ] {
        let img = dir.path().join("w.qcow2");
        blk_create(&img, 3 << 20, &opts);
        assert_qemu_check_clean(&img);
        let mut model = vec![0u8; 3 << 20];
        {
            let disk = support::open_disk(&img, &rw()).unwrap();
            let mut w = |off: usize, len: usize, val: u8| {
                let buf = vec![val; len];
                disk.write_all_at(off as u64, &buf).unwrap();
                model[off..off + len].copy_from_slice(&buf);
            };
            w(0, 100, 1);
            w(70_000, 200_000, 2);
            w(1 << 20, 1 << 20, 3);
            w((3 << 20) - 10, 10, 4);
            disk.write_zeroes(80_000, 100_000, true).unwrap();
            model[80_000..180_000].fill(0);
            disk.discard(1 << 20, 512 << 10).unwrap();
            // Without a backing file, discarded clusters read as zeros (v2: unallocated, v3: zero flag).
            model[1 << 20..(1 << 20) + (512 << 10)].fill(0);
            let cluster = vec![7u8; 65536.min(disk.compressed_write_size().unwrap() as usize)];
            disk.write_compressed(2 << 20, &cluster).unwrap();
            model[2 << 20..(2 << 20) + cluster.len()].copy_from_slice(&cluster);
            assert_same(&read_all(&disk), &model, &format!("{opts:?}"));
            disk.flush().unwrap();
        }
        assert_qemu_check_clean(&img);
        assert_same(
            &qemu_contents(&img, "qcow2"),
            &model,
            &format!("qemu {opts:?}"),
        );
    }
}

/// A backing chain raw <- qcow2 <- qcow2, with zero clusters and discards in the middle layer.
#[test]
fn backing_chain() {
    let _g = serial();
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x5au8; 2 << 20]).unwrap();
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_create(&mid, "backing_file=base.raw,backing_fmt=raw", "3M");
    qemu_io(
        "qcow2",
        &mid,
        &["write -P 1 0 64k", "write -z 128k 64k", "discard 256k 64k"],
    );
    blk_create(
        &top,
        3 << 20,
        &[("backing_file", "mid.qcow2"), ("backing_fmt", "qcow2")],
    );
    {
        let disk = support::open_disk(&top, &rw()).unwrap();
        disk.write_all_at(1000, b"top").unwrap();
        disk.write_all_at(300_000, b"cow").unwrap();
        assert!(!disk.has_zero_init());
        disk.flush().unwrap();
        let info = disk.image_info().unwrap();
        assert_eq!(info.backing_filename.as_deref(), Some("mid.qcow2"));
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        assert_same(&read_all(&disk), &qemu_contents(&top, "qcow2"), "chain");
        let e = disk.map(2 << 20, 65536).unwrap();
        assert_eq!((e.kind, e.depth), (ExtentKind::Unallocated, 1));
        let e = disk.map(1 << 20, 65536).unwrap();
        assert_eq!((e.kind, e.depth), (ExtentKind::Data, 2));
    }
    assert_qemu_check_clean(&top);
}

/// The created layout matches qemu-img's and qemu-img info agrees.
#[test]
fn create_matches_qemu() {
    let _g = serial();
    let dir = tempdir();
    std::fs::write(dir.path().join("base.raw"), [0u8; 4096]).unwrap();
    for opts in [
        "compat=1.1",
        "compat=0.10",
        "cluster_size=512",
        "lazy_refcounts=on,refcount_bits=64",
        "compression_type=zstd",
        "backing_file=base.raw,backing_fmt=raw",
        "compat=0.10,backing_file=base.raw,backing_fmt=raw",
    ] {
        let ours = dir.path().join("ours.qcow2");
        let theirs = dir.path().join("theirs.qcow2");
        blk_create(&ours, 1 << 30, &option_pairs(opts));
        qemu_create(&theirs, opts, "1G");
        let a = std::fs::read(&ours).unwrap();
        let b = std::fs::read(&theirs).unwrap();
        let n = b.len().min(a.len());
        assert_same(&a[..n], &b[..n], opts);
        assert_qemu_check_clean(&ours);
        let qinfo: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", path_str(&theirs)])).unwrap();
        let disk = support::open_disk(&ours, &ro()).unwrap();
        let info = disk.image_info().unwrap();
        let (kind, data) = info.format_specific.unwrap();
        assert_eq!(kind, "qcow2");
        let qdata = qinfo["format-specific"]["data"].as_object().unwrap();
        let keys: Vec<&String> = qdata.keys().collect();
        let mut ours_keys: Vec<&String> = data.iter().map(|(k, _)| k).collect();
        ours_keys.sort();
        assert_eq!(ours_keys, keys, "{opts}");
        for (k, v) in data {
            let q = &qdata[&k];
            match v {
                blk_core::InfoValue::Bool(b) => assert_eq!(q.as_bool(), Some(b), "{k}"),
                blk_core::InfoValue::U64(n) => assert_eq!(q.as_u64(), Some(n), "{k}"),
                blk_core::InfoValue::String(s) => assert_eq!(q.as_str(), Some(s.as_str()), "{k}"),
                other => panic!("{other:?}"),
            }
        }
    }
}

/// With O_DIRECT, unaligned guest requests and 8-byte metadata updates still work.
#[test]
fn direct_io() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("d.qcow2");
    blk_create(&img, 4 << 20, &[("cluster_size", "4k")]);
    let mut model = vec![0u8; 4 << 20];
    {
        let mut opts = rw();
        opts.host.direct = true;
        let disk = support::open_disk(&img, &opts).unwrap();
        disk.write_all_at(1000, &[5u8; 10_000]).unwrap();
        model[1000..11_000].fill(5);
        disk.write_all_at(1 << 20, &[6u8; 1 << 20]).unwrap();
        model[1 << 20..2 << 20].fill(6);
        disk.write_zeroes(1_500_000, 5000, true).unwrap();
        model[1_500_000..1_505_000].fill(0);
        disk.discard(1 << 20, 64 << 10).unwrap();
        model[1 << 20..(1 << 20) + (64 << 10)].fill(0);
        assert_same(&read_all(&disk), &model, "direct");
        disk.flush().unwrap();
    }
    assert_qemu_check_clean(&img);
    assert_same(&qemu_contents(&img, "qcow2"), &model, "direct through qemu");
}

/// Requests past the end fail with OutOfBounds; a read-only image refuses writes.
#[test]
fn range_and_read_only_errors() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("e.qcow2");
    blk_create(&img, 1 << 20, &[]);
    let disk = support::open_disk(&img, &ro()).unwrap();
    let mut buf = [0u8; 16];
    let e = disk.read_exact_at((1 << 20) - 8, &mut buf).unwrap_err();
    assert_eq!(e.kind(), blk_core::ErrorKind::OutOfBounds);
    assert_eq!(e.path(), Some(img.as_path()));
    let e = disk.write_all_at(0, &buf).unwrap_err();
    assert_eq!(e.kind(), blk_core::ErrorKind::ReadOnly);
    assert!(disk.is_read_only());
    let e = disk.discard(0, 4096).unwrap_err();
    assert_eq!(e.kind(), blk_core::ErrorKind::ReadOnly);
}

/// Compressed writes (packed several per host cluster), then plain writes, zeroes and discards over them.
#[test]
fn compressed_writes_then_overwrites() {
    let _g = serial();
    let dir = tempdir();
    for (ct, cs) in [("zlib", 4096usize), ("zstd", 65536), ("zlib", 512)] {
        let img = dir.path().join("cw.qcow2");
        let size = 40 * cs + 1536;
        blk_create(
            &img,
            size as u64,
            &[("compression_type", ct), ("cluster_size", &cs.to_string())],
        );
        let mut model = vec![0u8; size];
        {
            let disk = support::open_disk(&img, &rw()).unwrap();
            assert_eq!(disk.compressed_write_size(), Some(cs as u64));
            for c in 0..=40usize {
                let len = cs.min(size - c * cs);
                let buf: Vec<u8> = (0..len).map(|i| ((i / 100 + c) % 5) as u8).collect();
                disk.write_compressed((c * cs) as u64, &buf).unwrap();
                model[c * cs..c * cs + len].copy_from_slice(&buf);
            }
            // An incompressible cluster is stored plainly.
            let noise: Vec<u8> = (0..cs)
                .map(|i| (i * 7919 % 251) as u8 ^ (i >> 8) as u8)
                .collect();
            disk.write_compressed((3 * cs) as u64, &noise).unwrap();
            model[3 * cs..4 * cs].copy_from_slice(&noise);
            assert_same(&read_all(&disk), &model, "compressed");
            disk.write_all_at((5 * cs + 10) as u64, &[9u8; 100])
                .unwrap();
            model[5 * cs + 10..5 * cs + 110].fill(9);
            disk.write_zeroes((7 * cs) as u64, cs as u64, false)
                .unwrap();
            model[7 * cs..8 * cs].fill(0);
            disk.discard((9 * cs) as u64, (2 * cs) as u64).unwrap();
            model[9 * cs..11 * cs].fill(0);
            assert_same(&read_all(&disk), &model, "compressed overwritten");
        }
        assert_qemu_check_clean(&img);
        assert_same(&qemu_contents(&img, "qcow2"), &model, ct);
    }
}

/// After every compressed write the file ends on a 512-byte boundary, as qemu-img leaves it.
#[test]
fn compressed_writes_end_the_file_on_a_sector() {
    let dir = tempdir();
    let img = dir.path().join("pad.qcow2");
    let cs = 4096usize;
    blk_create(&img, 16 * cs as u64, &[("cluster_size", "4096")]);
    let disk = support::open_disk(&img, &rw()).unwrap();
    for c in 0..6usize {
        // Data compressing to odd lengths.
        let buf: Vec<u8> = (0..cs)
            .map(|i| ((i * (c + 3)) % 7 + i / 1000) as u8)
            .collect();
        disk.write_compressed((c * cs) as u64, &buf).unwrap();
        disk.flush().unwrap();
        let len = std::fs::metadata(&img).unwrap().len();
        assert_eq!(len % 512, 0, "file length {len} after compressed write {c}");
    }
    drop(disk);
    assert_qemu_check_clean(&img);
}

/// Write-zeroes with unmap over 4 MiB of allocated 4 KiB clusters (spanning L2 tables, batched per table)
/// frees and punches them as qemu-io's `write -z -u` does: same map, same contents, clean check.
#[test]
fn write_zeroes_unmap_over_allocated_clusters_matches_qemu() {
    let dir = tempdir();
    let ours = dir.path().join("ours.qcow2");
    let theirs = dir.path().join("theirs.qcow2");
    for path in [&ours, &theirs] {
        blk_create(path, 8 << 20, &[("cluster_size", "4096")]);
        qemu_io("qcow2", path, &["write -P 7 0 6M"]);
    }
    qemu_io(
        "qcow2",
        &theirs,
        &["write -z -u 1M 4M", "write -z -u 5M 6k"],
    );
    {
        let disk = support::open_disk(&ours, &rw()).unwrap();
        disk.write_zeroes(1 << 20, 4 << 20, true).unwrap();
        disk.write_zeroes(5 << 20, 6 << 10, true).unwrap();
        disk.flush().unwrap();
        assert_eq!(blk_map(&disk), qemu_map(&theirs));
    }
    assert_qemu_check_clean(&ours);
    assert_same(
        &qemu_contents(&ours, "qcow2"),
        &qemu_contents(&theirs, "qcow2"),
        "zeroed",
    );
    let allocated = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    assert!(
        allocated(&ours) <= allocated(&theirs) + (64 << 10),
        "the freed clusters were not punched: {} vs {}",
        allocated(&ours),
        allocated(&theirs)
    );
}
