//! QCOW2 cluster lookups on a cached L2 table: `DiskFile::map` of one cluster (metadata lock, L1 index, L2
//! cache hash lookup, entry decode; no allocation, no I/O), and 4 KiB reads of allocated clusters through the
//! same lookup. The target for the lookup is under 50 ns.

use std::hint::black_box;
use std::sync::Arc;

use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions, MappedDisk};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: u64 = 64 << 20;
const CLUSTER: u64 = 65536;

fn qcow2_lookup(c: &mut Criterion) {
    // A benchmark cannot run without its image: failing loudly here is the right outcome.
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let path = dir.path().join("bench.qcow2");
    let options = Qcow2CreateOptions::from_key_values(
        Some(SIZE),
        &[("preallocation".to_string(), "metadata".to_string())],
    )
    .expect("parsing the create options");
    Qcow2::create(&path, &options, &DenyNamedImages).expect("creating the benchmark image");
    let open = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    let disk = MappedDisk::new(Qcow2::open(&path, &open).expect("opening the benchmark image"));
    disk.write_all_at(0, &vec![1u8; SIZE as usize])
        .expect("filling the benchmark image");
    // Scattered cluster offsets (a large odd step), all in the cached L2 table.
    let clusters = SIZE / CLUSTER;
    let offsets: Vec<u64> = (0..clusters)
        .map(|i| (i * 97 % clusters) * CLUSTER)
        .collect();
    for &o in &offsets {
        disk.map(o, CLUSTER).expect("warming the L2 cache");
    }

    let mut group = c.benchmark_group("qcow2");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("lookup_cached_l2", |b| {
        b.iter(|| {
            let offset = offsets[next % offsets.len()];
            next = next.wrapping_add(1);
            black_box(disk.map(black_box(offset), CLUSTER).expect("mapping"))
        })
    });
    let mut buf = vec![0u8; 4096];
    let mut next = 0usize;
    group.bench_function("read_exact_at_4k_scattered", |b| {
        b.iter(|| {
            let offset = offsets[next % offsets.len()];
            next = next.wrapping_add(1);
            disk.read_exact_at(black_box(offset), black_box(&mut buf))
                .expect("reading the benchmark image")
        })
    });
    group.finish();
}

criterion_group!(benches, qcow2_lookup);
criterion_main!(benches);
