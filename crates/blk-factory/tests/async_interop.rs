//! Every async path equals the synchronous one on a QEMU-made corpus: for each backend that works on this host
//! (io_uring, Linux AIO, synchronous), images qemu-img made read back through an `AsyncIo` queue byte for byte
//! as through `DiskFile::read_at` and as `qemu-img convert -O raw` reads them; writes through the queue give
//! images that pass `qemu-img check` and compare equal to qemu-io's result of the same writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use blk_core::{AsyncDiskFile, AsyncIo, IoBuf, IoBufMut, Request, RequestOp};
use blk_factory::{choose_backend, open_disk_file, Backend, DiskFileParams, NamedImagePolicy};
use blk_test_support::REFERENCE_WRITES;

const MIB: u64 = 1 << 20;
/// The test buffer: larger than every corpus image (16 MiB; VHD's CHS geometry rounds up a little).
const SIZE: u64 = 20 * MIB;

/// The address of one leaked, page-aligned buffer of `SIZE` bytes shared by the tests of this binary (queue
/// buffers must be `'static`, like guest memory); the mutex serializes its users.
static BUFFER: Mutex<usize> = Mutex::new(0);

fn with_buffer<R>(f: impl FnOnce(&'static mut [u8]) -> R) -> R {
    let mut addr = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
    if *addr == 0 {
        let raw: &'static mut [u8] =
            Box::leak(vec![0u8; (SIZE + 4096) as usize].into_boxed_slice());
        let skip = raw.as_ptr().align_offset(4096);
        *addr = raw[skip..].as_mut_ptr() as usize;
    }
    // SAFETY: `*addr` is the start of SIZE bytes of leaked (never freed) memory; only the holder of the mutex,
    // held across `f`, makes a slice of it, so there is never a second live reference.
    let buf = unsafe { std::slice::from_raw_parts_mut(*addr as *mut u8, SIZE as usize) };
    f(buf)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(dir: &Path, fmt: &str, image: &str, cmds: &[impl AsRef<str>]) {
    let mut c = Command::new("qemu-io");
    c.current_dir(dir).args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd.as_ref()]);
    }
    run(c.arg(image));
}

fn qemu_img(dir: &Path, args: &[&str]) -> String {
    run(Command::new("qemu-img").current_dir(dir).args(args))
}

/// The corpus: (image, qemu format name). Mirrors `shared/conformance/make-corpus.sh`, keeping `src.raw`.
fn make_corpus(dir: &Path) -> Vec<(String, &'static str)> {
    // `make-corpus.sh`'s writes: aligned and unaligned data, zero writes and a discard.
    let fill = &blk_test_support::qemu_io_commands(REFERENCE_WRITES);
    let mut images = Vec::new();
    let mut add = |name: &str, fmt: &'static str| images.push((name.to_string(), fmt));
    qemu_img(dir, &["create", "-q", "-f", "raw", "raw.img", "16M"]);
    qemu_io(dir, "raw", "raw.img", fill);
    add("raw.img", "raw");
    for o in [
        "compat=1.1",
        "compat=0.10",
        "cluster_size=512",
        "cluster_size=1M",
        "refcount_bits=4",
    ] {
        let name = format!("qcow2-{}.img", o.replace('=', "-"));
        qemu_img(dir, &["create", "-q", "-f", "qcow2", "-o", o, &name, "16M"]);
        qemu_io(dir, "qcow2", &name, fill);
        add(&name, "qcow2");
    }
    qemu_img(dir, &["create", "-q", "-f", "raw", "src.raw", "16M"]);
    qemu_io(dir, "raw", "src.raw", fill);
    qemu_img(
        dir,
        &[
            "convert",
            "-q",
            "-c",
            "-O",
            "qcow2",
            "src.raw",
            "qcow2-zlib.img",
        ],
    );
    add("qcow2-zlib.img", "qcow2");
    qemu_img(
        dir,
        &[
            "convert",
            "-q",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd,cluster_size=16k",
            "src.raw",
            "qcow2-zstd.img",
        ],
    );
    add("qcow2-zstd.img", "qcow2");
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "src.raw",
            "-F",
            "raw",
            "qcow2-backed.img",
            "16M",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "qcow2-backed.img",
        &["write -P 0x19 1M 8k", "write -z 9M 4k"],
    );
    add("qcow2-backed.img", "qcow2");
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
            "-b",
            "src.raw",
            "-F",
            "raw",
            "qcow2-extl2.img",
            "16M",
        ],
    );
    qemu_io(
        dir,
        "qcow2",
        "qcow2-extl2.img",
        &["write -P 0x2a 4k 4k", "write -z 300k 4k"],
    );
    add("qcow2-extl2.img", "qcow2");
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=qcow2-datafile.data",
            "qcow2-datafile.img",
            "16M",
        ],
    );
    qemu_io(dir, "qcow2", "qcow2-datafile.img", fill);
    add("qcow2-datafile.img", "qcow2");
    for (name, fmt, opts) in [
        ("vpc-dynamic.img", "vpc", "subformat=dynamic"),
        ("vpc-fixed.img", "vpc", "subformat=fixed"),
        ("vhdx-dynamic.img", "vhdx", "subformat=dynamic"),
        ("vhdx-fixed.img", "vhdx", "subformat=fixed,block_size=2M"),
    ] {
        qemu_img(dir, &["create", "-q", "-f", fmt, "-o", opts, name, "16M"]);
        qemu_io(dir, fmt, name, fill);
        add(name, fmt);
    }
    images
}

/// The backends that work here, each exactly as requested (a fallback is tested in `backend_fallback.rs`).
fn backends() -> Vec<Backend> {
    Backend::all()
        .filter(|&b| {
            let chosen = choose_backend(b).backend;
            if chosen != b {
                eprintln!("note: {} is not available here; not tested", b.name());
            }
            chosen == b
        })
        .collect()
}

fn open(path: &Path, backend: Backend, read_only: bool) -> Box<dyn AsyncDiskFile> {
    open_disk_file(
        &DiskFileParams::new(path)
            .read_only(read_only)
            .backend(backend)
            .named_images(NamedImagePolicy::AllowRecordedFormat),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Submits `batch`, then waits for and reaps all of it; returns the results by user_data order.
fn run_batch(queue: &mut dyn AsyncIo, batch: &[Request<'_>]) -> Vec<blk_core::Result<u64>> {
    queue.submit(batch).unwrap();
    let mut results: Vec<Option<blk_core::Result<u64>>> = (0..batch.len()).map(|_| None).collect();
    let mut left = batch.len();
    while left > 0 {
        while let Some(c) = queue.next_completed_request() {
            let i = batch
                .iter()
                .position(|r| r.user_data == c.user_data)
                .expect("a completion for a submitted request");
            assert!(
                results[i].is_none(),
                "request {} completed twice",
                c.user_data
            );
            results[i] = Some(c.result);
            left -= 1;
        }
        if left > 0 {
            let _ = queue.notifier().read();
        }
    }
    results.into_iter().map(|r| r.expect("completed")).collect()
}

/// Request sizes cycling through small, odd-sized, cluster-crossing and large reads.
const READ_SIZES: &[u64] = &[
    4096,
    512,
    65536,
    3 * 4096 + 512,
    131072,
    1024,
    200 * 1024,
    7 * 512,
];

/// Reads the whole disk through `queue` at depth 32 into `buf`.
fn read_all(queue: &mut dyn AsyncIo, buf: &mut [u8]) {
    let size = buf.len() as u64;
    let base = buf.as_mut_ptr();
    let mut offset = 0u64;
    let mut k = 0usize;
    while offset < size {
        let mut pieces = Vec::new();
        while pieces.len() < 32 && offset < size {
            let len = READ_SIZES[k % READ_SIZES.len()].min(size - offset);
            k += 1;
            // SAFETY: `buf` is the leaked buffer of `with_buffer` (never freed); offset..offset+len lies inside
            // it, and each request of the batch
            // gets a disjoint part of it, which no one else touches until the batch is reaped below.
            let b = unsafe { IoBufMut::from_raw_parts(base.add(offset as usize), len as usize) };
            pieces.push((offset, [b]));
            offset += len;
        }
        let batch: Vec<Request<'_>> = pieces
            .iter()
            .enumerate()
            .map(|(i, (off, bufs))| Request::new(i as u64, RequestOp::Read { offset: *off, bufs }))
            .collect();
        for r in run_batch(queue, &batch) {
            r.unwrap();
        }
    }
}

#[test]
fn async_reads_equal_sync_reads_and_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let images = make_corpus(dir.path());
    for (name, fmt) in &images {
        let path = dir.path().join(name);
        let expected_path = dir.path().join(format!("{name}.expected"));
        qemu_img(
            dir.path(),
            &[
                "convert",
                "-f",
                fmt,
                "-O",
                "raw",
                name,
                &format!("{name}.expected"),
            ],
        );
        let expected = std::fs::read(&expected_path).unwrap();
        let sync = open(&path, Backend::SYNC, true);
        let size = sync.logical_size() as usize;
        assert_eq!(size, expected.len(), "{name}: virtual size");
        let mut via_sync = vec![0u8; size];
        sync.read_exact_at(0, &mut via_sync).unwrap();
        assert!(
            via_sync == expected,
            "{name}: the sync path differs from qemu-img"
        );
        for backend in backends() {
            let disk = open(&path, backend, true);
            let mut queue = disk.create_async_io(32).unwrap();
            with_buffer(|buf| {
                let buf = &mut buf[..size];
                buf.fill(0xee);
                read_all(&mut *queue, buf);
                assert!(
                    buf[..] == expected[..],
                    "{name} via {}: async read differs from the sync path",
                    backend.name()
                );
            });
        }
    }
}

/// A guest workload in batches: requests of a batch never overlap (their order is unspecified); later batches
/// overwrite earlier ones. (`op`, offset, len, pattern): op 'w' write, 'z' write-zeroes, 'd' discard.
const WRITES: &[&[(char, u64, u64, u8)]] = &[
    &[
        ('w', 0, 65536, 0x11), // a whole 64 KiB cluster (allocating where empty)
        ('w', 65536 + 4096, 4096, 0x12), // a partial cluster
        ('w', MIB, 2 * MIB, 0x13), // many whole clusters
        ('w', 5 * MIB + 512, 3 * 512, 0x14),
        ('w', 9 * MIB, 4096, 0x15), // over qemu's data
        ('z', 12 * MIB, 128 * 1024, 0),
    ],
    &[
        ('w', 4096, 8192, 0x21), // in place, in the cluster written above
        ('w', MIB + 65536, 65536, 0x22),
        ('w', 15 * MIB, MIB, 0x23), // up to the end of the disk
        ('d', 7 * MIB, 64 * 1024, 0),
    ],
];

fn qemu_io_commands() -> Vec<String> {
    let mut cmds = Vec::new();
    for batch in WRITES {
        for &(op, off, len, pattern) in *batch {
            cmds.push(match op {
                'w' => format!("write -P {pattern:#x} {off} {len}"),
                'z' => format!("write -z {off} {len}"),
                _ => format!("discard {off} {len}"),
            });
        }
    }
    cmds
}

/// Applies [`WRITES`] through `queue` (one submit per batch, then a flush).
fn write_all(queue: &mut dyn AsyncIo, buf: &mut [u8], discard: bool) {
    let base = buf.as_mut_ptr();
    for batch in WRITES {
        let mut bufs = Vec::new();
        for &(op, off, len, pattern) in *batch {
            if op == 'w' {
                let at = off as usize;
                buf[at..at + len as usize].fill(pattern);
                // SAFETY: each write of a batch has its own disjoint range of the leaked buffer (its guest
                // range), unchanged until the batch is reaped.
                bufs.push([unsafe { IoBuf::from_raw_parts(base.add(at), len as usize) }]);
            } else {
                bufs.push([IoBuf::from(&[][..])]);
            }
        }
        let requests: Vec<Request<'_>> = batch
            .iter()
            .zip(&bufs)
            .enumerate()
            .filter(|(_, ((op, ..), _))| discard || *op != 'd')
            .map(|(i, (&(op, offset, len, _), b))| {
                let op = match op {
                    'w' => RequestOp::Write { offset, bufs: b },
                    'z' => RequestOp::WriteZeroes { offset, len },
                    _ => RequestOp::Discard { offset, len },
                };
                Request::new(i as u64, op)
            })
            .collect();
        for r in run_batch(queue, &requests) {
            r.unwrap();
        }
    }
    for r in run_batch(queue, &[Request::new(99, RequestOp::Flush)]) {
        r.unwrap();
    }
}

fn copy_image(dir: &Path, name: &str, to: &str) -> PathBuf {
    let sub = dir.join(to);
    std::fs::create_dir_all(&sub).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        // The image, and the files it names (backing file, data file).
        if file == name || file == "src.raw" || file.ends_with(".data") {
            std::fs::copy(entry.path(), sub.join(&file)).unwrap();
        }
    }
    sub.join(name)
}

#[test]
fn async_writes_pass_qemu_check_and_compare_equal_to_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let images = make_corpus(dir.path());
    for backend in backends() {
        for (name, fmt) in &images {
            // qemu-io cannot discard on VHD and ignores it on VHDX; leave discard to the formats that define it.
            let discard = matches!(*fmt, "raw" | "qcow2");
            let ours = copy_image(dir.path(), name, &format!("blk-{}", backend.name()));
            let theirs = copy_image(dir.path(), name, &format!("qemu-{}", backend.name()));
            {
                let disk = open(&ours, backend, false);
                let mut queue = disk.create_async_io(32).unwrap();
                with_buffer(|buf| write_all(&mut *queue, buf, discard));
            }
            let cmds: Vec<String> = qemu_io_commands()
                .into_iter()
                .filter(|c| discard || !c.starts_with("discard"))
                .collect();
            let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
            let theirs_dir = theirs.parent().unwrap();
            qemu_io(theirs_dir, fmt, name, &cmds);
            if matches!(*fmt, "qcow2" | "vhdx") {
                let ours_dir = ours.parent().unwrap();
                qemu_img(ours_dir, &["check", "-f", fmt, name]);
            }
            // QEMU resolves a relative data file against its working directory: read each image from its own.
            let ours_raw = ours.with_extension("out");
            let theirs_raw = theirs.with_extension("out");
            for (image, out) in [(&ours, &ours_raw), (&theirs, &theirs_raw)] {
                let dir = image.parent().unwrap();
                let file = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
                qemu_img(
                    dir,
                    &["convert", "-f", fmt, "-O", "raw", &file(image), &file(out)],
                );
            }
            assert!(
                std::fs::read(&ours_raw).unwrap() == std::fs::read(&theirs_raw).unwrap(),
                "{name} via {}: the guest data differs from qemu-io's",
                backend.name()
            );
        }
    }
}
