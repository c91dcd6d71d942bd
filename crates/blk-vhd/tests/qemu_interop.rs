//! Interoperability with QEMU: images made and written by qemu-img/qemu-io read back byte-identical through
//! blk (against `qemu-img convert -O raw`), images made and written by blk compare equal with QEMU's via
//! `qemu-img compare`, created metadata is byte-identical to qemu-img's (time stamp, unique id and checksum
//! aside), and `map` gives `qemu-img map`'s runs.

mod common;

use std::path::Path;

use blk_core::{DiskFile, ExtentKind, ImageAdmin};
use common::*;

/// The standard pattern: aligned and unaligned writes, writes across block boundaries, zero writes over
/// allocated and unallocated space, a discard, the last sector. Steps past `size` are dropped.
fn steps(size: u64) -> Vec<WriteStep> {
    let all = [
        WriteStep::Pattern {
            offset: 0,
            len: 128 << 10,
            byte: 0xa7,
        },
        WriteStep::Pattern {
            offset: (2 << 20) - 512,
            len: 1024,
            byte: 0x5c,
        },
        WriteStep::Pattern {
            offset: 3_000_001,
            len: 777,
            byte: 0x11,
        },
        WriteStep::Pattern {
            offset: 6_295_040,
            len: 9 << 10,
            byte: 0x3e,
        },
        WriteStep::Zero {
            offset: 7 << 20,
            len: 64 << 10,
        },
        WriteStep::Zero {
            offset: 4096,
            len: 8192,
        },
        WriteStep::Pattern {
            offset: 8 << 20,
            len: 1 << 20,
            byte: 0x81,
        },
        WriteStep::Discard {
            offset: 8_500_000 & !511,
            len: 128 << 10,
        },
        WriteStep::Zero {
            offset: 8_400_000 & !511,
            len: 4096,
        },
        WriteStep::Pattern {
            offset: size.saturating_sub(512),
            len: 512,
            byte: 0xf0,
        },
        WriteStep::Pattern {
            offset: size.saturating_sub(700),
            len: 300,
            byte: 0x0f,
        },
    ];
    all.into_iter()
        .filter(|s| {
            let (o, l) = s.range();
            o + l <= size
        })
        .collect()
}

const KINDS: &[&[(&str, &str)]] = &[
    &[],
    &[("subformat", "fixed")],
    &[("force_size", "on")],
    &[("subformat", "fixed"), ("force_size", "on")],
];
const SIZES: &[u64] = &[10 << 20, 5_000_000, 16 << 20, 3 * 1024 * 1024 + 4242];

fn o_arg(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn qemu_create(path: &Path, size: u64, pairs: &[(&str, &str)]) {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "vpc"];
    let o = o_arg(pairs);
    if !o.is_empty() {
        args.push("-o");
        args.push(&o);
    }
    args.push(path_str(path));
    args.push(&size);
    run("qemu-img", &args);
}

#[test]
fn qemu_written_images_read_back_identical() {
    if !have_qemu() {
        return;
    }
    let _serial = serial();
    let dir = tempdir();
    for kind in KINDS {
        for &size in SIZES {
            let path = dir.path().join("q.vhd");
            qemu_create(&path, size, kind);
            let disk = open_ro(&path);
            let steps = steps(disk.logical_size());
            drop(disk);
            qemu_io("vpc", &path, &qemu_io_commands(&steps));
            let expected = qemu_raw("vpc", &path, dir.path());
            let disk = open_ro(&path);
            assert_eq!(
                disk.logical_size(),
                expected.len() as u64,
                "{kind:?} {size}"
            );
            assert!(
                read_all(&disk) == expected,
                "{kind:?} {size}: contents differ"
            );
        }
    }
}

/// The file length, then the first 1536 bytes and BAT of a sparse image (or nothing for a fixed one) and the
/// end footer, with time stamp, checksum and unique id zeroed.
fn metadata(path: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut out = len.to_be_bytes().to_vec();
    let mut head = vec![0u8; 1536.min(len as usize)];
    file.read_exact_at(&mut head, 0).unwrap();
    let mask = |v: &mut [u8]| {
        for r in [24..28, 64..68, 68..84] {
            v[r].fill(0);
        }
    };
    if head.len() == 1536 && head.starts_with(b"conectix") {
        mask(&mut head[..512]);
        let bat_len = len as usize - 512 - 1536;
        let mut bat = vec![0u8; bat_len.min(8 << 20)];
        file.read_exact_at(&mut bat, 1536).unwrap();
        out.extend_from_slice(&head);
        out.extend_from_slice(&bat);
    }
    let mut tail = [0u8; 512];
    file.read_exact_at(&mut tail, len - 512).unwrap();
    mask(&mut tail);
    out.extend_from_slice(&tail);
    out
}

/// qemu-img create and blk create give the same footer, header and BAT (time stamp, unique id, checksum aside).
#[test]
fn created_metadata_matches_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = serial();
    let dir = tempdir();
    for kind in KINDS {
        for &size in SIZES.iter().chain(&[1u64 << 30, 0, 512, 1_000_000_000_000]) {
            let q = dir.path().join("q.vhd");
            let b = dir.path().join("b.vhd");
            qemu_create(&q, size, kind);
            create(&b, Some(size), kind);
            let (qb, bb) = (metadata(&q), metadata(&b));
            assert_eq!(qb.len(), bb.len(), "{kind:?} {size}");
            assert!(qb == bb, "{kind:?} {size}: metadata differs");
            let qd = open_ro(&q);
            let bd = open_ro(&b);
            assert_eq!(qd.logical_size(), bd.logical_size());
        }
    }
    let e = blk_vhd::Vhd::create(
        dir.path().join("big.vhd"),
        &blk_vhd::VhdCreateOptions::from_key_values(Some(2041 << 30), &kv(&[("force_size", "on")]))
            .unwrap(),
        &blk_core::DenyNamedImages,
    )
    .unwrap_err();
    assert_eq!(e.kind(), blk_core::ErrorKind::InvalidInput);
}

#[test]
fn blk_written_images_compare_equal_with_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = serial();
    let dir = tempdir();
    for kind in KINDS {
        for &size in SIZES {
            let q = dir.path().join("q.vhd");
            let b = dir.path().join("b.vhd");
            qemu_create(&q, size, kind);
            create(&b, Some(size), kind);
            let disk = open_rw(&b);
            let steps = steps(disk.logical_size());
            replay(&disk, &steps);
            drop(disk);
            qemu_io("vpc", &q, &qemu_io_commands(&steps));
            let expected = dir.path().join("expected.raw");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "vpc",
                    "-O",
                    "raw",
                    path_str(&q),
                    path_str(&expected),
                ],
            );
            qemu_compare("vpc", &b, "raw", &expected);
            // And blk reads back what it wrote.
            let disk = open_ro(&b);
            assert!(
                read_all(&disk) == std::fs::read(&expected).unwrap(),
                "{kind:?} {size}"
            );
        }
    }
}

#[derive(Debug, PartialEq)]
struct Run {
    start: u64,
    length: u64,
    present: bool,
    zero: bool,
    data: bool,
    offset: Option<u64>,
}

fn qemu_map(path: &Path) -> Vec<Run> {
    let out = run(
        "qemu-img",
        &["map", "-f", "vpc", "--output=json", path_str(path)],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| Run {
            start: r["start"].as_u64().unwrap(),
            length: r["length"].as_u64().unwrap(),
            present: r["present"].as_bool().unwrap(),
            zero: r["zero"].as_bool().unwrap(),
            data: r["data"].as_bool().unwrap(),
            offset: r.get("offset").and_then(|o| o.as_u64()),
        })
        .collect()
}

/// blk's map merged as qemu-img merges runs (same status, contiguous offsets).
fn blk_map(disk: &dyn DiskFile) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut pos = 0;
    let size = disk.logical_size();
    while pos < size {
        let e = disk.map(pos, size - pos).unwrap();
        assert!(e.length > 0);
        let run = Run {
            start: e.offset,
            length: e.length,
            present: e.kind != ExtentKind::Unallocated,
            zero: e.kind != ExtentKind::Data,
            data: e.is_allocated_data(),
            offset: e.host_offset,
        };
        pos += e.length;
        if let Some(last) = runs.last_mut() {
            let contiguous = match (last.offset, run.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if (last.present, last.zero, last.data) == (run.present, run.zero, run.data)
                && contiguous
            {
                last.length += run.length;
                continue;
            }
        }
        runs.push(run);
    }
    runs
}

#[test]
fn map_matches_qemu_for_dynamic_images() {
    if !have_qemu() {
        return;
    }
    let _serial = serial();
    let dir = tempdir();
    for &size in SIZES {
        let path = dir.path().join("m.vhd");
        qemu_create(&path, size, &[]);
        let steps = steps(open_ro(&path).logical_size());
        qemu_io("vpc", &path, &qemu_io_commands(&steps));
        let disk = open_ro(&path);
        assert_eq!(blk_map(&disk), qemu_map(&path), "{size}");
        // The same for an image blk wrote.
        let b = dir.path().join("b.vhd");
        create(&b, Some(size), &[]);
        replay(&open_rw(&b), &steps);
        // qemu allocates blocks for zero writes where blk does not: compare the data runs only.
        let ours: Vec<_> = blk_map(&open_ro(&b))
            .into_iter()
            .filter(|r| r.data)
            .map(|r| (r.start, r.length, r.offset.is_some()))
            .collect();
        let theirs: Vec<_> = qemu_map(&b)
            .into_iter()
            .filter(|r| r.data)
            .map(|r| (r.start, r.length, r.offset.is_some()))
            .collect();
        assert_eq!(ours, theirs, "{size}");
    }
}

#[test]
fn info_matches_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = serial();
    let dir = tempdir();
    for kind in KINDS {
        let path = dir.path().join("i.vhd");
        qemu_create(&path, 5_000_000, kind);
        let out = run(
            "qemu-img",
            &["info", "-f", "vpc", "--output=json", path_str(&path)],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let info = open_ro(&path).image_info().unwrap();
        assert_eq!(info.format, "vpc");
        assert_eq!(Some(info.virtual_size), v["virtual-size"].as_u64());
        assert_eq!(info.cluster_size, v["cluster-size"].as_u64(), "{kind:?}");
        assert_eq!(info.format_specific, None);
        assert!(v.get("format-specific").is_none());
    }
}
