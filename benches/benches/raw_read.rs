//! `Raw` 4 KiB reads through `DiskFile::read_exact_at` on a 64 MiB page-cached image: the synchronous
//! per-request cost of the raw format over the host-file layer (range check, one `preadv`).

use std::hint::black_box;

use blk_benches::{page_cached_raw, scattered_offsets, BLOCK, IMAGE_SIZE};
use blk_core::DiskFile;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn raw_read(c: &mut Criterion) {
    // A benchmark cannot run without its image: failing loudly here is the right outcome.
    let image = page_cached_raw(IMAGE_SIZE).expect("creating the page-cached benchmark image");
    let offsets = scattered_offsets(IMAGE_SIZE, BLOCK as u64);
    let mut buf = vec![0u8; BLOCK];

    let mut group = c.benchmark_group("raw");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("read_exact_at_4k_scattered", |b| {
        b.iter(|| {
            let offset = offsets[next % offsets.len()];
            next = next.wrapping_add(1);
            image
                .disk
                .read_exact_at(black_box(offset), black_box(&mut buf))
                .expect("reading the benchmark image");
        })
    });
    let mut next = 0u64;
    group.bench_function("read_exact_at_4k_sequential", |b| {
        b.iter(|| {
            let offset = (next % (IMAGE_SIZE / BLOCK as u64)) * BLOCK as u64;
            next = next.wrapping_add(1);
            image
                .disk
                .read_exact_at(black_box(offset), black_box(&mut buf))
                .expect("reading the benchmark image");
        })
    });
    group.finish();
}

criterion_group!(benches, raw_read);
criterion_main!(benches);
