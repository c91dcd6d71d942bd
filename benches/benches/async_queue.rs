//! The per-request cost of the asynchronous path: a queue from the factory (`open_disk_file` +
//! `create_async_io(32)`, on the best backend of this host) serving a batch of 32 scattered 4 KiB reads on a
//! 64 MiB page-cached image: one `submit`, a wait on the queue's eventfd (`poll` + `read`), 32
//! `next_completed_request` calls, as a VMM drives a virtio queue. Raw and QCOW2 (64 KiB clusters, every
//! cluster allocated) run in the same group, so the format's cost reads as a ratio measured in one run.
//! `raw_guest_queue_32x4k` serves the same raw batch through a `GuestQueue` (guest addresses translated with
//! vm-memory, dirty pages marked at completion, `wait(32, None)`): its cost over the raw queue's is the safe
//! guest-memory API's.

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use blk_benches::{page_cached_raw, scattered_offsets, BLOCK, IMAGE_SIZE};
use blk_core::{
    AsyncIo, DenyNamedImages, DiskFile, HostOpenOptions, IoBufMut, LockMode, MappedDisk, Request,
    RequestOp,
};
use blk_factory::vm_memory::bitmap::AtomicBitmap;
use blk_factory::vm_memory::{GuestAddress, GuestMemoryMmap};
use blk_factory::{
    choose_backend, open_disk_file, Backend, DiskFileParams, GuestIoVec, GuestOp, GuestQueue,
    GuestRequest, ImageFormat,
};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Requests per batch (and the queue's depth).
const BATCH: usize = 32;

/// Writes a fully allocated QCOW2 image of [`IMAGE_SIZE`] at `path` (non-zero data, so every cluster is
/// allocated), leaving it in the page cache.
fn page_cached_qcow2(path: &Path) {
    let options = Qcow2CreateOptions::from_key_values(Some(IMAGE_SIZE), &[])
        .expect("parsing the create options");
    Qcow2::create(path, &options, &DenyNamedImages).expect("creating the benchmark image");
    let open = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    let disk = MappedDisk::new(Qcow2::open(path, &open).expect("opening the benchmark image"));
    let chunk = vec![0x5au8; 1 << 20];
    for offset in (0..IMAGE_SIZE).step_by(chunk.len()) {
        disk.write_all_at(offset, &chunk)
            .expect("filling the benchmark image");
    }
    disk.flush().expect("flushing the benchmark image");
}

/// Blocks until `queue`'s eventfd is signalled and consumes the signal.
fn wait(queue: &dyn AsyncIo) {
    let notifier = queue.notifier();
    while notifier.read().is_err() {
        let mut pollfd = libc::pollfd {
            fd: notifier.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pollfd` is one valid, initialised entry that outlives the call; poll writes only `revents`.
        unsafe { libc::poll(&mut pollfd, 1, -1) };
    }
}

fn async_queue(c: &mut Criterion) {
    // A benchmark cannot run without its images: failing loudly here is the right outcome.
    let raw = page_cached_raw(IMAGE_SIZE).expect("creating the page-cached raw image");
    let qcow2_path = raw.path.with_file_name("bench.qcow2");
    page_cached_qcow2(&qcow2_path);
    let offsets = scattered_offsets(IMAGE_SIZE, BLOCK as u64);
    eprintln!(
        "async_queue: backend {}",
        choose_backend(Backend::AUTO).backend.name()
    );

    // Async requests take 'static buffers: the 128 KiB is leaked once for the life of the benchmark process.
    let memory: &'static mut [u8] = Box::leak(vec![0u8; BATCH * BLOCK].into_boxed_slice());
    let bufs: Vec<[IoBufMut<'static>; 1]> = memory
        .chunks_mut(BLOCK)
        .map(|chunk| [IoBufMut::from(chunk)])
        .collect();

    let mut group = c.benchmark_group("async_queue");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, path, format) in [
        (
            "raw_submit_reap_32x4k",
            raw.path.as_path(),
            ImageFormat::RAW,
        ),
        (
            "qcow2_submit_reap_32x4k",
            qcow2_path.as_path(),
            ImageFormat::by_name("qcow2").expect("qcow2 is built in"),
        ),
    ] {
        let params = DiskFileParams::new(path)
            .format(Some(format))
            .read_only(true)
            // The fixture keeps the raw image open for writing: share it, as `-U` does.
            .lock(LockMode::None)
            .backend(Backend::AUTO);
        let disk = open_disk_file(&params).expect("opening the benchmark image");
        let mut queue = disk
            .create_async_io(BATCH as u32)
            .expect("creating the queue");
        let mut next = 0usize;
        let mut batch: Vec<Request<'_>> = Vec::with_capacity(BATCH);
        group.bench_function(name, |b| {
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
                let mut reaped = 0;
                while reaped < BATCH {
                    wait(queue.as_ref());
                    while let Some(completion) = queue.next_completed_request() {
                        assert_eq!(completion.result.ok(), Some(BLOCK as u64));
                        reaped += 1;
                    }
                }
            })
        });
    }

    // The raw image again, through a GuestQueue over guest memory with a dirty bitmap.
    let params = DiskFileParams::new(raw.path.as_path())
        .format(Some(ImageFormat::RAW))
        .read_only(true)
        .lock(LockMode::None)
        .backend(Backend::AUTO);
    let disk = open_disk_file(&params).expect("opening the benchmark image");
    let guest = Arc::new(
        GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), BATCH * BLOCK)])
            .expect("making guest memory"),
    );
    let mut queue = GuestQueue::new(
        disk.create_async_io(BATCH as u32)
            .expect("creating the queue"),
        guest,
    )
    .expect("creating the guest queue");
    eprintln!(
        "async_queue: guest memory registered: {}",
        queue.registered_memory()
    );
    let iovecs: Vec<[GuestIoVec; 1]> = (0..BATCH)
        .map(|i| [GuestIoVec::new(GuestAddress((i * BLOCK) as u64), BLOCK)])
        .collect();
    let mut next = 0usize;
    let mut batch: Vec<GuestRequest<'_>> = Vec::with_capacity(BATCH);
    let mut done = Vec::with_capacity(BATCH);
    group.bench_function("raw_guest_queue_32x4k", |b| {
        b.iter(|| {
            batch.clear();
            for (i, iov) in iovecs.iter().enumerate() {
                let offset = offsets[next % offsets.len()];
                next = next.wrapping_add(1);
                batch.push(GuestRequest::new(
                    i as u64,
                    GuestOp::Read {
                        offset,
                        iovecs: &iov[..],
                    },
                ));
            }
            queue
                .submit(black_box(&batch))
                .expect("submitting the batch");
            done.clear();
            queue
                .wait(BATCH, None, &mut done)
                .expect("waiting for the batch");
            assert!(done
                .iter()
                .all(|c| c.result.as_ref().ok() == Some(&(BLOCK as u64))));
        })
    });
    group.finish();
}

criterion_group!(benches, async_queue);
criterion_main!(benches);
