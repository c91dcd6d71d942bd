//! Extended L2 entries (subclusters): images made by qemu-img / qemu-io with `extended_l2=on` read back as
//! `qemu-img convert` reads them, and `map` equals `qemu-img map --output=json` (host offsets included).

mod support;

use std::path::Path;

use blk_core::DiskFile;
use blk_core::ImageAdmin;
use blk_qcow::Qcow2;
use support::*;

/// qemu-io writes, zero writes and discards at subcluster (and unaligned) offsets.
const SCRIPT: &[&str] = &[
    "write -P 1 0 5k",
    "write -P 2 9k 3k",
    "write -P 3 70k 100k",
    "write -z 300k 8k",
    "write -z -u 400k 64k",
    "write -P 4 520k 2k",
    "discard 522k 60k",
    "write -z 600k 1k",
    "write -P 5 1M 256k",
    "discard 1040k 16k",
    "write -z 1100k 3k",
    "write -P 6 1500k 1k",
    "discard 1600k 200k",
];

fn size_arg(s: &str) -> u64 {
    match s.strip_suffix('k') {
        Some(n) => n.parse::<u64>().unwrap() << 10,
        None => match s.strip_suffix('M') {
            Some(n) => n.parse::<u64>().unwrap() << 20,
            None => s.parse().unwrap(),
        },
    }
}

/// Runs one qemu-io command of a script through blk.
fn run_blk(disk: &support::Disk, cmd: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (off, len) = (
        size_arg(words[words.len() - 2]),
        size_arg(words[words.len() - 1]),
    );
    match words[..words.len() - 2] {
        ["write", "-P", v] => disk
            .write_all_at(off, &vec![v.parse::<u8>().unwrap(); len as usize])
            .unwrap(),
        ["write", "-c", "-P", v] => {
            let cs = disk.compressed_write_size().unwrap();
            let buf = vec![v.parse::<u8>().unwrap(); cs as usize];
            let mut o = off;
            while o < off + len {
                disk.write_compressed(o, &buf).unwrap();
                o += cs;
            }
        }
        ["write", "-z"] => disk.write_zeroes(off, len, false).unwrap(),
        ["write", "-z", "-u"] => disk.write_zeroes(off, len, true).unwrap(),
        ["discard"] => disk.discard(off, len).unwrap(),
        _ => panic!("unknown command {cmd}"),
    }
}

/// More writes over [`SCRIPT`]'s: overwrites of zero, unallocated and compressed subclusters.
const SCRIPT2: &[&str] = &[
    "write -c -P 7 1792k 128k",
    "write -P 8 1800k 3k",
    "write -P 9 301k 2k",
    "write -P 10 401k 70k",
    "write -z 1k 3k",
    "write -z 1029k 1k",
    "write -z -u 1040k 3k",
    "discard 1001k 100k",
    "write -P 11 4k 1k",
    "write -z 1601k 1k",
];

#[test]
fn scripts_replayed_by_blk_match_qemu() {
    let _g = serial();
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    std::fs::write(
        &base,
        (0..1800u32 << 10)
            .map(|i| (i % 251) as u8 | 1)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for cluster in ["32k", "64k", "128k"] {
        for backing in [false, true] {
            let theirs = dir.path().join("theirs.qcow2");
            let ours = dir.path().join("ours.qcow2");
            let mut opts = format!("extended_l2=on,cluster_size={cluster}");
            if backing {
                opts.push_str(",backing_file=base.raw,backing_fmt=raw");
            }
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                path_str(&theirs),
                "2M",
            ]);
            qemu_io(&theirs, "qcow2", SCRIPT);
            qemu_io(&theirs, "qcow2", SCRIPT2);
            let kv: Vec<(String, String)> = opts
                .split(',')
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            let o = blk_qcow::Qcow2CreateOptions::from_key_values(Some(2 << 20), &kv).unwrap();
            Qcow2::create(&ours, &o, &TestOpener).unwrap();
            {
                let disk = support::open_disk(&ours, &rw()).unwrap();
                for cmd in SCRIPT.iter().chain(SCRIPT2) {
                    run_blk(&disk, cmd);
                }
            }
            assert_qemu_check_clean(&ours);
            assert_same(
                &qemu_contents(&ours, "qcow2"),
                &qemu_contents(&theirs, "qcow2"),
                &opts,
            );
            assert_eq!(qemu_map(&ours), qemu_map(&theirs), "qemu-img map, {opts}");
            check_against_qemu(&theirs, &format!("{opts} after both scripts"));
        }
    }
}

fn check_against_qemu(img: &Path, what: &str) {
    let disk = support::open_disk(img, &ro()).unwrap();
    assert_same(&read_all(&disk), &qemu_contents(img, "qcow2"), what);
    assert_eq!(blk_map(&disk), qemu_map(img), "map of {what}");
}

#[test]
fn qemu_made_images_read_and_map_like_qemu() {
    let _g = serial();
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    std::fs::write(
        &base,
        (0..1800u32 << 10)
            .map(|i| (i % 251) as u8 | 1)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for cluster in ["32k", "64k", "128k"] {
        for backing in [false, true] {
            let img = dir.path().join(format!("ext-{cluster}-{backing}.qcow2"));
            let mut opts = format!("extended_l2=on,cluster_size={cluster}");
            if backing {
                opts.push_str(",backing_file=base.raw,backing_fmt=raw");
            }
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                path_str(&img),
                "2M",
            ]);
            check_against_qemu(&img, &format!("{opts} (empty)"));
            qemu_io(&img, "qcow2", SCRIPT);
            check_against_qemu(&img, &opts);
        }
    }
}

#[test]
fn info_reports_extended_l2() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("e.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        path_str(&img),
        "1M",
    ]);
    let disk = support::open_disk(&img, &ro()).unwrap();
    let info = disk.image_info().unwrap();
    let (_, data) = info.format_specific.unwrap();
    assert!(data
        .iter()
        .any(|(k, v)| k == "extended-l2" && *v == blk_core::InfoValue::Bool(true)));
}

#[test]
fn corrupt_bitmaps_are_refused() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("c.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        path_str(&img),
        "1M",
    ]);
    qemu_io(&img, "qcow2", &["write -P 1 0 4k", "write -P 1 128k 4k"]);
    // Find the L2 table and set a subcluster both allocated and zero in the first entry's bitmap, and an
    // allocated bit in the (unallocated) third entry's bitmap.
    let bytes = std::fs::read(&img).unwrap();
    let be = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1 = be(40) as usize;
    let l2 = (be(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let mut patched = bytes.clone();
    let bitmap = be(l2 + 8) | (1 << 32);
    patched[l2 + 8..l2 + 16].copy_from_slice(&bitmap.to_be_bytes());
    patched[l2 + 56..l2 + 64].copy_from_slice(&1u64.to_be_bytes());
    std::fs::write(&img, &patched).unwrap();
    let disk = support::open_disk(&img, &ro()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = disk.read_exact_at(0, &mut buf).unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::CorruptImage, "{err}");
    let err = disk.read_exact_at(192 << 10, &mut buf).unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::CorruptImage, "{err}");
    // Elsewhere the image still reads.
    disk.read_exact_at(512 << 10, &mut buf).unwrap();
}

#[test]
fn create_matches_qemu_img() {
    let _g = serial();
    let dir = tempdir();
    for opts in [
        "extended_l2=on",
        "extended_l2=on,cluster_size=16k",
        "extended_l2=on,cluster_size=2M",
        "extended_l2=on,cluster_size=32k,refcount_bits=1",
        "extended_l2=on,preallocation=metadata",
        "extended_l2=on,preallocation=metadata,cluster_size=16k",
    ] {
        let (q, b) = (dir.path().join("q.qcow2"), dir.path().join("b.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            path_str(&q),
            "64M",
        ]);
        let kv: Vec<(String, String)> = opts
            .split(',')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let o = blk_qcow::Qcow2CreateOptions::from_key_values(Some(64 << 20), &kv).unwrap();
        Qcow2::create(&b, &o, &TestOpener).unwrap();
        assert_same(
            &std::fs::read(&b).unwrap(),
            &std::fs::read(&q).unwrap(),
            opts,
        );
    }
    for opts in [
        "extended_l2=on,cluster_size=8k",
        "extended_l2=on,compat=0.10",
    ] {
        let kv: Vec<(String, String)> = opts
            .split(',')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let err = blk_qcow::Qcow2CreateOptions::from_key_values(Some(1 << 20), &kv).unwrap_err();
        assert_eq!(err.kind(), blk_core::ErrorKind::InvalidInput, "{opts}");
    }
}

/// Four threads write and zero interleaved pieces of the same subclusters and clusters through clones: every
/// piece keeps its data, and qemu-img check finds the image clean.
#[test]
fn racing_subcluster_writes_lose_nothing() {
    let _g = serial();
    let dir = tempdir();
    let base = dir.path().join("base.raw");
    let size = 1u64 << 20;
    std::fs::write(&base, vec![0xeeu8; size as usize]).unwrap();
    let img = dir.path().join("race.qcow2");
    let kv: Vec<(String, String)> = [
        ("extended_l2", "on"),
        ("cluster_size", "32k"),
        ("backing_file", "base.raw"),
        ("backing_fmt", "raw"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let o = blk_qcow::Qcow2CreateOptions::from_key_values(Some(size), &kv).unwrap();
    Qcow2::create(&img, &o, &TestOpener).unwrap();
    {
        let disk = support::open_disk(&img, &rw()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let clone = disk.try_clone().unwrap();
                s.spawn(move || {
                    // 256-byte pieces: four threads share every 1 KiB subcluster.
                    for p in 0..(size / 1024) {
                        let off = p * 1024 + t * 256;
                        if (p + t) % 5 == 0 {
                            clone.write_zeroes(off, 256, false).unwrap();
                        } else {
                            clone.write_all_at(off, &[t as u8 + 1; 256]).unwrap();
                        }
                    }
                });
            }
        });
    }
    let disk = support::open_disk(&img, &ro()).unwrap();
    let got = read_all(&disk);
    for p in 0..(size / 1024) {
        for t in 0..4u64 {
            let off = (p * 1024 + t * 256) as usize;
            let want = if (p + t) % 5 == 0 { 0 } else { t as u8 + 1 };
            assert!(
                got[off..off + 256].iter().all(|&b| b == want),
                "piece {p}/{t} lost its data"
            );
        }
    }
    assert_same(&got, &qemu_contents(&img, "qcow2"), "qemu reads the same");
    assert_qemu_check_clean(&img);
}
