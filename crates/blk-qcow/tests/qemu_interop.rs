//! The read-back matrix against QEMU: images made by qemu-img and written by qemu-io (v2/v3, cluster sizes 512 B
//! to 2 MiB, refcount widths 1 to 64 bits, odd virtual sizes, zlib and zstd compression, backing chains
//! raw <- qcow2 <- qcow2 with zero clusters and discards, backing files shorter than the overlay) read through
//! `Qcow2::open` (read-only) and compared byte for byte with `qemu-img convert -O raw` of the same image.

#[path = "interop/script.rs"]
mod script;
mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use blk_core::DiskFile;
use blk_core::ImageAdmin;
use blk_qcow::Qcow2;
use script::{matrix_size, mixed_data, standard_script, touched_windows};
use support::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Runs the qemu-io `script` on `image` (qcow2).
fn run_script(image: &Path, script: &[String]) {
    let cmds: Vec<&str> = script.iter().map(String::as_str).collect();
    qemu_io("qcow2", image, &cmds);
}

/// `qemu-img create -f qcow2 -o OPTIONS [-b BACKING -F FMT] image SIZE`.
fn create(image: &Path, options: &str, backing: Option<(&str, &str)>, size: u64) {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    if let Some((file, format)) = backing {
        args.extend(["-b", file, "-F", format]);
    }
    args.extend([path_str(image), &size]);
    qemu_img(&args);
}

/// Reads the whole disk through blk in chunks of `chunk` bytes (unaligned chunk sizes exercise partial
/// clusters and requests spanning clusters).
fn read_chunked(disk: &dyn DiskFile, chunk: usize) -> Vec<u8> {
    let size = disk.logical_size() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let end = (at + chunk).min(size);
        disk.read_exact_at(at as u64, &mut out[at..end])
            .unwrap_or_else(|e| panic!("reading {} bytes at {at}: {e}", end - at));
        at = end;
    }
    out
}

/// Asserts that blk reads `image` exactly as `qemu-img convert -O raw` does, whole and in unaligned chunks.
#[track_caller]
fn assert_reads_like_qemu(image: &Path, what: &str) {
    let expected = qemu_contents(image, "qcow2");
    let disk = support::open_disk(image, &ro()).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    assert_eq!(disk.logical_size(), expected.len() as u64, "{what}: size");
    assert_same(&read_all(&disk), &expected, what);
    assert_same(
        &read_chunked(&disk, 3 * 4096 + 1000),
        &expected,
        &format!("{what} (chunked reads)"),
    );
}

/// Asserts that blk reads `windows` of `image` (a large, sparse image) as qemu-img's raw conversion has them.
#[track_caller]
fn assert_windows_read_like_qemu(image: &Path, windows: &[(u64, u64)], what: &str) {
    let dir = tempdir();
    let raw = dir.path().join("contents.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        "qcow2",
        "-O",
        "raw",
        path_str(image),
        path_str(&raw),
    ]);
    let raw = std::fs::File::open(&raw).expect("opening qemu-img's conversion");
    let disk = support::open_disk(image, &ro()).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    assert_eq!(disk.logical_size(), raw.metadata().unwrap().len(), "{what}");
    for &(start, len) in windows {
        let mut expected = vec![0u8; len as usize];
        raw.read_exact_at(&mut expected, start).unwrap();
        let mut ours = vec![0u8; len as usize];
        disk.read_exact_at(start, &mut ours)
            .unwrap_or_else(|e| panic!("{what}: reading {len} at {start}: {e}"));
        assert_same(&ours, &expected, &format!("{what}: window at {start}"));
    }
}

/// One cell of the matrix: `qemu-img create` with `options`, the standard script, blk reads it as QEMU.
fn check_cell(options: &str, cluster: u64, size: u64) {
    let dir = tempdir();
    let image = dir.path().join("img.qcow2");
    create(&image, options, None, size);
    run_script(&image, &standard_script(cluster, size));
    assert_qemu_check_clean(&image);
    assert_reads_like_qemu(&image, options);
}

fn matrix_for_cluster(cluster: u64) {
    let _g = serial();
    let size = matrix_size(cluster);
    check_cell(
        &format!("compat=0.10,cluster_size={cluster}"),
        cluster,
        size,
    );
    for bits in [1, 8, 16, 64] {
        check_cell(
            &format!("compat=1.1,cluster_size={cluster},refcount_bits={bits}"),
            cluster,
            size,
        );
    }
}

/// v2 and v3 (refcount bits 1, 8, 16, 64) with 512-byte clusters (L2 boundary every 32 KiB).
#[test]
fn matrix_512_byte_clusters() {
    matrix_for_cluster(512);
}

/// v2 and v3 (refcount bits 1, 8, 16, 64) with 4 KiB clusters (L2 boundary at 2 MiB).
#[test]
fn matrix_4k_clusters() {
    matrix_for_cluster(4 * KIB);
}

/// v2 and v3 (refcount bits 1, 8, 16, 64) with 64 KiB clusters.
#[test]
fn matrix_64k_clusters() {
    matrix_for_cluster(64 * KIB);
}

/// v2 and v3 (refcount bits 1, 8, 16, 64) with 2 MiB clusters.
#[test]
fn matrix_2m_clusters() {
    matrix_for_cluster(2 * MIB);
}

/// The standard script across the first L2 boundary of 64 KiB (512 MiB) and 2 MiB clusters (512 GiB), on
/// large sparse images compared around every touched range.
#[test]
fn l2_boundary_of_large_clusters() {
    let _g = serial();
    for (compat, cluster, size) in [
        ("0.10", 64 * KIB, GIB + 64 * KIB + 512),
        ("1.1", 64 * KIB, GIB + 512),
        ("1.1", 2 * MIB, 513 * GIB + 1536),
    ] {
        let dir = tempdir();
        let image = dir.path().join("big.qcow2");
        create(
            &image,
            &format!("compat={compat},cluster_size={cluster}"),
            None,
            size,
        );
        let script = standard_script(cluster, size);
        assert!(script.iter().any(|c| c.contains("0xf6")), "crosses L2");
        run_script(&image, &script);
        assert_qemu_check_clean(&image);
        let mut windows = touched_windows(&script, 2 * cluster, size);
        // Untouched places between the written ranges.
        windows.extend([(size / 3, 4096), (size / 2 + 12_345, 70_000)]);
        assert_windows_read_like_qemu(&image, &windows, &format!("{compat} {cluster} {size}"));
    }
}

/// Odd virtual sizes: 100 MiB + 512, 7 sectors, a size that is not a multiple of the cluster size.
#[test]
fn odd_virtual_sizes() {
    let _g = serial();
    let dir = tempdir();
    // 100 MiB + 512 with the standard script (64 KiB clusters).
    let image = dir.path().join("odd.qcow2");
    let size = 100 * MIB + 512;
    create(&image, "", None, size);
    run_script(&image, &standard_script(64 * KIB, size));
    assert_reads_like_qemu(&image, "100M+512");
    // 7 sectors, v2 and v3.
    for compat in ["0.10", "1.1"] {
        let image = dir.path().join(format!("tiny-{compat}.qcow2"));
        create(&image, &format!("compat={compat}"), None, 7 * 512);
        qemu_io(
            "qcow2",
            &image,
            &[
                "write -P 0x71 0 1024",
                "write -P 0x72 1500 900",
                "write -z 2048 512",
                "write -P 0x73 3072 512",
            ],
        );
        assert_reads_like_qemu(&image, &format!("7 sectors compat={compat}"));
    }
    // 4 KiB clusters, size 37 clusters + 3 sectors: the last cluster is partial.
    let image = dir.path().join("partial.qcow2");
    let size = 37 * 4096 + 1536;
    create(&image, "cluster_size=4k,refcount_bits=8", None, size);
    run_script(&image, &standard_script(4096, size));
    assert_reads_like_qemu(&image, "37 clusters + 3 sectors");
}

/// Compressed images made by `qemu-img convert -c` (zlib in v2 and v3, zstd), then partly overwritten by
/// qemu-io (writes into compressed clusters, zero writes, discards).
#[test]
fn compressed_images() {
    let _g = serial();
    let dir = tempdir();
    for (options, cluster) in [
        ("compat=0.10", 64 * KIB),
        ("compat=1.1,compression_type=zlib,cluster_size=4k", 4 * KIB),
        ("compat=1.1,compression_type=zlib,cluster_size=512", 512),
        ("compat=1.1,compression_type=zstd", 64 * KIB),
        ("compat=1.1,compression_type=zstd,cluster_size=2M", 2 * MIB),
        (
            "compat=1.1,compression_type=zstd,cluster_size=4k,refcount_bits=1",
            4 * KIB,
        ),
    ] {
        // The rewrites below work in units of `c` (a cluster, at most 256 KiB so that 2 MiB clusters keep the
        // image small); the image holds 10 of them and ends inside a cluster (a partial last compressed cluster).
        let c = cluster.min(256 * KIB);
        let src = dir.path().join("src.raw");
        let size = (3 * MIB).max(10 * c) + 1536;
        std::fs::write(&src, mixed_data(size as usize)).unwrap();
        let image = dir.path().join("c.qcow2");
        qemu_convert_compressed(&src, &image, options);
        assert_reads_like_qemu(&image, &format!("compressed {options}"));
        qemu_io(
            "qcow2",
            &image,
            &[
                &format!("write -P 0x42 {} 1000", c + 100),
                &format!("write -z {} {}", 4 * c, c),
                &format!("discard {} {}", 6 * c, 2 * c),
                &format!("write -z -u {} 512", 8 * c + 512),
            ],
        );
        assert_qemu_check_clean(&image);
        assert_reads_like_qemu(&image, &format!("compressed {options}, rewritten"));
        std::fs::remove_file(&image).unwrap();
    }
}

/// Writes the base layer: a raw file of `len` bytes of mixed data.
fn raw_base(dir: &Path, len: u64) {
    std::fs::write(dir.join("base.raw"), mixed_data(len as usize)).unwrap();
}

/// raw <- qcow2 <- qcow2 (relative names), for v2 and v3 and two cluster sizes: every layer gets the standard
/// script (zero clusters and discards over backing data) and every layer reads as QEMU reads it.
#[test]
fn backing_chains_with_zero_clusters_and_discards() {
    let _g = serial();
    for (compat, cluster) in [("0.10", 64 * KIB), ("1.1", 64 * KIB), ("1.1", 4 * KIB)] {
        let dir = tempdir();
        let size = matrix_size(cluster);
        raw_base(dir.path(), size);
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        let options = format!("compat={compat},cluster_size={cluster}");
        create(&mid, &options, Some(("base.raw", "raw")), size);
        run_script(&mid, &standard_script(cluster, size));
        create(&top, &options, Some(("mid.qcow2", "qcow2")), size);
        // The top layer: the script shifted by half a cluster plus a second round of zeroes and discards.
        let mut script = standard_script(cluster, size);
        script.extend([
            format!("write -z {} {}", 3 * cluster, 2 * cluster),
            format!("discard {} {}", 5 * cluster, 2 * cluster),
            format!("write -z -u {} {}", 7 * cluster + 512, cluster),
            format!("write -P 0x24 {} {}", 13 * cluster + 100, cluster),
        ]);
        run_script(&top, &script);
        assert_qemu_check_clean(&mid);
        assert_qemu_check_clean(&top);
        assert_reads_like_qemu(&mid, &format!("mid {options}"));
        assert_reads_like_qemu(&top, &format!("top {options}"));
    }
}

/// A backing file shorter than the overlay (raw and qcow2, ending inside a cluster): the overlay reads zeros past
/// the backing file's end, also after partial writes there (copy-on-write of a cluster the backing file ends in).
#[test]
fn backing_file_shorter_than_overlay() {
    let _g = serial();
    for compat in ["0.10", "1.1"] {
        let dir = tempdir();
        // Raw base ending 1 KiB into a cluster.
        let base_len = MIB + 64 * KIB + 1024;
        raw_base(dir.path(), base_len);
        let over = dir.path().join("over.qcow2");
        let options = format!("compat={compat}");
        create(&over, &options, Some(("base.raw", "raw")), 4 * MIB);
        qemu_io(
            "qcow2",
            &over,
            &[
                // A partial write in the cluster where the base ends (COW of base data and zeros).
                &format!("write -P 0x61 {} 512", MIB + 64 * KIB + 4096),
                // Partial write in the cluster before it.
                &format!("write -P 0x62 {} 512", MIB + 100),
                &format!("write -z {} 64k", 2 * MIB),
                &format!("discard {} 64k", MIB - 64 * KIB),
            ],
        );
        assert_reads_like_qemu(&over, &format!("overlay of a short raw, {options}"));

        // qcow2 middle layer shorter than the top, itself over the short raw base.
        let mid = dir.path().join("mid.qcow2");
        create(&mid, &options, Some(("base.raw", "raw")), 2 * MIB + 512);
        qemu_io("qcow2", &mid, &["write -P 0x63 1900k 148k"]);
        let top = dir.path().join("top.qcow2");
        create(&top, &options, Some(("mid.qcow2", "qcow2")), 6 * MIB);
        qemu_io(
            "qcow2",
            &top,
            &[
                "write -P 0x64 2047k 2k",
                "write -P 0x65 5M 4k",
                "discard 1M 64k",
            ],
        );
        assert_reads_like_qemu(&top, &format!("qcow2 over shorter qcow2, {options}"));
    }
}

#[test]
fn standard_script_stays_inside_the_image() {
    for cluster in [512, 4 * KIB, 64 * KIB, 2 * MIB] {
        let size = matrix_size(cluster);
        for (start, len) in touched_windows(&standard_script(cluster, size), 0, size) {
            assert!(start + len <= size, "{cluster}: {start}+{len} > {size}");
        }
    }
}

/// The refcount widths outside the main matrix (2, 4 and 32 bits), with 4 KiB clusters.
#[test]
fn other_refcount_widths() {
    let _g = serial();
    for bits in [2, 4, 32] {
        check_cell(
            &format!("compat=1.1,cluster_size=4k,refcount_bits={bits}"),
            4 * KIB,
            matrix_size(4 * KIB),
        );
    }
}

/// Compressed writes through the library into images with narrow refcounts (1 and 2 bits: a host cluster
/// holding several compressed clusters would overflow its refcount, so a new one is started as QEMU does):
/// qemu-img finds the image clean and reads back what was written.
#[test]
fn compressed_writes_with_narrow_refcounts() {
    let _g = serial();
    let dir = tempdir();
    for bits in ["1", "2"] {
        let image = dir.path().join(format!("c{bits}.qcow2"));
        let create = create_options(MIB, &[("cluster_size", "4k"), ("refcount_bits", bits)])
            .expect("create options");
        Qcow2::create(&image, &create, &blk_core::DenyNamedImages).expect("create");
        let data = mixed_data(MIB as usize);
        {
            let disk = support::open_disk(&image, &rw()).expect("open");
            for (i, chunk) in data.chunks(4096).enumerate() {
                disk.write_compressed(i as u64 * 4096, chunk)
                    .unwrap_or_else(|e| panic!("{bits}-bit refcounts: compressed write {i}: {e}"));
            }
            disk.flush().expect("flush");
        }
        assert_qemu_check_clean(&image);
        assert_same(
            &qemu_contents(&image, "qcow2"),
            &data,
            &format!("{bits}-bit"),
        );
    }
}
