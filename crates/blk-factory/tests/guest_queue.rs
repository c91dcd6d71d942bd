//! `GuestQueue`: guest-memory requests on every format and every backend that works here, from real image
//! files in temporary directories: data, bounds, dirty bits, waits, the reported backend, memory
//! registration, and each format's properties.

use std::sync::Arc;
use std::time::Duration;

use blk_factory::vm_memory::bitmap::{AtomicBitmap, Bitmap};
use blk_factory::vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use blk_factory::{
    choose_backend, create_disk_file, open_disk_file, AsyncDiskFile, Backend, Completion,
    CreateParams, DiskFileParams, ErrorKind, GuestIoVec, GuestOp, GuestQueue, GuestRequest,
    ImageFormat, RequestFlags,
};

type Memory = GuestMemoryMmap<AtomicBitmap>;

const PAGE: u64 = 4096;
const DISK: u64 = 4 << 20;

/// 1 MiB of guest memory in two regions meeting at 512 KiB, so a range can cross them.
fn memory() -> Arc<Memory> {
    Arc::new(
        Memory::from_ranges(&[
            (GuestAddress(0), 512 << 10),
            (GuestAddress(512 << 10), 512 << 10),
        ])
        .unwrap(),
    )
}

fn dirty(mem: &Memory, addr: u64) -> bool {
    let region = mem.find_region(GuestAddress(addr)).unwrap();
    region
        .bitmap()
        .dirty_at((addr - region.start_addr().0) as usize)
}

/// Every format, made with `create_disk_file` (options for the formats whose block size we check).
fn formats() -> Vec<(ImageFormat, Vec<(String, String)>)> {
    let o = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    vec![
        (ImageFormat::RAW, vec![]),
        (
            ImageFormat::by_name("qcow2").unwrap(),
            o("cluster_size", "65536"),
        ),
        (ImageFormat::by_name("vpc").unwrap(), vec![]),
        (
            ImageFormat::by_name("vhdx").unwrap(),
            o("block_size", "8388608"),
        ),
    ]
}

/// The backends that work on this host (each named, as strict mode asks).
fn backends() -> Vec<Backend> {
    Backend::all()
        .filter(|&b| {
            let works = choose_backend(b).backend == b;
            if !works {
                eprintln!("skipping backend {b}: not available here");
            }
            works
        })
        .collect()
}

fn image(
    dir: &tempfile::TempDir,
    format: ImageFormat,
    options: &[(String, String)],
) -> std::path::PathBuf {
    let path = dir.path().join(format!("disk.{}", format.name()));
    let mut params = CreateParams::new(&path, format, Some(DISK));
    params.options = options.to_vec();
    create_disk_file(&params).unwrap();
    path
}

fn open(path: &std::path::Path, backend: Backend) -> Box<dyn AsyncDiskFile> {
    open_disk_file(
        &DiskFileParams::new(path)
            .backend(backend)
            .strict_backend(true),
    )
    .unwrap()
}

/// Waits for exactly `n` completions, sorted by user data.
fn wait_all(queue: &mut GuestQueue<Memory>, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        queue
            .wait(n - out.len(), Some(Duration::from_secs(10)), &mut out)
            .unwrap();
    }
    out.sort_by_key(|c| c.user_data);
    out
}

fn ok(c: &Completion) -> u64 {
    match &c.result {
        Ok(n) => *n,
        Err(e) => panic!("request {} failed: {e}", c.user_data),
    }
}

#[test]
fn guest_requests_on_every_format_and_backend() {
    for backend in backends() {
        for (format, options) in formats() {
            let what = format!("{} on {backend}", format.name());
            let dir = tempfile::tempdir().unwrap();
            let path = image(&dir, format, &options);
            let disk = open(&path, backend);
            let mem = memory();
            let mut queue =
                GuestQueue::new(disk.create_async_io(16).unwrap(), Arc::clone(&mem)).unwrap();
            assert_eq!(queue.backend(), backend.name(), "{what}");
            assert_eq!(disk.backend(), backend.name(), "{what}");

            // Write: one range crossing the two regions, one inside the first; then a flush.
            let pattern: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
            mem.write_slice(
                &pattern[..2 * PAGE as usize],
                GuestAddress((512 << 10) - PAGE),
            )
            .unwrap();
            mem.write_slice(&pattern[2 * PAGE as usize..], GuestAddress(0x1000))
                .unwrap();
            let src = [
                GuestIoVec::new(GuestAddress((512 << 10) - PAGE), 2 * PAGE as usize),
                GuestIoVec::new(GuestAddress(0x1000), PAGE as usize),
            ];
            queue
                .submit(&[
                    GuestRequest::new(
                        1,
                        GuestOp::Write {
                            offset: 64 << 10,
                            iovecs: &src,
                        },
                    ),
                    GuestRequest::new(
                        2,
                        GuestOp::Write {
                            offset: 1 << 20,
                            iovecs: &src[1..],
                        },
                    )
                    .with_flags(RequestFlags::FUA),
                ])
                .unwrap();
            let done = wait_all(&mut queue, 2);
            assert_eq!((ok(&done[0]), ok(&done[1])), (3 * PAGE, PAGE), "{what}");
            queue
                .submit(&[GuestRequest::new(3, GuestOp::Flush)])
                .unwrap();
            assert_eq!(ok(&wait_all(&mut queue, 1)[0]), 0, "{what}");

            // Read it back elsewhere in guest memory: the bytes, and exactly those pages dirty.
            let dst = [GuestIoVec::new(GuestAddress(0x40000), 3 * PAGE as usize)];
            for page in 0x3f..0x44 {
                assert!(
                    !dirty(&mem, page * PAGE),
                    "{what}: page {page:#x} dirty before the read"
                );
            }
            queue
                .submit(&[GuestRequest::new(
                    4,
                    GuestOp::Read {
                        offset: 64 << 10,
                        iovecs: &dst,
                    },
                )])
                .unwrap();
            assert_eq!(ok(&wait_all(&mut queue, 1)[0]), 3 * PAGE, "{what}");
            let mut back = vec![0u8; 3 * PAGE as usize];
            mem.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
            assert!(back == pattern, "{what}: read back differs");
            assert!(!dirty(&mem, 0x3f * PAGE), "{what}");
            assert!(
                dirty(&mem, 0x40 * PAGE) && dirty(&mem, 0x41 * PAGE) && dirty(&mem, 0x42 * PAGE),
                "{what}"
            );
            assert!(!dirty(&mem, 0x43 * PAGE), "{what}");
            assert!(
                !dirty(&mem, 0x10000),
                "{what}: a write marked its source dirty"
            );

            // Write-zeroes and discard, then the range reads as zeros (VHD's discard keeps data: not read).
            queue
                .submit(&[
                    GuestRequest::new(
                        5,
                        GuestOp::WriteZeroes {
                            offset: 64 << 10,
                            len: PAGE,
                        },
                    ),
                    GuestRequest::new(
                        6,
                        GuestOp::Discard {
                            offset: 1 << 20,
                            len: 64 << 10,
                        },
                    ),
                ])
                .unwrap();
            let done = wait_all(&mut queue, 2);
            assert_eq!((ok(&done[0]), ok(&done[1])), (0, 0), "{what}");
            let one = [GuestIoVec::new(GuestAddress(0x60000), PAGE as usize)];
            queue
                .submit(&[GuestRequest::new(
                    7,
                    GuestOp::Read {
                        offset: 64 << 10,
                        iovecs: &one,
                    },
                )])
                .unwrap();
            ok(&wait_all(&mut queue, 1)[0]);
            let mut zeros = vec![1u8; PAGE as usize];
            mem.read_slice(&mut zeros, GuestAddress(0x60000)).unwrap();
            assert!(
                zeros.iter().all(|&b| b == 0),
                "{what}: write-zeroes left data"
            );
            assert_eq!(queue.in_flight(), 0);
        }
    }
}

#[test]
fn a_range_outside_guest_memory_fails_alone() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, ImageFormat::RAW, &[]);
        let disk = open(&path, backend);
        disk.write_all_at(0, &[0x77; 4096]).unwrap();
        let mem = memory();
        let mut queue =
            GuestQueue::new(disk.create_async_io(8).unwrap(), Arc::clone(&mem)).unwrap();
        let past_end = [GuestIoVec::new(GuestAddress((1 << 20) - 512), 1024)];
        let far = [GuestIoVec::new(GuestAddress(u64::MAX - 10), 512)];
        let fine = [GuestIoVec::new(GuestAddress(0x2000), 4096)];
        queue
            .submit(&[
                GuestRequest::new(
                    1,
                    GuestOp::Read {
                        offset: 0,
                        iovecs: &past_end,
                    },
                ),
                GuestRequest::new(
                    2,
                    GuestOp::Write {
                        offset: 0,
                        iovecs: &far,
                    },
                ),
                GuestRequest::new(
                    3,
                    GuestOp::Read {
                        offset: 0,
                        iovecs: &fine,
                    },
                ),
            ])
            .unwrap();
        let done = wait_all(&mut queue, 3);
        for c in &done[..2] {
            let e = c.result.as_ref().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("not in guest memory"), "{e}");
        }
        assert_eq!(ok(&done[2]), 4096);
        // The refused read wrote nothing and marked nothing.
        assert!(!dirty(&mem, (1 << 20) - 512));
        let mut back = [0u8; 4096];
        disk.read_exact_at(0, &mut back).unwrap();
        assert_eq!(back, [0x77; 4096], "the refused write reached the disk");
    }
}

#[test]
fn waits_block_time_out_and_refuse_impossible_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, ImageFormat::RAW, &[]);
    for backend in backends() {
        let disk = open(&path, backend);
        let mut queue = GuestQueue::new(disk.create_async_io(8).unwrap(), memory()).unwrap();
        let mut out = Vec::new();
        // Nothing in flight: min 0 returns at once; min 1 is refused rather than sleeping forever.
        assert_eq!(queue.wait(0, None, &mut out).unwrap(), 0);
        let err = queue.wait(1, Some(Duration::ZERO), &mut out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        // Three requests: a blocking wait for all of them returns them all.
        let iov = [GuestIoVec::new(GuestAddress(0), 4096)];
        let batch: Vec<GuestRequest<'_>> = (0..3)
            .map(|i| {
                GuestRequest::new(
                    i,
                    GuestOp::Read {
                        offset: i * 4096,
                        iovecs: &iov,
                    },
                )
            })
            .collect();
        queue.submit(&batch).unwrap();
        assert_eq!(queue.in_flight(), 3);
        assert_eq!(queue.wait(3, None, &mut out).unwrap(), 3);
        assert_eq!(out.len(), 3);
        assert_eq!(queue.in_flight(), 0);
        // With busy polling on, the same.
        queue.set_busy_poll(Duration::from_micros(200));
        queue.submit(&batch).unwrap();
        out.clear();
        let n = queue
            .wait(2, Some(Duration::from_secs(10)), &mut out)
            .unwrap();
        assert!(n >= 2 && n == out.len());
        while out.len() < 3 {
            queue.wait(1, None, &mut out).unwrap();
        }
        // A zero timeout never sleeps: it returns what is ready.
        assert_eq!(queue.wait(0, Some(Duration::ZERO), &mut out).unwrap(), 0);
    }
}

#[test]
fn io_uring_uses_registered_guest_memory() {
    let Some(uring) = Backend::by_name("io_uring").filter(|&b| choose_backend(b).backend == b)
    else {
        eprintln!("io_uring is not available here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, ImageFormat::RAW, &[]);
    let disk = open(&path, uring);
    let mem = memory();
    let mut queue = GuestQueue::new(disk.create_async_io(8).unwrap(), Arc::clone(&mem)).unwrap();
    if !queue.registered_memory() {
        eprintln!("the kernel refused to register guest memory (RLIMIT_MEMLOCK?)");
        return;
    }
    // One buffer inside a region: the registered form.
    let one = [GuestIoVec::new(GuestAddress(0x3000), 8192)];
    queue
        .submit(&[
            GuestRequest::new(
                1,
                GuestOp::Write {
                    offset: 0,
                    iovecs: &one,
                },
            ),
            GuestRequest::new(
                2,
                GuestOp::Read {
                    offset: 0,
                    iovecs: &one,
                },
            ),
        ])
        .unwrap();
    wait_all(&mut queue, 2).iter().for_each(|c| {
        ok(c);
    });
    let fixed = queue.fixed_buffer_ops();
    assert!(fixed >= 2, "{fixed} registered-buffer operations");
    // Two buffers (vectored): plain I/O, still correct.
    let two = [
        GuestIoVec::new(GuestAddress(0x3000), 4096),
        GuestIoVec::new(GuestAddress(0x9000), 4096),
    ];
    queue
        .submit(&[GuestRequest::new(
            3,
            GuestOp::Write {
                offset: 8192,
                iovecs: &two,
            },
        )])
        .unwrap();
    assert_eq!(ok(&wait_all(&mut queue, 1)[0]), 8192);
    assert_eq!(queue.fixed_buffer_ops(), fixed);
    drop((queue, disk));
    // Not registered on the synchronous backend.
    let sync = open(&path, Backend::SYNC);
    let queue = GuestQueue::new(sync.create_async_io(8).unwrap(), mem).unwrap();
    assert!(!queue.registered_memory());
}

#[test]
fn io_uring_registers_new_guest_memory_once_idle() {
    let Some(uring) = Backend::by_name("io_uring").filter(|&b| choose_backend(b).backend == b)
    else {
        eprintln!("io_uring is not available here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, ImageFormat::RAW, &[]);
    let disk = open(&path, uring);
    // A first memory table without the region the data will be in (a vhost-user frontend that adds it later).
    let first = Arc::new(Memory::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap());
    let mut queue = GuestQueue::new(disk.create_async_io(8).unwrap(), first).unwrap();
    if !queue.registered_memory() {
        eprintln!("the kernel refused to register guest memory (RLIMIT_MEMLOCK?)");
        return;
    }
    let mem = memory();
    mem.write_slice(&[0x5a; 8192], GuestAddress(0x40000))
        .unwrap();
    queue.set_memory(Arc::clone(&mem));
    let iov = [GuestIoVec::new(GuestAddress(0x40000), 8192)];
    let write = GuestRequest::new(
        1,
        GuestOp::Write {
            offset: 0,
            iovecs: &iov,
        },
    );
    queue.submit(&[write]).unwrap();
    ok(&wait_all(&mut queue, 1)[0]);
    // The new memory was registered before the write went out: it used the registered form.
    let fixed = queue.fixed_buffer_ops();
    assert!(fixed >= 1, "{fixed} registered-buffer operations");
    // With a request in flight the registration waits; the data stays right either way.
    let newer = memory();
    let back = [GuestIoVec::new(GuestAddress(0x10000), 8192)];
    let read = GuestRequest::new(
        2,
        GuestOp::Read {
            offset: 0,
            iovecs: &back,
        },
    );
    queue.submit(&[read]).unwrap();
    queue.set_memory(Arc::clone(&newer));
    let read_again = GuestRequest::new(
        3,
        GuestOp::Read {
            offset: 0,
            iovecs: &back,
        },
    );
    queue.submit(&[read_again]).unwrap();
    let done = wait_all(&mut queue, 2);
    assert_eq!((ok(&done[0]), ok(&done[1])), (8192, 8192));
    let mut got = vec![0u8; 8192];
    mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    newer.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    // Idle now: the next submission registers `newer`, and uses it.
    let before = queue.fixed_buffer_ops();
    queue.submit(&[read_again]).unwrap();
    assert_eq!(ok(&wait_all(&mut queue, 1)[0]), 8192);
    assert!(queue.fixed_buffer_ops() > before);
}

#[test]
fn properties_per_format() {
    let dir = tempfile::tempdir().unwrap();
    for (format, options) in formats() {
        let path = image(&dir, format, &options);
        let disk = open_disk_file(&DiskFileParams::new(&path)).unwrap();
        let p = disk.properties();
        let t = disk.topology();
        assert_eq!(p.topology, t);
        assert_eq!(p.capacity, disk.logical_size());
        assert_eq!((p.request_alignment, p.buffer_alignment), (512, 1));
        assert_eq!(p.max_segments, 1024);
        assert!(p.needs_flush && !p.native_fua && !p.read_only);
        let expected = match format.name() {
            "qcow2" => 65536,                    // the cluster size (QEMU's pdiscard_alignment)
            "vhdx" => 8 << 20,                   // the block size
            "vpc" => 0, // VHD frees nothing on discard (QEMU's vpc has no discard)
            _ => t.discard_granularity.max(512), // raw: the host file system's block
        };
        assert_eq!(t.discard_granularity, expected, "{}", format.name());
        assert_eq!(p.supports_discard, expected > 0, "{}", format.name());
        drop(disk);
        let ro = open_disk_file(&DiskFileParams::new(&path).read_only(true)).unwrap();
        let p = ro.properties();
        assert!(p.read_only && !p.supports_discard && !p.supports_write_zeroes);
    }
    // A QCOW2 of 2 MiB clusters says so.
    let path = dir.path().join("big.qcow2");
    let mut params = CreateParams::new(&path, ImageFormat::by_name("qcow2").unwrap(), Some(DISK));
    params.options = vec![("cluster_size".into(), "2097152".into())];
    create_disk_file(&params).unwrap();
    let disk = open_disk_file(&DiskFileParams::new(&path)).unwrap();
    assert_eq!(disk.properties().topology.discard_granularity, 2 << 20);
}

#[test]
fn replaced_memory_serves_new_requests_and_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, ImageFormat::RAW, &[]);
    let disk = open(&path, Backend::SYNC);
    disk.write_all_at(0, &[0x42; 4096]).unwrap();
    let old = memory();
    let mut queue = GuestQueue::new(disk.create_async_io(4).unwrap(), Arc::clone(&old)).unwrap();
    let new = memory();
    queue.set_memory(Arc::clone(&new));
    assert!(Arc::ptr_eq(queue.memory(), &new));
    // Nothing was in flight: the queue let go of the old memory at once.
    assert_eq!(Arc::strong_count(&old), 1);
    let iov = [GuestIoVec::new(GuestAddress(0x5000), 4096)];
    queue
        .submit(&[GuestRequest::new(
            1,
            GuestOp::Read {
                offset: 0,
                iovecs: &iov,
            },
        )])
        .unwrap();
    assert_eq!(ok(&wait_all(&mut queue, 1)[0]), 4096);
    let (mut in_new, mut in_old) = ([0u8; 4096], [0u8; 4096]);
    new.read_slice(&mut in_new, GuestAddress(0x5000)).unwrap();
    old.read_slice(&mut in_old, GuestAddress(0x5000)).unwrap();
    assert_eq!((in_new, in_old), ([0x42; 4096], [0; 4096]));
    assert!(dirty(&new, 0x5000) && !dirty(&old, 0x5000));
}

/// With a dirty-log switch, a read marks its pages only when the switch is on as its completion comes back,
/// on every backend.
#[test]
fn reads_mark_pages_only_while_the_dirty_log_switch_is_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(&dir, ImageFormat::RAW, &[]);
        let disk = open(&path, backend);
        let mem = memory();
        let mut queue =
            GuestQueue::new(disk.create_async_io(4).unwrap(), Arc::clone(&mem)).unwrap();
        let logging = Arc::new(AtomicBool::new(false));
        queue.set_dirty_log(Arc::clone(&logging));
        let read = |queue: &mut GuestQueue<Memory>, addr: u64| {
            let iov = [GuestIoVec::new(GuestAddress(addr), 4096)];
            queue
                .submit(&[GuestRequest::new(
                    1,
                    GuestOp::Read {
                        offset: 0,
                        iovecs: &iov,
                    },
                )])
                .unwrap();
            assert_eq!(ok(&wait_all(queue, 1)[0]), 4096);
        };
        read(&mut queue, 0x5000);
        assert!(!dirty(&mem, 0x5000), "{backend}: marked while off");
        logging.store(true, Ordering::Release);
        read(&mut queue, 0x9000);
        assert!(dirty(&mem, 0x9000), "{backend}: not marked while on");
    }
}
