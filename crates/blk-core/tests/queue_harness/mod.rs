//! The test harness for `MappedQueue`: guest buffers at stable addresses, a queue over the fake image with an
//! in-memory model of its contents; and the shared helpers to build, submit and reap requests.
// Shared by several test binaries, each of which uses a part of it.
#![allow(dead_code, unused_imports)]

pub use blk_test_support::{complete, read_request, write_request};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_core::{
    AsyncIo, Completion, DiskFile, HostFile, HostOpenOptions, IoBuf, IoBufMut, LockMode,
    MappedQueue, SyncHostBackend,
};

use crate::fake_image::{FakeMapper, FakeOptions, CLUSTER, SIZE};

pub const ALIGN: usize = 4096;

/// Guest memory for one request: aligned to 4 KiB, at a stable address until dropped.
pub struct GuestBuf {
    pub storage: Vec<u8>,
    pub start: usize,
    pub len: usize,
}

impl GuestBuf {
    pub fn new(len: usize, misalign: usize) -> GuestBuf {
        let storage = vec![0u8; len + 2 * ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN) + misalign;
        GuestBuf {
            storage,
            start,
            len,
        }
    }

    pub fn filled(len: usize, seed: u8) -> GuestBuf {
        let mut buf = GuestBuf::new(len, 0);
        for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
            *b = seed.wrapping_add((i / 7) as u8) | 1;
        }
        buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// The buffer as two iovecs split at `split` (clamped).
    pub fn bufs_mut(&mut self, split: usize) -> Vec<IoBufMut<'static>> {
        let split = split.min(self.len);
        let ptr = self.bytes_mut().as_mut_ptr();
        // SAFETY: the storage is a Vec never resized, kept (in the test's in-flight table or on its stack) until
        // the request's completion has been reaped or the queue dropped; nothing else touches it meanwhile.
        let a = unsafe { IoBufMut::from_raw_parts(ptr, split) };
        // SAFETY: as above; `split <= len`.
        let b = unsafe { IoBufMut::from_raw_parts(ptr.add(split), self.len - split) };
        [a, b].into_iter().filter(|b| !b.is_empty()).collect()
    }

    pub fn bufs(&mut self, split: usize) -> Vec<IoBuf<'static>> {
        self.bufs_mut(split).iter().map(|b| b.as_io_buf()).collect()
    }
}

#[derive(Debug)]
pub enum Expect {
    Read(Vec<u8>),
    Bytes(u64),
}

pub struct InFlight {
    pub buf: Option<GuestBuf>,
    pub range: Option<(u64, u64)>,
    pub expect: Expect,
}

/// A queue with its model. The queue is declared first so it is dropped (and drained) before the buffers.
pub struct Harness {
    pub queue: MappedQueue,
    pub mapper: Arc<FakeMapper>,
    pub inflight: HashMap<u64, InFlight>,
    pub model: Vec<u8>,
    pub next_id: u64,
    pub _dir: tempfile::TempDir,
}

pub fn temp_file(dir: &tempfile::TempDir, direct: bool) -> Option<HostFile> {
    let options = HostOpenOptions {
        direct,
        lock: LockMode::None,
        ..HostOpenOptions::default()
    };
    HostFile::create(dir.path().join("image"), options).ok()
}

impl Harness {
    pub fn new(options: FakeOptions, depth: u32) -> Harness {
        Harness::with_file(options, depth, false).expect("a temp file")
    }

    pub fn with_file(options: FakeOptions, depth: u32, direct: bool) -> Option<Harness> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let file = temp_file(&dir, direct)?;
        let mapper = Arc::new(FakeMapper::new(file, options));
        let queue = MappedQueue::new(mapper.clone(), &SyncHostBackend, depth).unwrap();
        Some(Harness {
            queue,
            mapper,
            inflight: HashMap::new(),
            model: vec![0; SIZE as usize],
            next_id: 0,
            _dir: dir,
        })
    }

    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        self.inflight
            .values()
            .filter_map(|f| f.range)
            .any(|(o, l)| cluster_overlap((o, l), (offset, len)))
    }

    pub fn check(&mut self, done: Completion) {
        let f = self
            .inflight
            .remove(&done.user_data)
            .expect("a known request");
        let result = done
            .result
            .unwrap_or_else(|e| panic!("request failed: {e}"));
        match f.expect {
            Expect::Read(want) => {
                assert_eq!(result, want.len() as u64);
                assert!(f.buf.unwrap().bytes() == &want[..], "read data differs");
            }
            Expect::Bytes(n) => assert_eq!(result, n),
        }
    }

    pub fn reap(&mut self, max: usize) {
        for _ in 0..max {
            match self.queue.next_completed_request() {
                Some(done) => self.check(done),
                None => break,
            }
        }
    }

    pub fn drain(&mut self) {
        let started = Instant::now();
        while !self.inflight.is_empty() {
            match self.queue.next_completed_request() {
                Some(done) => self.check(done),
                None => {
                    assert!(started.elapsed() < Duration::from_secs(30), "queue hangs");
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

pub fn whole_disk(disk: &dyn DiskFile) -> Vec<u8> {
    let mut all = vec![0u8; SIZE as usize];
    disk.read_exact_at(0, &mut all).unwrap();
    all
}

/// Whether two guest ranges share a cluster: the fake image (like a real format) maps whole clusters, so
/// requests in flight together must not share one.
pub fn cluster_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    let clusters = |(o, l): (u64, u64)| (o / CLUSTER, (o + l).div_ceil(CLUSTER));
    let ((a0, a1), (b0, b1)) = (clusters(a), clusters(b));
    a0 < b1 && b0 < a1
}
