//! `blk` on QCOW2 against qemu-img and qemu-io: the same qemu-io write script replayed by `blk io` on a
//! `blk create`-made image gives an image `qemu-img check` finds clean and `qemu-img compare` finds equal to
//! QEMU's result; `blk convert -c` / `-B` output read by qemu-img; `blk map`, `info` and `check` print what
//! qemu-img prints for the same images.
//!
//! Map offsets: `blk map` and `qemu-img map` on the *same* image are compared key for key, `offset` included.
//! Between an image written by blk and the one written by QEMU with the same script, only `offset` is ignored:
//! the two writers may place clusters at different host offsets (allocation order, refcount-block placement,
//! compressed-cluster packing), but the guest-visible status (`present`, `zero`, `data`, `compressed`, `depth`)
//! of every run must be the same.
#![cfg(feature = "qcow2")]

#[path = "../../blk-qcow/tests/interop/cli_compare.rs"]
mod cli_compare;
mod common;
#[path = "../../blk-qcow/tests/interop/script.rs"]
mod script;

use cli_compare::*;
use common::{code, ok, qemu_io_args, stderr, stdout, Scratch};
use script::{mixed_data, random_script, standard_script};
use serde_json::Value;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// v3 with the default 64 KiB clusters and 16-bit refcounts, without and with a raw backing file.
#[test]
fn replay_v3_64k() {
    replay_cell("compat=1.1", 64 * KIB, false);
    replay_cell("compat=1.1", 64 * KIB, true);
}

/// v2 (compat 0.10) without backing file: zero writes allocate zeroed clusters (no zero flag).
#[test]
fn replay_v2() {
    replay_cell("compat=0.10", 64 * KIB, false);
}

/// v2 (compat 0.10) over a raw backing file: QEMU ignores discards there (unallocating would expose the backing
/// file, and v2 has no zero flag), and writes zeroes as allocated zero clusters.
#[test]
fn replay_v2_with_backing_file() {
    replay_cell("compat=0.10,cluster_size=4k", 4 * KIB, true);
}

/// Small clusters and narrow / wide refcounts: 512-byte clusters with 64-bit refcounts, 4 KiB with 1-bit.
#[test]
fn replay_small_clusters_odd_refcounts() {
    replay_cell("compat=1.1,cluster_size=512,refcount_bits=64", 512, false);
    replay_cell("compat=1.1,cluster_size=4k,refcount_bits=1", 4 * KIB, true);
    replay_cell("compat=1.1,cluster_size=4k,refcount_bits=8", 4 * KIB, false);
}

/// 2 MiB clusters with 8-bit refcounts, with a backing file.
#[test]
fn replay_2m_clusters() {
    replay_cell("compat=1.1,cluster_size=2M,refcount_bits=8", 2 * MIB, true);
}

/// `aio_flush`, part of the qemu-io scripts QEMU's tests use, is accepted by `blk io`.
#[test]
fn io_accepts_aio_flush() {
    let s = Scratch::new();
    ok(&s.blk(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    let out = s.blk(&[
        "io",
        "-f",
        "qcow2",
        "-c",
        "write 0 4k",
        "-c",
        "aio_flush",
        "a.qcow2",
    ]);
    assert_eq!(code(&out), 0, "blk io aio_flush: {}", stderr(&out));
}

/// Writes a 3 MiB + 1.5 KiB raw source of mixed data (patterns, zeros, noise) with a qemu-io touch-up.
fn mixed_source(s: &Scratch) {
    s.write("src.raw", &mixed_data((3 * MIB + 1536) as usize));
}

/// `blk convert -c -O qcow2` (zlib and zstd, v2 and v3, several cluster sizes): qemu-img reads the result as the
/// source (`compare` exit 0, `check` clean); `blk map`/`info`/`check` agree with qemu-img on it, and its
/// allocation status equals that of `qemu-img convert -c`'s output.
#[test]
fn convert_compressed_read_by_qemu() {
    let s = Scratch::new();
    mixed_source(&s);
    for options in [
        "compat=0.10",
        "compression_type=zlib",
        "compression_type=zstd",
        "compression_type=zstd,cluster_size=4k,refcount_bits=1",
        "compression_type=zlib,cluster_size=512",
    ] {
        let args = [
            "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, "src.raw",
        ];
        let mut blk_args = args.to_vec();
        blk_args.push("b.qcow2");
        let out = s.blk(&blk_args);
        assert_eq!(
            code(&out),
            0,
            "blk convert -c -o {options}: {}",
            stderr(&out)
        );
        let mut qemu_args = args.to_vec();
        qemu_args.push("q.qcow2");
        ok(&s.qemu_img(&qemu_args));
        assert_qemu_clean(&s, "b.qcow2");
        assert_qemu_same(&s, "src.raw", "b.qcow2");
        let blk_map = assert_map_matches(&s, "b.qcow2");
        let qemu_map = assert_map_matches(&s, "q.qcow2");
        // Different deflate/zstd implementations (flate2's backend vs QEMU's zlib with a 4 KiB window, other
        // zstd versions) give different compressed sizes, so a cluster near the "smaller than a cluster" limit
        // may be stored compressed by one writer and plainly by the other: `compressed` is ignored here too.
        assert_same_runs(
            &without_keys(&blk_map, &["offset", "compressed"]),
            &without_keys(&qemu_map, &["offset", "compressed"]),
            &format!("convert -c -o {options}: allocation status"),
        );
        assert_check_matches(&s, "b.qcow2");
        assert_check_matches(&s, "q.qcow2");
        assert_info_matches(&s, "q.qcow2", false);
    }
}

/// Like `qemu-img convert -c`, which ends with an empty compressed write that aligns the end of the file to a
/// sector, `blk convert -c` leaves a file whose length is a multiple of 512, and `blk info` reports the file
/// child as qemu-img does.
#[test]
fn convert_compressed_aligns_file_end() {
    let s = Scratch::new();
    mixed_source(&s);
    let out = s.blk(&[
        "convert", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "b.qcow2",
    ]);
    assert_eq!(code(&out), 0, "blk convert -c: {}", stderr(&out));
    let len = std::fs::metadata(s.path("b.qcow2")).unwrap().len();
    assert_eq!(len % 512, 0, "file length {len} of blk convert -c output");
    assert_info_matches(&s, "b.qcow2", false);
}

/// `blk info` on a qcow2 file whose length is not a multiple of 512 (the tail of a compressed cluster written
/// by a tool that does not pad): the file child's `virtual-size` is rounded up to a sector, as QEMU's
/// `bdrv_getlength` does.
#[test]
fn info_rounds_file_child_size_to_sectors() {
    let s = Scratch::new();
    mixed_source(&s);
    ok(&s.qemu_img(&[
        "convert", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "q.qcow2",
    ]));
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(s.path("q.qcow2"))
        .unwrap();
    file.set_len(file.metadata().unwrap().len() + 100).unwrap();
    drop(file);
    assert_info_matches(&s, "q.qcow2", false);
}

/// `blk convert -O qcow2 -B base -F raw`: the result compares equal to the source with qemu-img, is clean,
/// names the backing file as qemu-img's does, and only holds what differs from the backing file.
#[test]
fn convert_with_backing_file() {
    let s = Scratch::new();
    let size = 4 * MIB + 1536;
    s.write("base.raw", &mixed_data(size as usize));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "src.qcow2",
    ]));
    let script = standard_script(64 * KIB, size);
    ok(&s.qemu_io(&qemu_io_args("qcow2", "src.qcow2", &script)));
    let args = [
        "convert",
        "-O",
        "qcow2",
        "-B",
        "base.raw",
        "-F",
        "raw",
        "src.qcow2",
    ];
    let mut blk_args = args.to_vec();
    blk_args.push("b.qcow2");
    let out = s.blk(&blk_args);
    assert_eq!(code(&out), 0, "blk convert -B: {}", stderr(&out));
    let mut qemu_args = args.to_vec();
    qemu_args.push("q.qcow2");
    ok(&s.qemu_img(&qemu_args));
    assert_qemu_clean(&s, "b.qcow2");
    assert_qemu_same(&s, "src.qcow2", "b.qcow2");
    assert_info_matches(&s, "b.qcow2", true);
    assert_same_allocation(&s, "b.qcow2", "q.qcow2", "convert -B: allocation status");
}

/// A qemu-made chain raw <- qcow2 (v2) <- qcow2 (v3) with zero clusters and discards: `blk info --backing-chain`,
/// `map` (depths through the chain) and `check` of each layer print what qemu-img prints.
#[test]
fn backing_chain_info_map_check() {
    let s = Scratch::new();
    let size = 4 * MIB + 1536;
    s.write("base.raw", &mixed_data((2 * MIB + 1024) as usize));
    let size_text = size.to_string();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
        &size_text,
    ]));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
        &size_text,
    ]));
    for (image, cluster) in [("mid.qcow2", 64 * KIB), ("top.qcow2", 4 * KIB)] {
        let script = standard_script(cluster, size);
        ok(&s.qemu_io(&qemu_io_args("qcow2", image, &script)));
    }
    for image in ["mid.qcow2", "top.qcow2"] {
        assert_info_matches(&s, image, false);
        assert_info_matches(&s, image, true);
        assert_map_matches(&s, image);
        assert_check_matches(&s, image);
    }
}

/// `blk check` on clean qemu-made images of every kind: same exit code and JSON counters as qemu-img.
#[test]
fn check_clean_qemu_images() {
    let s = Scratch::new();
    mixed_source(&s);
    for (i, options) in [
        "compat=0.10",
        "compat=1.1,cluster_size=512,refcount_bits=1",
        "compat=1.1,cluster_size=4k,refcount_bits=64",
        "compat=1.1,cluster_size=2M,refcount_bits=8",
        "compat=1.1,lazy_refcounts=on",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("c{i}.qcow2");
        ok(&s.qemu_img(&[
            "convert", "-f", "raw", "-O", "qcow2", "-o", options, "src.raw", &name,
        ]));
        assert_check_matches(&s, &name);
        let name = format!("z{i}.qcow2");
        ok(&s.qemu_img(&[
            "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, "src.raw", &name,
        ]));
        assert_check_matches(&s, &name);
        assert_map_matches(&s, &name);
        assert_info_matches(&s, &name, false);
    }
}

/// Error cases agree with qemu-img: `-o` option combinations qemu-img refuses are refused (exit 1) by
/// `blk create`.
#[test]
fn create_refuses_what_qemu_img_refuses() {
    let s = Scratch::new();
    for options in [
        "compat=0.10,refcount_bits=8",
        "cluster_size=1k,refcount_bits=3",
        "cluster_size=4M",
        "cluster_size=256",
        "compat=0.10,compression_type=zstd",
    ] {
        let args = [
            "create", "-q", "-f", "qcow2", "-o", options, "x.qcow2", "1M",
        ];
        let theirs = s.qemu_img(&args);
        let ours = s.blk(&args);
        assert_eq!(code(&theirs), 1, "qemu-img create -o {options}");
        assert_eq!(code(&ours), 1, "blk create -o {options}: {}", stderr(&ours));
        let _ = std::fs::remove_file(s.path("x.qcow2"));
    }
}

/// `blk create -f qcow2` writes what `qemu-img create` writes (header, extensions, refcount table and block,
/// L1 table), byte for byte, and a file of the same length.
#[test]
fn create_layout_matches_qemu_img() {
    let s = Scratch::new();
    s.write("base.raw", &[7u8; 4096]);
    let mut mismatches = Vec::new();
    for options in [
        "compat=1.1",
        "compat=0.10",
        "cluster_size=512,refcount_bits=64",
        "cluster_size=4k,refcount_bits=1",
        "cluster_size=4k",
        "cluster_size=8k",
        "cluster_size=2M,refcount_bits=8",
        "lazy_refcounts=on,compression_type=zstd",
        "preallocation=metadata",
    ] {
        for backing in [false, true] {
            if backing && options.starts_with("preallocation") {
                continue;
            }
            let mut args = vec!["create", "-q", "-f", "qcow2", "-o", options];
            if backing {
                args.extend(["-b", "base.raw", "-F", "raw"]);
            }
            let mut qemu_args = args.clone();
            qemu_args.extend(["q.qcow2", "5M"]);
            ok(&s.qemu_img(&qemu_args));
            let mut blk_args = args;
            blk_args.extend(["b.qcow2", "5M"]);
            ok(&s.blk(&blk_args));
            let (q, b) = (s.read("q.qcow2"), s.read("b.qcow2"));
            let common = q.len().min(b.len());
            let what = format!("-o {options} backing={backing}");
            if let Some(i) = (0..common).find(|&i| q[i] != b[i]) {
                mismatches.push(format!("{what}: first difference at byte {i}"));
            } else if b.len() != q.len() {
                mismatches.push(format!(
                    "{what}: file length {} (qemu-img: {})",
                    b.len(),
                    q.len()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "layout differences:\n{}",
        mismatches.join("\n")
    );
}

/// `blk io` writes into compressed clusters (partial overwrites, zeroes, discards) of qemu-made zlib and zstd
/// images like qemu-io does.
#[test]
fn replay_into_compressed_images() {
    let s = Scratch::new();
    mixed_source(&s);
    for (options, cluster) in [
        ("compat=0.10", 64 * KIB),
        ("compression_type=zstd,cluster_size=4k", 4 * KIB),
        (
            "compression_type=zlib,cluster_size=4k,refcount_bits=2",
            4 * KIB,
        ),
    ] {
        ok(&s.qemu_img(&[
            "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", options, "src.raw", "c.qcow2",
        ]));
        let script = standard_script(cluster, 3 * MIB + 1536);
        replay_on_copies(&s, "c.qcow2", &script, options);
    }
}

/// `blk io` on a qemu-made overlay of a qcow2 backing file (raw <- qcow2 <- qcow2) gives what qemu-io gives.
#[test]
fn replay_on_qcow2_chain() {
    let s = Scratch::new();
    let size = 4 * MIB + 1536;
    s.write("base.raw", &mixed_data((3 * MIB) as usize));
    let size_text = size.to_string();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
        &size_text,
    ]));
    let script = standard_script(64 * KIB, size);
    ok(&s.qemu_io(&qemu_io_args("qcow2", "mid.qcow2", &script)));
    for options in ["compat=1.1,cluster_size=4k", "compat=0.10,cluster_size=4k"] {
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            options,
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            &size_text,
        ]));
        // Shifted by half a 64 KiB cluster against the middle layer's writes.
        let script: Vec<String> = standard_script(4 * KIB, size)
            .into_iter()
            .chain([
                "write -P 0x19 32k 64k".to_string(),
                "write -z 160k 64k".to_string(),
                "discard 224k 128k".to_string(),
            ])
            .collect();
        replay_on_copies(&s, "top.qcow2", &script, options);
    }
}

/// `blk map -s/-l` on sub-ranges starting and ending inside clusters equals `qemu-img map` with the same
/// options.
#[test]
fn map_sub_ranges() {
    let s = Scratch::new();
    let size = 4 * MIB + 1536;
    s.write("base.raw", &mixed_data((2 * MIB) as usize));
    let size_text = size.to_string();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "m.qcow2",
        &size_text,
    ]));
    let script = standard_script(4 * KIB, size);
    ok(&s.qemu_io(&qemu_io_args("qcow2", "m.qcow2", &script)));
    for (start, len) in [
        ("0", "100000"),
        ("1000", "5000"),
        ("4097", "61440"),
        ("2000000", "200000"),
        ("4194000", "2000"),
        ("4195000", "10000"),
    ] {
        for output in ["--output=json", "--output=human"] {
            let args = [
                "map", output, "-f", "qcow2", "-s", start, "-l", len, "m.qcow2",
            ];
            let theirs = s.qemu_img(&args);
            let ours = s.blk(&args);
            assert_eq!(code(&ours), code(&theirs), "{args:?}: {}", stderr(&ours));
            assert_eq!(stdout(&ours), stdout(&theirs), "{args:?}");
        }
    }
}

/// `blk convert -O qcow2` of a qcow2 chain (without `-B`) flattens it as qemu-img does: equal contents, clean,
/// same allocation status.
#[test]
fn convert_flattens_chain() {
    let s = Scratch::new();
    let size = 4 * MIB + 1536;
    s.write("base.raw", &mixed_data((3 * MIB) as usize));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
        &size.to_string(),
    ]));
    let script = standard_script(64 * KIB, size);
    ok(&s.qemu_io(&qemu_io_args("qcow2", "top.qcow2", &script)));
    for options in ["compat=1.1", "compat=0.10,cluster_size=4k"] {
        let args = ["convert", "-O", "qcow2", "-o", options, "top.qcow2"];
        let mut blk_args = args.to_vec();
        blk_args.push("b.qcow2");
        let out = s.blk(&blk_args);
        assert_eq!(code(&out), 0, "blk convert -o {options}: {}", stderr(&out));
        let mut qemu_args = args.to_vec();
        qemu_args.push("q.qcow2");
        ok(&s.qemu_img(&qemu_args));
        assert_qemu_clean(&s, "b.qcow2");
        assert_qemu_same(&s, "top.qcow2", "b.qcow2");
        assert_same_allocation(
            &s,
            "b.qcow2",
            "q.qcow2",
            &format!("convert -o {options}: allocation status"),
        );
        assert_info_matches(&s, "b.qcow2", false);
    }
}

/// Random request mixes replayed by qemu-io and `blk io` on images made by `blk create` and `qemu-img create`
/// (several formats, with and without a raw backing file): clean, equal, same allocation status.
#[test]
fn replay_random_scripts() {
    for (seed, options, cluster, backing) in [
        (1, "compat=1.1,cluster_size=4k", 4 * KIB, false),
        (2, "compat=1.1,cluster_size=512,refcount_bits=1", 512, true),
        (3, "compat=1.1", 64 * KIB, true),
        (
            4,
            "compat=1.1,cluster_size=16k,refcount_bits=32",
            16 * KIB,
            false,
        ),
        (
            5,
            "compat=1.1,lazy_refcounts=on,cluster_size=4k",
            4 * KIB,
            true,
        ),
    ] {
        let s = Scratch::new();
        let size = 2 * MIB + 3 * 512;
        create_twins(&s, options, size, backing.then_some((MIB + 1024) as usize));
        let what = format!("seed {seed} -o {options} backing={backing}");
        replay(
            &s,
            &random_script(seed, 150, size, cluster),
            "q.qcow2",
            "b.qcow2",
        );
        let out = s.qemu_img(&["check", "-f", "qcow2", "b.qcow2"]);
        assert_eq!(code(&out), 0, "{what}: qemu-img check: {}", stdout(&out));
        let out = s.qemu_img(&["compare", "q.qcow2", "b.qcow2"]);
        assert_eq!(code(&out), 0, "{what}: qemu-img compare: {}", stdout(&out));
        assert_same_allocation(
            &s,
            "b.qcow2",
            "q.qcow2",
            &format!("{what}: allocation status"),
        );
        assert_check_matches(&s, "b.qcow2");
        assert_check_matches(&s, "q.qcow2");
    }
}

/// Enough data that blk must add refcount blocks and grow the refcount table (512-byte clusters with 64-bit
/// refcounts: a refcount block covers 32 KiB of file, the first refcount table 2 MiB): qemu-img finds the image
/// clean and equal to the source.
#[test]
fn refcount_table_growth() {
    let s = Scratch::new();
    s.write("src.raw", &mixed_data((6 * MIB) as usize));
    for options in [
        "cluster_size=512,refcount_bits=64",
        "cluster_size=512,refcount_bits=16",
    ] {
        let out = s.blk(&[
            "convert", "-f", "raw", "-O", "qcow2", "-o", options, "src.raw", "b.qcow2",
        ]);
        assert_eq!(code(&out), 0, "blk convert -o {options}: {}", stderr(&out));
        assert_qemu_clean(&s, "b.qcow2");
        assert_qemu_same(&s, "src.raw", "b.qcow2");
        assert_check_matches(&s, "b.qcow2");
        // Then the same through blk io on a blk-created image.
        ok(&s.blk(&[
            "create", "-q", "-f", "qcow2", "-o", options, "c.qcow2", "8M",
        ]));
        let out = s.blk(&[
            "io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5e 0 7M",
            "-c",
            "write -P 0x5f 7M 1M",
            "c.qcow2",
        ]);
        assert_eq!(code(&out), 0, "blk io: {}", stderr(&out));
        assert_qemu_clean(&s, "c.qcow2");
        assert_check_matches(&s, "c.qcow2");
    }
}

/// `blk create -o preallocation=falloc|full` then the standard script with `blk io`: clean and equal to QEMU's
/// result, and qemu-img map's status of both images is the same.
#[test]
fn replay_on_preallocated_images() {
    for prealloc in ["falloc", "full"] {
        let options = format!("preallocation={prealloc},cluster_size=4k");
        replay_cell(&options, 4 * KIB, false);
    }
}

/// `preallocation=metadata` leaves data clusters over holes of the host file: qemu-img map reports them
/// `"data": true, "zero": true` (QEMU asks the host file whether a data cluster's range is a hole), and so must
/// `blk map`. A `DiskFile::map` extent cannot say "data that reads as zeros" yet.
#[test]
fn replay_on_metadata_preallocated_image() {
    replay_cell("preallocation=metadata,cluster_size=4k", 4 * KIB, false);
}

/// A raw backing file whose length is not a multiple of 512: QEMU counts the raw image as rounded up to a whole
/// sector (`qemu-img info` says 1049600 for a 1049276-byte file) and `qemu-img map` of the overlay shows the
/// partial sector as present zeros at depth 1. Reads agree either way (zeros).
#[test]
fn map_over_unaligned_raw_backing_file() {
    let s = Scratch::new();
    s.write("base.raw", &mixed_data((MIB + 700) as usize));
    ok(&s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "o.qcow2", "2M",
    ]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 4k", "o.qcow2"]));
    assert_qemu_same(&s, "o.qcow2", "o.qcow2");
    assert_map_matches(&s, "o.qcow2");
    assert_info_matches(&s, "base.raw", false);
}

/// Zero writes smaller than a cluster into an unallocated cluster that already reads as zeros through the
/// backing file (past the end of a shorter backing file): QEMU sets the zero flag on the whole cluster instead
/// of allocating one, and so does blk (same `qemu-img map`).
#[test]
fn sub_cluster_zero_write_past_backing_end() {
    let s = Scratch::new();
    s.write("base.raw", &mixed_data(64 * 1024));
    for (name, tool) in [("q.qcow2", "qemu"), ("b.qcow2", "blk")] {
        let args = [
            "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", name, "1M",
        ];
        ok(&if tool == "qemu" {
            s.qemu_img(&args)
        } else {
            s.blk(&args)
        });
    }
    let script: Vec<String> = [
        "write -z 200000 32",
        "write -z -u 300000 1000",
        "write -z 100 32",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    replay(&s, &script, "q.qcow2", "b.qcow2");
    assert_qemu_clean(&s, "b.qcow2");
    assert_qemu_same(&s, "q.qcow2", "b.qcow2");
    assert_same_allocation(&s, "b.qcow2", "q.qcow2", "allocation status");
}

/// A v2 image over a backing file: QEMU ignores discards (v2 has no zero flag, and unallocating would expose
/// the backing file's data), so the guest still reads what was written.
#[test]
fn v2_discard_over_backing_file_is_ignored() {
    let s = Scratch::new();
    s.write("base.raw", &mixed_data(MIB as usize));
    for (name, tool) in [("q.qcow2", "qemu"), ("b.qcow2", "blk")] {
        let args = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-b",
            "base.raw",
            "-F",
            "raw",
            name,
        ];
        ok(&if tool == "qemu" {
            s.qemu_img(&args)
        } else {
            s.blk(&args)
        });
    }
    let script: Vec<String> = ["write -P 0x11 0 192k", "discard 64k 64k", "discard 0 1M"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    replay(&s, &script, "q.qcow2", "b.qcow2");
    assert_qemu_clean(&s, "b.qcow2");
    assert_qemu_same(&s, "q.qcow2", "b.qcow2");
    assert_same_allocation(&s, "b.qcow2", "q.qcow2", "allocation status");
}

/// Makes `s.qcow2`: data, an internal snapshot `snap1` (made by `qemu-img snapshot -c`), more data.
fn image_with_snapshot(s: &Scratch) {
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "4M"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 0x11 0 1M", "s.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "snap1", "s.qcow2"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 0x22 512k 64k", "s.qcow2"]));
}

/// Writes through `blk io` into clusters an internal snapshot shares (refcount 2, COPIED clear) copy them as
/// qemu-io does: the active layer equals QEMU's result, the snapshot's contents are intact, the image is clean,
/// and `blk check` agrees with qemu-img on it.
#[test]
fn writes_keep_internal_snapshots_intact() {
    let s = Scratch::new();
    image_with_snapshot(&s);
    assert_check_matches(&s, "s.qcow2");
    let script: Vec<String> = [
        "write -P 0x33 0 128k",
        "discard 256k 64k",
        "write -z 320k 64k",
        "write -P 0x44 700k 3k",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    replay_on_copies(&s, "s.qcow2", &script, "image with a snapshot");
    for image in ["q.qcow2", "b.qcow2"] {
        let raw = format!("{image}.snap1.raw");
        ok(&s.qemu_img(&["convert", "-l", "snap1", "-O", "raw", image, &raw]));
    }
    assert!(
        s.read("q.qcow2.snap1.raw") == s.read("b.qcow2.snap1.raw"),
        "snapshot contents after blk's writes"
    );
}

/// `blk info` lists internal snapshots as `qemu-img info` does (`snapshots` in JSON, the snapshot table in
/// human output).
#[test]
fn info_lists_internal_snapshots() {
    let s = Scratch::new();
    image_with_snapshot(&s);
    assert_info_matches(&s, "s.qcow2", false);
}

/// `blk create -f qcow2` prints qemu-img's `Formatting ...` line: every creation option in qemu-img's order,
/// with its normalized value (`cluster_size=65536`, `extended_l2=off`, ...).
#[test]
fn create_prints_qemu_img_formatting_line() {
    let s = Scratch::new();
    s.write("base.raw", &[0u8; 4096]);
    for extra in [
        &[][..],
        &["-o", "cluster_size=4k,refcount_bits=1"][..],
        &["-o", "compat=0.10"][..],
        &["-b", "base.raw", "-F", "raw"][..],
        &["-o", "compression_type=zstd,lazy_refcounts=on"][..],
    ] {
        let mut args = vec!["create", "-f", "qcow2"];
        args.extend_from_slice(extra);
        let mut qemu_args = args.clone();
        qemu_args.extend(["x.qcow2", "1G"]);
        let theirs = ok(&s.qemu_img(&qemu_args));
        args.extend(["x.qcow2", "1G"]);
        let ours = ok(&s.blk(&args));
        assert_eq!(ours, theirs, "blk create {extra:?}");
    }
}

/// A `lazy_refcounts=on` image left dirty by a crashed qemu-io (`abort`): `blk info` and `blk check` print
/// what qemu-img prints, and a `blk io` write (a writable open repairs the refcounts first) leaves an image
/// qemu-img finds clean and equal to qemu-io's result.
#[test]
fn dirty_lazy_refcounts_image() {
    let s = Scratch::new();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        "d.qcow2",
        "4M",
    ]));
    // qemu-io's `abort` kills it with SIGABRT after the write: the dirty bit stays set.
    let _ = s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 1M",
        "-c",
        "abort",
        "d.qcow2",
    ]);
    let info = json(
        &s.qemu_img(&["info", "--output=json", "-U", "d.qcow2"]),
        "qemu-img info",
    );
    assert_eq!(info["dirty-flag"], Value::Bool(true), "the image is dirty");
    assert_info_matches(&s, "d.qcow2", false);
    assert_check_matches(&s, "d.qcow2");
    let script = vec![
        "write -P 0x22 2M 64k".to_string(),
        "write -z 0 64k".to_string(),
    ];
    replay_on_copies(&s, "d.qcow2", &script, "dirty lazy-refcounts image");
}

/// `blk info` shows persistent dirty bitmaps in `format-specific` (`bitmaps: [{flags, name, granularity}]`) as
/// `qemu-img info` does.
#[test]
fn info_lists_bitmaps() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]));
    ok(&s.qemu_img(&["bitmap", "--add", "b.qcow2", "b0"]));
    ok(&s.qemu_img(&[
        "bitmap",
        "--add",
        "-g",
        "128k",
        "--disable",
        "b.qcow2",
        "b1",
    ]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write 0 64k", "b.qcow2"]));
    assert_info_matches(&s, "b.qcow2", false);
}

/// `blk convert -O qcow2 -B mid.qcow2 -F qcow2` of the top of a raw <- qcow2 <- qcow2 chain (plain, 512-byte
/// clusters, compressed with zstd): equal to the source, clean, and the same allocation status as qemu-img's
/// conversion.
#[test]
fn convert_with_qcow2_backing_file() {
    let s = Scratch::new();
    s.write("base.raw", &mixed_data((3 * MIB) as usize));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
    ]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 1 1M 256k",
        "-c",
        "write -z 0 64k",
        "mid.qcow2",
    ]));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
        "4M",
    ]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 2 1100k 10k",
        "-c",
        "discard 1M 64k",
        "-c",
        "write -z 2M 4k",
        "-c",
        "write -P 3 3500k 100k",
        "top.qcow2",
    ]));
    for extra in [
        &[][..],
        &["-o", "cluster_size=512"][..],
        &["-c", "-o", "compression_type=zstd"][..],
    ] {
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(extra);
        args.extend(["-B", "mid.qcow2", "-F", "qcow2", "top.qcow2"]);
        let mut blk_args = args.clone();
        blk_args.push("b.qcow2");
        let out = s.blk(&blk_args);
        assert_eq!(code(&out), 0, "blk {blk_args:?}: {}", stderr(&out));
        let mut qemu_args = args;
        qemu_args.push("q.qcow2");
        ok(&s.qemu_img(&qemu_args));
        assert_qemu_clean(&s, "b.qcow2");
        assert_qemu_same(&s, "top.qcow2", "b.qcow2");
        let blk_map = assert_map_matches(&s, "b.qcow2");
        let qemu_map = assert_map_matches(&s, "q.qcow2");
        assert_same_runs(
            &without_keys(&blk_map, &["offset", "compressed"]),
            &without_keys(&qemu_map, &["offset", "compressed"]),
            &format!("convert {extra:?} -B: allocation status"),
        );
        // blk's compressed output does not end on a sector boundary (see
        // `convert_compressed_aligns_file_end`), which `info_rounds_file_child_size_to_sectors` covers.
        if !extra.contains(&"-c") {
            assert_info_matches(&s, "b.qcow2", true);
        }
    }
}

/// `blk map` through a sparse raw base (its holes read as zeros at depth 1) and a two-level chain prints what
/// qemu-img prints; `blk compare` (plain and `-s`) gives qemu-img's output and exit code on qcow2 images and
/// chains.
#[test]
fn sparse_raw_base_map_and_compare() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "4M"]));
    ok(&s.qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 1 1M 64k",
        "-c",
        "write -P 2 3M 8k",
        "base.raw",
    ]));
    ok(&s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "o.qcow2",
    ]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 3 0 64k", "o.qcow2"]));
    ok(&s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "o.qcow2", "-F", "qcow2", "t.qcow2",
    ]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "4M"]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0 0 64k",
        "-c",
        "write -P 5 1M 4k",
        "a.qcow2",
    ]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 5 1M 4k", "b.qcow2"]));
    assert_map_matches(&s, "o.qcow2");
    assert_map_matches(&s, "t.qcow2");
    for args in [
        &["a.qcow2", "b.qcow2"][..],
        &["-s", "a.qcow2", "b.qcow2"][..],
        &["a.qcow2", "t.qcow2"][..],
        &["o.qcow2", "t.qcow2"][..],
        &["-s", "o.qcow2", "t.qcow2"][..],
        &["a.qcow2", "o.qcow2"][..],
    ] {
        let mut full = vec!["compare"];
        full.extend_from_slice(args);
        let (ours, theirs) = (s.blk(&full), s.qemu_img(&full));
        assert_eq!(
            code(&ours),
            code(&theirs),
            "compare {args:?}: {}",
            stderr(&ours)
        );
        assert_eq!(stdout(&ours), stdout(&theirs), "compare {args:?}");
    }
}

/// `blk io -c "write -c ..."` (qemu-io's compressed write, cluster-aligned) stores compressed clusters like
/// qemu-io: same contents and allocation status, clean image.
#[test]
fn io_write_compressed() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "c.qcow2", "4M"]));
    let script: Vec<String> = ["write -c -P 0x61 0 64k", "write -c -P 0x62 128k 128k"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    replay_on_copies(&s, "c.qcow2", &script, "compressed writes");
}

/// `blk create -u -b missing.raw -F raw x.qcow2 1M` (qemu-img's "unsafe" flag: the backing file is not opened)
/// creates the image as qemu-img does.
#[test]
fn create_unsafe_backing_file() {
    let s = Scratch::new();
    let args = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "missing.raw",
        "-F",
        "raw",
        "x.qcow2",
        "1M",
    ];
    ok(&s.blk(&args));
    let ours = s.read("x.qcow2");
    ok(&s.qemu_img(&args));
    assert!(
        ours == s.read("x.qcow2"),
        "blk create -u wrote what qemu-img writes"
    );
}

/// Requests of megabytes (many clusters and L2 tables at once, unaligned ends) written, zeroed and discarded
/// over each other, with and without backing file, v2 and v3. (Kept to a few MiB: blk's zero writes over
/// allocated clusters sync once per cluster, slow in debug builds.)
#[test]
fn replay_large_requests() {
    let script: Vec<String> = [
        "write -P 1 1000 3M",
        "write -z 100000 1M",
        "discard 500000 1M",
        "write -P 2 3M 1M",
        "write -z -u 2M 700k",
        "write -P 3 1234567 2345678",
        "write -z 0 1M",
        "write -P 4 3M 1M",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    for (options, backing) in [
        ("cluster_size=512", true),
        ("cluster_size=512,compat=0.10", false),
        ("cluster_size=4k,refcount_bits=1", true),
        ("cluster_size=4k,compat=0.10", true),
    ] {
        replay_script_cell(options, 4 * MIB, backing, &script);
    }
}

/// `qemu-img info` does not open backing files (BDRV_O_NO_BACKING): it describes an overlay whose backing file
/// is missing, or whose backing format is not recorded (an image from before backing formats were required),
/// and so must `blk info`.
#[test]
fn info_does_not_open_backing_file() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "gone.raw", "4M"]));
    ok(&s.qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "m.qcow2", "4M",
    ]));
    std::fs::copy(s.path("m.qcow2"), s.path("legacy.qcow2")).unwrap();
    std::fs::remove_file(s.path("gone.raw")).unwrap();
    assert_info_matches(&s, "m.qcow2", false);
    // Drop the backing format extension (the first one, at byte 112, after the v3 header): its magic becomes
    // the end-of-extensions marker. The backing file exists again, but its format is unknown to the image.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "gone.raw", "4M"]));
    let mut legacy = s.read("legacy.qcow2");
    assert_eq!(
        legacy[112..116],
        [0xe2, 0x79, 0x2a, 0xca],
        "backing format extension"
    );
    legacy[112..116].fill(0);
    s.write("legacy.qcow2", &legacy);
    assert_info_matches(&s, "legacy.qcow2", false);
}
