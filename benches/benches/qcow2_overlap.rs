//! One QCOW2 overlap check (QEMU's `qcow2_check_metadata_overlap`, `cached` mode: header, L1 and refcount
//! tables, snapshot table and L1s, every active L2 table, every refcount block) as every write runs it first:
//! `Qcow2::metadata_overlap` of a 4 KiB write into a data cluster (a miss, the common case: every kind is
//! compared), on a 64 MiB image (one L1 entry) and on a 1 TiB one (2048 L1 entries, all allocated: the
//! longest pass a write of such an image pays). The time includes taking the uncontended metadata lock,
//! which the write path already holds when it checks.

use std::hint::black_box;
use std::sync::Arc;

use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions, MappedDisk};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CLUSTER: u64 = 65536;
/// Guest bytes one L2 table covers (64 KiB clusters).
const L2_SPAN: u64 = CLUSTER / 8 * CLUSTER;

/// An image of `size` bytes with one cluster written in every L2 table's range (so every L1 entry points
/// to an L2 table), opened; and the host offset of a data cluster.
fn image(dir: &std::path::Path, name: &str, size: u64) -> (Qcow2, u64) {
    let path = dir.join(name);
    let create = Qcow2CreateOptions {
        size: Some(size),
        ..Qcow2CreateOptions::default()
    };
    // A benchmark cannot run without its image: failing loudly here is the right outcome.
    Qcow2::create(&path, &create, &DenyNamedImages).expect("creating the benchmark image");
    let open = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    let data = {
        let disk = MappedDisk::new(Qcow2::open(&path, &open).expect("opening the image"));
        let mut at = 0;
        while at < size {
            disk.write_all_at(at, &[1u8; 4096])
                .expect("writing the benchmark image");
            at += L2_SPAN;
        }
        disk.flush().expect("flushing the benchmark image");
        disk.map(0, CLUSTER)
            .expect("mapping guest offset 0")
            .host_offset
            .expect("guest offset 0 is allocated")
    };
    let image = Qcow2::open(&path, &open).expect("opening the benchmark image");
    assert_eq!(image.metadata_overlap(data, 4096), None);
    (image, data)
}

fn qcow2_overlap(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let mut group = c.benchmark_group("qcow2");
    group.throughput(Throughput::Elements(1));
    for (name, size) in [
        ("overlap_check_64m", 64u64 << 20),
        ("overlap_check_1t", 1 << 40),
    ] {
        let (image, data) = image(dir.path(), &format!("{name}.qcow2"), size);
        group.bench_function(name, |b| {
            b.iter(|| black_box(image.metadata_overlap(black_box(data + 4096), black_box(4096))))
        });
    }
    group.finish();
}

criterion_group!(benches, qcow2_overlap);
criterion_main!(benches);
