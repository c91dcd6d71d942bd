//! Fault injection for every format and every fault kind (issue 15): EIO or ENOSPC at the nth read, write,
//! flush or allocation, and short reads and writes, in the host-file layer ([`FaultInjector`] as a `HostFile`
//! hook) and under each async backend ([`FaultyBackend`] around sync, io_uring and AIO queues), over raw,
//! QCOW2 (v3, with a backing file), VHD (dynamic) and VHDX (dynamic), on the synchronous path and through
//! async queues.
//!
//! Each run opens a fresh copy of the image, arms one rule, runs a fixed workload of writes, reads and
//! flushes against a byte model, then reopens the image without faults. Afterwards:
//! - the image checks clean (leaks allowed);
//! - the request the fault hit reported an error (a failure injected and no request failing is a fault
//!   swallowed), and the requests after it worked;
//! - every read returned what the model says (a failed write's bytes may be old or new);
//! - no acknowledged write (flushed or not) is lost, and nothing else changed.
//!
//! The counts (runs, faults injected, requests failed, writes lost) are printed per format and path
//! (`--nocapture`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blk_core::{
    AsyncIo, ErrorKind, HostCall, HostFault, HostQueueBackend, IoBuf, IoBufMut, OpenOptions,
    OpenedImage, RepairMode, Request, RequestOp, Result,
};
use blk_factory::{
    choose_backend, create_disk_file, Backend, CreateParams, FactoryOpener, ImageFormat,
    NamedImagePolicy,
};
use blk_test_support::{
    complete, pattern, rw, target_tempdir, FaultInjector, FaultRule, FaultyBackend, EIO, ENOSPC,
};

const SIZE: u64 = 8 << 20;
const K: u64 = 1 << 10;
const M: u64 = 1 << 20;

/// The workload: writes to separate ranges (some allocating, some not), reads across written and untouched
/// ranges, flushes between.
#[derive(Debug, Clone, Copy)]
enum Op {
    Write(u64, u64, u64),
    Read(u64, u64),
    Flush,
}

const WORKLOAD: &[Op] = &[
    Op::Write(0, 64 * K, 1),
    Op::Write(3 * M, 128 * K, 2),
    Op::Flush,
    Op::Read(0, 256 * K),
    Op::Write(5 * M + 4 * K, 8 * K, 3),
    Op::Write(64 * K, 4 * K, 4),
    Op::Flush,
    Op::Write(7 * M, 64 * K, 5),
    Op::Read(3 * M - 4 * K, 136 * K),
    Op::Write(M, 4 * K, 6),
    Op::Flush,
    Op::Read(5 * M, 2 * M + 64 * K),
];

/// What the disk must hold, byte by byte: `expected`, or where a write failed, `expected` or `alternative`.
struct Model {
    expected: Vec<u8>,
    alternative: Vec<u8>,
    uncertain: Vec<bool>,
    /// Writes acknowledged: (offset, len, seed, flushed since).
    acked: Vec<(u64, u64, u64, bool)>,
}

impl Model {
    fn new(base: Vec<u8>) -> Model {
        let len = base.len();
        Model {
            alternative: base.clone(),
            expected: base,
            uncertain: vec![false; len],
            acked: Vec::new(),
        }
    }

    fn range(offset: u64, len: u64) -> std::ops::Range<usize> {
        offset as usize..(offset + len) as usize
    }

    fn wrote(&mut self, offset: u64, len: u64, seed: u64, ok: bool) {
        let data = pattern(seed, len as usize);
        let r = Model::range(offset, len);
        if ok {
            self.expected[r.clone()].copy_from_slice(&data);
            self.uncertain[r].fill(false);
            self.acked.push((offset, len, seed, false));
        } else {
            self.alternative[r.clone()].copy_from_slice(&data);
            self.uncertain[r].fill(true);
        }
    }

    fn flushed(&mut self) {
        for w in &mut self.acked {
            w.3 = true;
        }
    }

    /// Bytes of `got` (read at `offset`) the model does not allow.
    fn wrong(&self, offset: u64, got: &[u8]) -> usize {
        let r = Model::range(offset, got.len() as u64);
        got.iter()
            .zip(&self.expected[r.clone()])
            .zip(&self.alternative[r.clone()])
            .zip(&self.uncertain[r])
            .filter(|(((g, e), a), u)| *g != *e && !(**u && *g == *a))
            .count()
    }
}

/// How requests reach the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path_ {
    /// `DiskFile` methods (the synchronous engine); faults in the host-file layer.
    Sync,
    /// An async queue on a backend; faults under the backend's queues and in the host-file layer.
    Async(&'static str),
}

/// Where a run's faults come from and what its requests did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    runs: u64,
    injected: u64,
    runs_injected: u64,
    failed_requests: u64,
    swallowed: u64,
    later_failures: u64,
    wrong_reads: u64,
    lost_flushed: u64,
    lost_acked: u64,
    leaks: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.runs += o.runs;
        self.injected += o.injected;
        self.runs_injected += o.runs_injected;
        self.failed_requests += o.failed_requests;
        self.swallowed += o.swallowed;
        self.later_failures += o.later_failures;
        self.wrong_reads += o.wrong_reads;
        self.lost_flushed += o.lost_flushed;
        self.lost_acked += o.lost_acked;
        self.leaks += o.leaks;
    }
}

/// A test image: the file runs copy, its format, the guest bytes it starts with.
struct Template {
    format: ImageFormat,
    path: PathBuf,
    base: Vec<u8>,
}

fn template(dir: &Path, name: &str) -> Template {
    let format: ImageFormat = name.parse().unwrap();
    let path = dir.join(format!("template.{name}"));
    let mut params = CreateParams::new(&path, format, Some(SIZE));
    let mut base = vec![0u8; SIZE as usize];
    match name {
        "qcow2" => {
            // v3 (QEMU's default compat=1.1) over a raw backing file full of data.
            let backing = dir.join("backing.raw");
            create_disk_file(&CreateParams::new(&backing, ImageFormat::RAW, Some(SIZE))).unwrap();
            base = pattern(99, SIZE as usize);
            std::fs::write(&backing, &base).unwrap();
            params.options = vec![("compat".into(), "1.1".into())];
            params.backing_file = Some(backing.to_str().unwrap().to_string());
            params.backing_format = Some(ImageFormat::RAW);
        }
        "vpc" => params.options = vec![("subformat".into(), "dynamic".into())],
        "vhdx" => params.options = vec![("subformat".into(), "dynamic".into())],
        _ => {}
    }
    create_disk_file(&params).unwrap();
    Template { format, path, base }
}

fn open(
    format: ImageFormat,
    path: &Path,
    backend: Arc<dyn HostQueueBackend>,
) -> Result<OpenedImage> {
    let options = OpenOptions::new(rw())
        .opener(Arc::new(FactoryOpener::new(
            NamedImagePolicy::AllowRecordedFormat,
            false,
            blk_core::LockMode::Auto,
        )))
        .backend(backend);
    format.descriptor().open(path, &options)
}

/// Buffers the async runs read into and write from (they must outlive the queue: made once per test).
struct Buffers {
    read: IoBufMut<'static>,
    writes: Vec<IoBuf<'static>>,
}

fn buffers() -> Buffers {
    let read = Box::leak(vec![0u8; (3 * M) as usize].into_boxed_slice());
    let writes = WORKLOAD
        .iter()
        .filter_map(|op| match *op {
            Op::Write(_, len, seed) => {
                let data: &'static [u8] = Box::leak(pattern(seed, len as usize).into_boxed_slice());
                Some(IoBuf::from(data))
            }
            _ => None,
        })
        .collect();
    Buffers {
        read: IoBufMut::from(&mut read[..]),
        writes,
    }
}

/// Runs the workload on `image` by `path`; each request's outcome in order (read data checked against the
/// model as it goes: the count of wrong reads is returned).
fn run_workload(
    image: &OpenedImage,
    path: Path_,
    model: &mut Model,
    buffers: &Buffers,
    injector: &FaultInjector,
    rule: Option<FaultRule>,
) -> (Vec<bool>, u64) {
    let mut queue: Option<Box<dyn AsyncIo>> = match path {
        Path_::Sync => None,
        Path_::Async(_) => Some(image.disk.create_async_io(8).unwrap()),
    };
    // Rules count the workload's calls only (not the open's, nor the queue's creation).
    injector.rearm(rule.into_iter().collect());
    let mut outcomes = Vec::new();
    let mut wrong = 0;
    let mut write_index = 0;
    for (i, op) in WORKLOAD.iter().enumerate() {
        let ok = match (*op, queue.as_mut()) {
            (Op::Write(offset, len, seed), None) => {
                let ok = image
                    .disk
                    .write_all_at(offset, &pattern(seed, len as usize))
                    .is_ok();
                model.wrote(offset, len, seed, ok);
                ok
            }
            (Op::Write(offset, len, seed), Some(q)) => {
                let bufs = [buffers.writes[write_index]];
                let request = Request::new(
                    i as u64,
                    RequestOp::Write {
                        offset,
                        bufs: &bufs,
                    },
                );
                let ok = complete(&mut **q, &[request])[0].result.is_ok();
                model.wrote(offset, len, seed, ok);
                ok
            }
            (Op::Read(offset, len), None) => {
                let mut got = vec![0u8; len as usize];
                let ok = image.disk.read_exact_at(offset, &mut got).is_ok();
                if ok {
                    wrong += model.wrong(offset, &got);
                }
                ok
            }
            (Op::Read(offset, len), Some(q)) => {
                let bufs = [buffers.read.subslice(0, len as usize).unwrap()];
                let request = Request::new(
                    i as u64,
                    RequestOp::Read {
                        offset,
                        bufs: &bufs,
                    },
                );
                let ok = complete(&mut **q, &[request])[0].result.is_ok();
                if ok {
                    let mut got = vec![0u8; len as usize];
                    bufs[0].as_io_buf().copy_to(&mut got);
                    wrong += model.wrong(offset, &got);
                }
                ok
            }
            (Op::Flush, None) => image.disk.flush().is_ok(),
            (Op::Flush, Some(q)) => {
                let request = Request::new(i as u64, RequestOp::Flush);
                complete(&mut **q, &[request])[0].result.is_ok()
            }
        };
        if matches!(op, Op::Write(..)) {
            write_index += 1;
        }
        if matches!(op, Op::Flush) && ok {
            model.flushed();
        }
        outcomes.push(ok);
    }
    drop(queue);
    (outcomes, wrong as u64)
}

/// One run: a copy of the template, `rule` armed, the workload, then the checks after a clean reopen.
fn run_once(
    t: &Template,
    dir: &Path,
    path: Path_,
    backend: &Arc<dyn HostQueueBackend>,
    buffers: &Buffers,
    rule: Option<FaultRule>,
    label: &str,
) -> (Tally, [(HostCall, u64); 4]) {
    let copy = dir.join(format!("run.{}", t.format.name()));
    std::fs::copy(&t.path, &copy).unwrap();
    let injector = Arc::new(FaultInjector::new(Vec::new()));
    let registration = injector.register(&copy).unwrap();
    let run_backend: Arc<dyn HostQueueBackend> = match path {
        Path_::Sync => backend.clone(),
        Path_::Async(_) => Arc::new(FaultyBackend::new(backend.clone(), injector.clone())),
    };
    let image = open(t.format, &copy, run_backend).unwrap();
    let mut model = Model::new(t.base.clone());
    let (outcomes, wrong_reads) = run_workload(&image, path, &mut model, buffers, &injector, rule);
    // The workload's calls, by kind; then no more faults: the close cannot report one to any request.
    let counts = [
        HostCall::Read,
        HostCall::Write,
        HostCall::Flush,
        HostCall::Allocate,
    ]
    .map(|call| (call, injector.count(call)));
    let injected = injector.injected();
    injector.rearm(Vec::new());
    drop(image);
    drop(registration);

    let mut tally = Tally {
        runs: 1,
        injected,
        runs_injected: u64::from(injected > 0),
        wrong_reads,
        ..Tally::default()
    };
    tally.failed_requests = outcomes.iter().filter(|ok| !**ok).count() as u64;
    if let Some(first) = outcomes.iter().position(|ok| !*ok) {
        tally.later_failures = outcomes[first + 1..].iter().filter(|ok| !**ok).count() as u64;
    }
    let failing = matches!(rule.map(|r| r.fault), Some(HostFault::Fail(_)));
    if failing && tally.injected > 0 && tally.failed_requests == 0 {
        tally.swallowed = 1;
    }

    // Reopened without faults: checks clean (leaks allowed), holds what the model says.
    let image =
        open(t.format, &copy, backend.clone()).unwrap_or_else(|e| panic!("{label}: reopen: {e}"));
    match image.admin.check(RepairMode::None) {
        Ok(report) => {
            assert_eq!(
                (report.corruptions, report.check_errors),
                (0, 0),
                "{label}: {:?}",
                report.messages
            );
            tally.leaks += report.leaks;
        }
        Err(e) if e.kind() == ErrorKind::Unsupported => {}
        Err(e) => panic!("{label}: check: {e}"),
    }
    let mut all = vec![0u8; SIZE as usize];
    image.disk.read_exact_at(0, &mut all).unwrap();
    let wrong = model.wrong(0, &all);
    for &(offset, len, seed, flushed) in &model.acked {
        let r = Model::range(offset, len);
        if all[r] != pattern(seed, len as usize)[..] {
            if flushed {
                tally.lost_flushed += 1;
            } else {
                tally.lost_acked += 1;
            }
        }
    }
    assert_eq!(
        wrong, 0,
        "{label}: {wrong} bytes differ from the model after reopening"
    );
    (tally, counts)
}

/// How many of each kind of call a run faults at most: all of them when the workload makes no more, else an
/// even sample (the first and the last among them).
const SAMPLE: u64 = 8;

/// The `nth`s to fault among `count` calls of a kind.
fn nths(count: u64) -> Vec<u64> {
    if count <= SAMPLE {
        return (1..=count).collect();
    }
    (0..SAMPLE)
        .map(|i| 1 + i * (count - 1) / (SAMPLE - 1))
        .collect()
}

const FAULTS: &[(HostCall, HostFault, &str)] = &[
    (HostCall::Read, HostFault::Fail(EIO), "read EIO"),
    (HostCall::Read, HostFault::Fail(ENOSPC), "read ENOSPC"),
    (HostCall::Read, HostFault::Short(700), "read short"),
    (HostCall::Write, HostFault::Fail(EIO), "write EIO"),
    (HostCall::Write, HostFault::Fail(ENOSPC), "write ENOSPC"),
    (HostCall::Write, HostFault::Short(700), "write short"),
    (HostCall::Flush, HostFault::Fail(EIO), "flush EIO"),
    (HostCall::Flush, HostFault::Fail(ENOSPC), "flush ENOSPC"),
    (HostCall::Allocate, HostFault::Fail(EIO), "allocation EIO"),
    (
        HostCall::Allocate,
        HostFault::Fail(ENOSPC),
        "allocation ENOSPC",
    ),
];

fn paths() -> Vec<(Path_, Arc<dyn HostQueueBackend>)> {
    let mut found = vec![(
        Path_::Sync,
        choose_backend(Backend::named("sync").unwrap()).handle(),
    )];
    for name in ["sync", "io_uring", "aio"] {
        let choice = choose_backend(Backend::named(name).unwrap());
        if choice.backend.name() == name {
            found.push((Path_::Async(name), choice.handle()));
        } else {
            eprintln!("skipping the async path on {name}: {:?}", choice.notes);
        }
    }
    found
}

fn every_fault(format: &str) {
    // On tmpfs when there is one: a run flushes several times, and the matrix is hundreds of runs.
    let dir = if Path::new("/dev/shm").is_dir() {
        blk_test_support::tempdir_in("/dev/shm", "blk-fault-injection")
    } else {
        target_tempdir!("fault-injection")
    };
    let t = template(dir.path(), format);
    let buffers = buffers();
    let mut total = Tally::default();
    for (path, backend) in paths() {
        // How many calls of each kind the workload makes on this path.
        let (clean, counts) = run_once(&t, dir.path(), path, &backend, &buffers, None, "count");
        assert_eq!(
            clean.failed_requests, 0,
            "{format} {path:?}: the workload fails without faults"
        );
        let mut per_path = Tally::default();
        for &(call, fault, name) in FAULTS {
            let count = counts
                .iter()
                .find(|(c, _)| *c == call)
                .map_or(0, |(_, n)| *n);
            for nth in nths(count) {
                let rule = FaultRule::once(call, nth, fault);
                let label = format!("{format} {path:?} {name} #{nth}");
                let (tally, _) =
                    run_once(&t, dir.path(), path, &backend, &buffers, Some(rule), &label);
                assert_eq!(
                    tally.wrong_reads, 0,
                    "{label}: a read returned bytes the model does not allow"
                );
                assert_eq!(tally.lost_flushed, 0, "{label}: a flushed write was lost");
                assert_eq!(
                    tally.lost_acked, 0,
                    "{label}: an acknowledged write was lost"
                );
                assert_eq!(
                    tally.later_failures, 0,
                    "{label}: requests after the failed one failed"
                );
                if call != HostCall::Allocate {
                    assert_eq!(
                        tally.swallowed, 0,
                        "{label}: an injected failure reached no request"
                    );
                }
                per_path.add(&tally);
            }
        }
        eprintln!(
            "fault injection {format:>5} {:<16} runs {:>4} injected {:>4} (runs with a fault {:>4}) requests failed {:>4} swallowed {:>3} later failures {} wrong reads {} lost flushed {} lost acked {} leaked clusters {}",
            format!("{path:?}"),
            per_path.runs,
            per_path.injected,
            per_path.runs_injected,
            per_path.failed_requests,
            per_path.swallowed,
            per_path.later_failures,
            per_path.wrong_reads,
            per_path.lost_flushed,
            per_path.lost_acked,
            per_path.leaks
        );
        total.add(&per_path);
    }
    eprintln!(
        "fault injection {format:>5} total runs {} injected {} requests failed {} lost flushed writes {}",
        total.runs, total.injected, total.failed_requests, total.lost_flushed
    );
    assert!(total.runs_injected > 0);
}

#[test]
fn raw_survives_every_fault() {
    every_fault("raw");
}

#[test]
fn qcow2_with_a_backing_file_survives_every_fault() {
    every_fault("qcow2");
}

#[test]
fn dynamic_vhd_survives_every_fault() {
    every_fault("vpc");
}

#[test]
fn dynamic_vhdx_survives_every_fault() {
    every_fault("vhdx");
}
