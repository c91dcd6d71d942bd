//! Extended L2 entries (subclusters): images made by qemu-img / qemu-io with `extended_l2=on` read back as
//! `qemu-img convert` reads them, and `map` equals `qemu-img map --output=json` (host offsets included).

mod support;

use std::path::Path;

use blk_core::DiskFile;
use blk_core::ImageAdmin;
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

/// `dir/base.raw`, the raw backing file of the scripts' images: 1800 KiB without zero bytes.
fn write_base(dir: &Path) {
    let data: Vec<u8> = (0..1800u32 << 10).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(dir.join("base.raw"), data).unwrap();
}

#[test]
fn scripts_replayed_by_blk_match_qemu() {
    let _g = serial();
    let dir = tempdir();
    write_base(dir.path());
    for cluster in ["32k", "64k", "128k"] {
        for backing in [false, true] {
            let theirs = dir.path().join("theirs.qcow2");
            let ours = dir.path().join("ours.qcow2");
            let mut opts = format!("extended_l2=on,cluster_size={cluster}");
            if backing {
                opts.push_str(",backing_file=base.raw,backing_fmt=raw");
            }
            qemu_create(&theirs, &opts, "2M");
            qemu_io("qcow2", &theirs, SCRIPT);
            qemu_io("qcow2", &theirs, SCRIPT2);
            blk_create(&ours, 2 << 20, &option_pairs(&opts));
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
            assert_reads_and_maps_like_qemu(&theirs, &ro(), &format!("{opts} after both scripts"));
        }
    }
}

#[test]
fn qemu_made_images_read_and_map_like_qemu() {
    let _g = serial();
    let dir = tempdir();
    write_base(dir.path());
    for cluster in ["32k", "64k", "128k"] {
        for backing in [false, true] {
            let img = dir.path().join(format!("ext-{cluster}-{backing}.qcow2"));
            let mut opts = format!("extended_l2=on,cluster_size={cluster}");
            if backing {
                opts.push_str(",backing_file=base.raw,backing_fmt=raw");
            }
            qemu_create(&img, &opts, "2M");
            assert_reads_and_maps_like_qemu(&img, &ro(), &format!("{opts} (empty)"));
            qemu_io("qcow2", &img, SCRIPT);
            assert_reads_and_maps_like_qemu(&img, &ro(), &opts);
        }
    }
}

#[test]
fn info_reports_extended_l2() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("e.qcow2");
    qemu_create(&img, "extended_l2=on", "1M");
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
    qemu_create(&img, "extended_l2=on", "1M");
    qemu_io("qcow2", &img, &["write -P 1 0 4k", "write -P 1 128k 4k"]);
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
        qemu_create(&q, opts, "64M");
        blk_create(&b, 64 << 20, &option_pairs(opts));
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
        let err = create_options(1 << 20, &option_pairs(opts)).unwrap_err();
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
    blk_create(
        &img,
        size,
        &[
            ("extended_l2", "on"),
            ("cluster_size", "32k"),
            ("backing_file", "base.raw"),
            ("backing_fmt", "raw"),
        ],
    );
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
