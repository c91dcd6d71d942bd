//! Concurrency through clones: writers racing to allocate the same clusters lose nothing, readers run beside
//! writers, and the result is clean for qemu-img check.

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
