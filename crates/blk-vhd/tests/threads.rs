//! Several handles (`try_clone`, async queues) writing disjoint ranges from threads, sharing blocks and
//! sectors: every write lands, and qemu-img agrees with the result.

mod common;

use std::sync::Arc;

use blk_core::{AsyncDiskFile, DiskFile, ImageAdmin, IoBuf, MappedDisk};
use common::*;

const SIZE: u64 = 16 << 20;

fn run_threads(disk: &dyn DiskFile, threads: u64, work: impl Fn(&dyn DiskFile, u64) + Sync) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            let handle = disk.try_clone().unwrap();
            let work = &work;
            scope.spawn(move || work(handle.as_ref(), t));
        }
    });
}

#[test]
fn dynamic_disk_parallel_allocation() {
    let _serial = serial();
    let dir = tempdir();
    let path = dir.path().join("t.vhd");
    create(&path, Some(SIZE), &[]);
    let disk = open_rw(&path);
    let size = disk.logical_size();
    // Thread t writes every 4th 48 KiB chunk: blocks are allocated concurrently and shared.
    let chunk = 48u64 << 10;
    run_threads(&disk, 4, |d, t| {
        let mut i = t;
        while (i + 1) * chunk <= size {
            d.write_all_at(i * chunk, &pattern(i, chunk as usize))
                .unwrap();
            i += 4;
        }
    });
    let mut model = vec![0u8; size as usize];
    let mut i = 0;
    while (i + 1) * chunk <= size {
        model[(i * chunk) as usize..((i + 1) * chunk) as usize]
            .copy_from_slice(&pattern(i, chunk as usize));
        i += 1;
    }
    assert!(read_all(&disk) == model);
    assert_eq!(
        disk.check(blk_core::RepairMode::None).unwrap().corruptions,
        0
    );
    drop(disk);
    if have_qemu() {
        let raw = dir.path().join("model.raw");
        std::fs::write(&raw, &model).unwrap();
        qemu_compare("vpc", &path, "raw", &raw);
    }
}

#[test]
fn differencing_disk_unaligned_writes_sharing_sectors() {
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    create(&base, Some(SIZE), &[]);
    let b = open_rw(&base);
    let base_data = pattern(77, b.logical_size() as usize);
    b.write_all_at(0, &base_data).unwrap();
    drop(b);
    let child = dir.path().join("child.vhd");
    create(&child, None, &[("backing_file", "base.vhd")]);
    let disk = open_rw(&child);
    // Thread t writes bytes t*128..t*128+100 of every 7th sector: disjoint, but in the same sectors.
    let sectors: Vec<u64> = (0..disk.logical_size() / 512)
        .step_by(7)
        .take(600)
        .collect();
    run_threads(&disk, 4, |d, t| {
        for &s in &sectors {
            d.write_all_at(s * 512 + t * 128, &[t as u8 + 1; 100])
                .unwrap();
        }
    });
    let mut model = base_data.clone();
    for &s in &sectors {
        for t in 0..4u64 {
            let at = (s * 512 + t * 128) as usize;
            model[at..at + 100].fill(t as u8 + 1);
        }
    }
    assert!(read_all(&disk) == model);
}

#[test]
fn async_queues_share_the_image() {
    let dir = tempdir();
    let path = dir.path().join("q.vhd");
    create(&path, Some(SIZE), &[]);
    let disk = Arc::new(open_rw(&path));
    let data: &'static [u8] = Box::leak(pattern(5, 8192).into_boxed_slice());
    std::thread::scope(|scope| {
        for q in 0..2u64 {
            let disk = Arc::clone(&disk);
            scope.spawn(move || {
                let mut queue = disk.create_async_io(8).unwrap();
                for i in 0..8u64 {
                    let offset = (q * 8 + i) * (1 << 20);
                    let bufs = [IoBuf::from(data)];
                    queue.submit(&[write_request(i, offset, &bufs)]).unwrap();
                    let mut done = None;
                    while done.is_none() {
                        done = queue.next_completed_request();
                    }
                    done.unwrap().result.unwrap();
                }
            });
        }
    });
    for i in 0..16u64 {
        let mut back = vec![0u8; 8192];
        disk.read_exact_at(i << 20, &mut back).unwrap();
        assert!(back == data, "chunk {i}");
    }
    let clone = disk.try_clone_async().unwrap();
    assert_eq!(clone.logical_size(), disk.logical_size());
}

#[test]
fn direct_io_opens_work() {
    let dir = tempdir();
    let path = dir.path().join("d.vhd");
    create(&path, Some(SIZE), &[]);
    let host = blk_core::HostOpenOptions {
        direct: true,
        ..blk_core::HostOpenOptions::default()
    };
    let disk = MappedDisk::new(
        blk_vhd::Vhd::open(&path, &blk_vhd::VhdOpenOptions::new(host, VhdOpener::new())).unwrap(),
    );
    disk.write_all_at(777, &pattern(3, 5000)).unwrap();
    disk.write_all_at(4 << 20, &pattern(4, 65536)).unwrap();
    let mut back = vec![0u8; 5000];
    disk.read_exact_at(777, &mut back).unwrap();
    assert!(back == pattern(3, 5000));
    drop(disk);
    let disk = open_ro(&path);
    let mut back = vec![0u8; 65536];
    disk.read_exact_at(4 << 20, &mut back).unwrap();
    assert!(back == pattern(4, 65536));
}
