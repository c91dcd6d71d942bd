//! Cached lookups at 1, 2, 4 and 8 threads: each thread maps 4 KiB reads (`Mapper::map_read`) through its own
//! handle (`Mapper::duplicate`) of one open image, scattered over a 64 MiB range whose tables are cached,
//! reusing one `Vec` (no allocation per lookup), for QCOW2, VHD, VHDX and raw. Criterion reports total
//! lookups per second of all threads (`Throughput::Elements`): on a host with as many cores as threads, a
//! lookup that takes no exclusive lock and writes no shared cache line scales with the threads; on this
//! 2-core machine, 4 and 8 threads share 2 cores, so the total should hold, not collapse.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blk_core::{DenyNamedImages, DiskFile, HostOpenOptions, MappedDisk, Mapper, ReadMapping};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};
use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZE: u64 = 64 << 20;
const BLOCK: u64 = 4096;
const THREADS: [usize; 4] = [1, 2, 4, 8];

/// One open image (its mapper), and what keeps its file alive (its temporary directory).
struct Subject {
    name: &'static str,
    mapper: Arc<dyn Mapper>,
    _keep: Box<dyn std::any::Any>,
}

/// Writes every byte of `SIZE` through `disk` (every cluster or block allocated, non-zero data) and returns
/// its mapper.
fn filled<M: Mapper + 'static>(disk: MappedDisk<M>) -> Arc<dyn Mapper> {
    let chunk = vec![0x5au8; 1 << 20];
    for offset in (0..SIZE).step_by(chunk.len()) {
        disk.write_all_at(offset, &chunk)
            .expect("filling the benchmark image");
    }
    disk.flush().expect("flushing the benchmark image");
    Arc::clone(disk.image()) as Arc<dyn Mapper>
}

/// The four images, each filled and opened. A benchmark cannot run without its images: failing loudly here is
/// the right outcome.
fn subjects() -> Vec<Subject> {
    let dir = || tempfile::tempdir().expect("creating a temporary directory");
    let host = HostOpenOptions::default();
    let opener = || Arc::new(DenyNamedImages);

    let qcow2_dir = dir();
    let path = qcow2_dir.path().join("bench.qcow2");
    let create = Qcow2CreateOptions::from_key_values(Some(SIZE), &[]).expect("qcow2 options");
    Qcow2::create(&path, &create, &DenyNamedImages).expect("creating the qcow2 image");
    let qcow2 = Qcow2::open(&path, &Qcow2OpenOptions::new(host, opener())).expect("opening qcow2");

    let vhd_dir = dir();
    let path = vhd_dir.path().join("bench.vhd");
    let create = VhdCreateOptions::from_key_values(Some(SIZE), &[]).expect("vhd options");
    Vhd::create(&path, &create, &DenyNamedImages).expect("creating the vhd image");
    let vhd = Vhd::open(&path, &VhdOpenOptions::new(host, opener())).expect("opening vhd");

    let vhdx_dir = dir();
    let path = vhdx_dir.path().join("bench.vhdx");
    let create = VhdxCreateOptions::from_key_values(Some(SIZE), &[]).expect("vhdx options");
    Vhdx::create(&path, &create, &DenyNamedImages).expect("creating the vhdx image");
    let vhdx = Vhdx::open(&path, &VhdxOpenOptions::new(host, opener())).expect("opening vhdx");

    let raw = blk_benches::page_cached_raw(SIZE).expect("creating the raw image");
    let raw_mapper = Arc::clone(raw.disk.image()) as Arc<dyn Mapper>;

    vec![
        Subject {
            name: "qcow2",
            mapper: filled(MappedDisk::new(qcow2)),
            _keep: Box::new(qcow2_dir),
        },
        Subject {
            name: "vhd",
            mapper: filled(MappedDisk::new(vhd)),
            _keep: Box::new(vhd_dir),
        },
        Subject {
            name: "vhdx",
            mapper: filled(MappedDisk::new(vhdx)),
            _keep: Box::new(vhdx_dir),
        },
        Subject {
            name: "raw",
            mapper: raw_mapper,
            _keep: Box::new(raw),
        },
    ]
}

/// `iters` lookups on each of `handles`' threads, started together; the time until the last one finished.
fn run_threads(handles: &[Arc<dyn Mapper>], offsets: &[u64], iters: u64) -> Duration {
    let start = Barrier::new(handles.len());
    let slowest = std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(t, mapper)| {
                let start = &start;
                scope.spawn(move || {
                    // Each thread starts elsewhere in the range.
                    let mut next = t * offsets.len() / handles.len();
                    let mut out: Vec<ReadMapping> = Vec::with_capacity(4);
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..iters {
                        out.clear();
                        mapper
                            .map_read(black_box(offsets[next]), BLOCK, &mut out)
                            .expect("mapping a cached range");
                        black_box(&out);
                        next += 1;
                        if next == offsets.len() {
                            next = 0;
                        }
                    }
                    began.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a lookup thread panicked"))
            .max()
    });
    slowest.unwrap_or_default()
}

fn lookup_scaling(c: &mut Criterion) {
    let offsets = blk_benches::scattered_offsets(SIZE, BLOCK);
    let subjects = subjects();
    let mut group = c.benchmark_group("lookup_scaling");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for subject in &subjects {
        // Every range mapped once: tables and bitmaps cached.
        let mut out = Vec::new();
        for &offset in &offsets {
            out.clear();
            subject
                .mapper
                .map_read(offset, BLOCK, &mut out)
                .expect("warming the lookup tables");
        }
        for threads in THREADS {
            // One handle per thread, as each queue of a VMM maps through its own.
            let handles: Vec<Arc<dyn Mapper>> = (0..threads)
                .map(|_| subject.mapper.duplicate().expect("duplicating the handle"))
                .collect();
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_with_input(
                BenchmarkId::new(subject.name, threads),
                &handles,
                |b, handles| b.iter_custom(|iters| run_threads(handles, &offsets, iters)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookup_scaling);
criterion_main!(benches);
