//! Concurrency through clones: writers racing to allocate the same clusters lose nothing, readers run beside
//! writers (on the metadata lock's shared side while their tables are cached, beside evictions when they are
//! not), and the result is clean for qemu-img check.

mod support;

use blk_core::DiskFile;
use support::*;

/// Four threads write interleaved sectors of the same unallocated clusters: every sector keeps its data.
#[test]
fn racing_allocations_lose_no_write() {
    let _g = serial();
    let dir = tempdir();
    for backing in [false, true] {
        let img = dir.path().join("race.qcow2");
        let size = 4u64 << 20;
        if backing {
            std::fs::write(dir.path().join("base.raw"), vec![0xeeu8; size as usize]).unwrap();
            blk_create(
                &img,
                size,
                &[
                    ("cluster_size", "4k"),
                    ("backing_file", "base.raw"),
                    ("backing_fmt", "raw"),
                ],
            );
        } else {
            blk_create(&img, size, &[("cluster_size", "4k")]);
        }
        {
            let disk = support::open_disk(&img, &rw()).unwrap();
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let clone = disk.try_clone().unwrap();
                    s.spawn(move || {
                        for c in 0..(size / 4096) {
                            let off = c * 4096 + t * 512;
                            clone.write_all_at(off, &[t as u8 + 1; 512]).unwrap();
                        }
                    });
                }
                // A reader beside the writers sees either old or new data per sector, never garbage.
                let reader = disk.try_clone().unwrap();
                s.spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    for round in 0..20u64 {
                        let off = ((round * 64) << 10) % size;
                        reader.read_exact_at(off, &mut buf).unwrap();
                        for (i, sector) in buf.chunks(512).enumerate() {
                            let t = (i % 8) as u8;
                            let old = if backing { 0xee } else { 0 };
                            let new = if t < 4 { t + 1 } else { old };
                            assert!(
                                sector.iter().all(|&b| b == old || b == new),
                                "sector {i} at {off}"
                            );
                        }
                    }
                });
            });
            let all = read_all(&disk);
            for (i, sector) in all.chunks(512).enumerate() {
                let t = (i % 8) as u8;
                let expect = if t < 4 {
                    t + 1
                } else if backing {
                    0xee
                } else {
                    0
                };
                assert!(sector.iter().all(|&b| b == expect), "sector {i}");
            }
        }
        assert_qemu_check_clean(&img);
    }
}

/// Threads writing, zeroing and discarding their own regions through clones and async queues' handles.
#[test]
fn parallel_regions() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("par.qcow2");
    let size = 8u64 << 20;
    blk_create(
        &img,
        size,
        &[("cluster_size", "512"), ("refcount_bits", "8")],
    );
    {
        let disk = support::open_disk(&img, &rw()).unwrap();
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let clone = disk.try_clone().unwrap();
                s.spawn(move || {
                    let base = t * (size / 3);
                    for i in 0..50u64 {
                        let off = base + i * 9_000;
                        clone.write_all_at(off, &vec![t as u8 + 1; 7_000]).unwrap();
                        if i % 5 == 0 {
                            clone.write_zeroes(off + 1000, 3000, i % 2 == 0).unwrap();
                            clone.discard(off, 2048).unwrap();
                        }
                    }
                    clone.flush().unwrap();
                });
            }
        });
    }
    assert_qemu_check_clean(&img);
    let disk = support::open_disk(&img, &ro()).unwrap();
    assert_same(&read_all(&disk), &qemu_contents(&img, "qcow2"), "threads");
}

/// The byte a writer of `readers_beside_evictions` puts in sector `sector`.
fn pattern(sector: u64) -> u8 {
    (sector % 251) as u8 + 1
}

/// Readers and writers across many L2 tables with a cache of two: readers keep alternating between cache hits
/// (shared lock) and loads that evict tables the writers are changing. Every sector a reader sees is either
/// still zero or its final pattern, and the image ends as written.
#[test]
fn readers_beside_evictions() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("evict.qcow2");
    // 512-byte clusters: an L2 table maps 64 of them (32 KiB), so 4 MiB needs 128 tables.
    let size = 4u64 << 20;
    blk_create(&img, size, &[("cluster_size", "512")]);
    let mut options = rw();
    options.l2_cache_size = 1024;
    {
        let disk = support::open_disk(&img, &options).unwrap();
        let sectors = size / 512;
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let clone = disk.try_clone().unwrap();
                s.spawn(move || {
                    // Each writer takes every other stretch of 8 sectors, in a scattered order.
                    let stretches = sectors / 8;
                    for i in 0..stretches {
                        let stretch = (i * 37) % stretches;
                        if stretch % 2 != t {
                            continue;
                        }
                        let first = stretch * 8;
                        let data: Vec<u8> = (first..first + 8)
                            .flat_map(|sector| [pattern(sector); 512])
                            .collect();
                        clone.write_all_at(first * 512, &data).unwrap();
                    }
                });
            }
            for r in 0..3u64 {
                let reader = disk.try_clone().unwrap();
                s.spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    for round in 0..400u64 {
                        let off = ((round * 7919 + r * 104_729) % (sectors / 8)) * 4096;
                        reader.read_exact_at(off, &mut buf).unwrap();
                        for (i, sector) in buf.chunks(512).enumerate() {
                            let want = pattern(off / 512 + i as u64);
                            assert!(
                                sector.iter().all(|&b| b == 0) || sector.iter().all(|&b| b == want),
                                "sector {} read at {off}",
                                off / 512 + i as u64
                            );
                        }
                    }
                });
            }
        });
        let all = read_all(&disk);
        for (sector, data) in all.chunks(512).enumerate() {
            let want = pattern(sector as u64);
            assert!(data.iter().all(|&b| b == want), "sector {sector}");
        }
    }
    assert_qemu_check_clean(&img);
}
