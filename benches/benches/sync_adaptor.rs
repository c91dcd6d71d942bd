//! `SyncAdaptor` serving a batch of 32 scattered 4 KiB reads on a 64 MiB page-cached raw image: one
//! `submit`, one eventfd read, 32 `next_completed_request` calls, as a VMM drives a virtio queue. The same 32
//! reads issued directly through `DiskFile::read_at` run in the same group, so the adaptor's overhead reads as
//! a ratio measured in one run.

use std::hint::black_box;

use blk_benches::{page_cached_raw, scattered_offsets, BLOCK, IMAGE_SIZE};
use blk_core::{AsyncIo, DiskFile, IoBufMut, Request, RequestOp, SyncAdaptor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Requests per batch (and the queue's depth).
const BATCH: usize = 32;

fn sync_adaptor(c: &mut Criterion) {
    // A benchmark cannot run without its image: failing loudly here is the right outcome.
    let image = page_cached_raw(IMAGE_SIZE).expect("creating the page-cached benchmark image");
    let offsets = scattered_offsets(IMAGE_SIZE, BLOCK as u64);
    let disk = image.disk.try_clone().expect("cloning the disk handle");
    let mut queue = SyncAdaptor::new(disk, BATCH as u32).expect("creating the queue");

    // Async requests take 'static buffers (they may outlive the submit call). A VMM passes guest memory;
    // here the 128 KiB is leaked once for the life of the benchmark process.
    let memory: &'static mut [u8] = Box::leak(vec![0u8; BATCH * BLOCK].into_boxed_slice());
    let bufs: Vec<[IoBufMut<'static>; 1]> = memory
        .chunks_mut(BLOCK)
        .map(|chunk| [IoBufMut::from(chunk)])
        .collect();

    let mut group = c.benchmark_group("sync_adaptor");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut next = 0usize;
    let mut batch: Vec<Request<'_>> = Vec::with_capacity(BATCH);
    group.bench_function("submit_reap_32x4k_reads", |b| {
        b.iter(|| {
            batch.clear();
            for (i, buf) in bufs.iter().enumerate() {
                let offset = offsets[next % offsets.len()];
                next = next.wrapping_add(1);
                batch.push(Request::new(
                    i as u64,
                    RequestOp::Read {
                        offset,
                        bufs: &buf[..],
                    },
                ));
            }
            queue
                .submit(black_box(&batch))
                .expect("submitting the batch");
            queue
                .notifier()
                .read()
                .expect("reading the completion eventfd");
            let mut reaped = 0;
            while let Some(completion) = queue.next_completed_request() {
                assert_eq!(completion.result.ok(), Some(BLOCK as u64));
                reaped += 1;
            }
            assert_eq!(reaped, BATCH);
        })
    });

    let mut next = 0usize;
    group.bench_function("read_at_32x4k_direct", |b| {
        b.iter(|| {
            for buf in &bufs {
                let offset = offsets[next % offsets.len()];
                next = next.wrapping_add(1);
                image
                    .disk
                    .read_at(black_box(offset), &buf[..])
                    .expect("reading the benchmark image");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, sync_adaptor);
criterion_main!(benches);
