//! Fault injection by rule (the idea of QEMU's blkdebug), at both host layers an image's I/O goes through:
//! - [`FaultInjector`] is a [`HostFaults`] hook: registered for a file with [`FaultInjector::register`], every
//!   `HostFile` opened on it asks it before each read or write step, flush and allocation (the synchronous
//!   path, metadata I/O, the synchronous backend's I/O);
//! - [`FaultyBackend`] wraps a [`HostQueueBackend`] (io_uring, AIO, sync): its queues ask an injector before
//!   passing each pushed operation to the real queue, and complete a failed one themselves or pass a short
//!   one on with fewer bytes (the short count reaches the engine as a backend would report it).
//!
//! A rule names the kind of call ([`HostCall`]), which one (the `nth`, counting from 1) and what happens
//! ([`HostFault`]); [`FaultRule::kill`] makes every modifying call from the nth on fail, the way a process
//! killed there leaves its file.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::{HostCall, HostFault, HostFile};
//! use blk_test_support::{rw, FaultInjector, FaultRule};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("f");
//! std::fs::write(&path, [0u8; 4096]).unwrap();
//! let injector = Arc::new(FaultInjector::new(vec![FaultRule::once(
//!     HostCall::Write,
//!     2,
//!     HostFault::Fail(libc::ENOSPC),
//! )]));
//! let _registration = injector.register(&path).unwrap();
//! let file = HostFile::open(&path, rw()).unwrap();
//! file.write_all_at(0, &[1; 512]).unwrap();
//! let err = file.write_all_at(512, &[1; 512]).unwrap_err();
//! assert_eq!(err.errno(), libc::ENOSPC);
//! file.write_all_at(512, &[1; 512]).unwrap();
//! assert_eq!(injector.injected(), 1);
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blk_core::EventFd;
use blk_core::{
    inject_host_faults, HostCall, HostCompletion, HostFault, HostFaults, HostFaultsRegistration,
    HostFile, HostOp, HostQueue, HostQueueBackend, IoBuf, IoBufMut, Result,
};

/// `EIO`, for tests without a libc dependency of their own.
pub const EIO: i32 = libc::EIO;
/// `ENOSPC`, likewise.
pub const ENOSPC: i32 = libc::ENOSPC;

/// One rule: what happens to the `nth` call of kind `call` (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRule {
    /// The kind of call counted.
    pub call: HostCall,
    /// Which one (1 = the first).
    pub nth: u64,
    /// What it does instead.
    pub fault: HostFault,
    /// A kill: `nth` counts modifying calls (write, flush, allocation) together, and every modifying call
    /// from then on fails too.
    pub sticky: bool,
}

impl FaultRule {
    /// The `nth` call of kind `call` has `fault`; the others run.
    pub fn once(call: HostCall, nth: u64, fault: HostFault) -> FaultRule {
        FaultRule {
            call,
            nth,
            fault,
            sticky: false,
        }
    }

    /// The process "dies" at the `nth` modifying call (writes, flushes and allocations counted together): it
    /// and every later modifying call fail with `EIO` (reads still run), so the file stays as the calls
    /// before left it.
    pub fn kill(nth: u64) -> FaultRule {
        FaultRule {
            call: HostCall::Write,
            nth,
            fault: HostFault::Fail(libc::EIO),
            sticky: true,
        }
    }
}

/// Counts calls by kind and applies [`FaultRule`]s; see the [module docs](self).
#[derive(Debug, Default)]
pub struct FaultInjector {
    rules: Mutex<Vec<FaultRule>>,
    counts: Mutex<HashMap<HostCall, u64>>,
    modifications: AtomicU64,
    injected: AtomicU64,
    killed: std::sync::atomic::AtomicBool,
}

impl FaultInjector {
    /// An injector applying `rules` (none: it only counts).
    pub fn new(rules: Vec<FaultRule>) -> FaultInjector {
        FaultInjector {
            rules: Mutex::new(rules),
            ..FaultInjector::default()
        }
    }

    /// Starts over with `rules`: counts from zero again (e.g. once an image has opened, so that rules count
    /// only the calls of the requests that follow), no kill in force. [`injected`](FaultInjector::injected)
    /// keeps counting.
    pub fn rearm(&self, rules: Vec<FaultRule>) {
        let mut current = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        *current = rules;
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.modifications.store(0, Ordering::Release);
        self.killed.store(false, Ordering::Release);
    }

    /// Makes every `HostFile` opened on `path` from now on ask this injector, until the registration drops.
    pub fn register(self: &Arc<Self>, path: impl AsRef<Path>) -> Result<HostFaultsRegistration> {
        inject_host_faults(path, self.clone())
    }

    /// Calls of kind `call` seen so far.
    pub fn count(&self, call: HostCall) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&call).copied().unwrap_or(0)
    }

    /// Modifying calls (writes, flushes, allocations) seen so far.
    pub fn modifications(&self) -> u64 {
        self.modifications.load(Ordering::Acquire)
    }

    /// Faults injected so far (calls failed or cut).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Acquire)
    }

    /// Counts `call` and says what happens to it.
    pub fn decide(&self, call: HostCall) -> Option<HostFault> {
        let nth = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(call).or_insert(0);
            *n += 1;
            *n
        };
        let modifying = call != HostCall::Read;
        let modification = if modifying {
            self.modifications.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        if modifying && self.killed.load(Ordering::Acquire) {
            self.injected.fetch_add(1, Ordering::AcqRel);
            return Some(HostFault::Fail(libc::EIO));
        }
        let rule = {
            let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            rules
                .iter()
                .find(|r| {
                    if r.sticky {
                        modifying && r.nth == modification
                    } else {
                        r.call == call && r.nth == nth
                    }
                })
                .copied()?
        };
        if rule.sticky {
            self.killed.store(true, Ordering::Release);
        }
        self.injected.fetch_add(1, Ordering::AcqRel);
        Some(rule.fault)
    }
}

impl HostFaults for FaultInjector {
    fn check(&self, _path: &Path, call: HostCall, _offset: u64, _len: u64) -> Option<HostFault> {
        self.decide(call)
    }
}

/// A [`HostQueueBackend`] whose queues inject faults by an injector's rules before the real backend's queue
/// sees an operation (see the [module docs](self)).
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn HostQueueBackend>,
    injector: Arc<FaultInjector>,
}

impl FaultyBackend {
    /// `inner`'s queues, faulted by `injector`.
    pub fn new(inner: Arc<dyn HostQueueBackend>, injector: Arc<FaultInjector>) -> FaultyBackend {
        FaultyBackend { inner, injector }
    }
}

impl HostQueueBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        Ok(Box::new(FaultyQueue {
            inner: self.inner.create_queue(files, depth)?,
            injector: self.injector.clone(),
            settled: VecDeque::new(),
            read_cut: Vec::new(),
            write_cut: Vec::new(),
        }))
    }
}

/// A queue of a [`FaultyBackend`].
struct FaultyQueue {
    inner: Box<dyn HostQueue>,
    injector: Arc<FaultInjector>,
    /// Operations failed at push, completed at the next `next_completion`.
    settled: VecDeque<HostCompletion>,
    /// Scratch lists for short operations.
    read_cut: Vec<IoBufMut<'static>>,
    write_cut: Vec<IoBuf<'static>>,
}

/// `bufs` cut to their first `most` bytes.
fn cut<B: Copy>(
    bufs: &[B],
    most: u64,
    len: impl Fn(&B) -> usize,
    prefix: impl Fn(&B, usize) -> B,
    out: &mut Vec<B>,
) {
    out.clear();
    let mut left = usize::try_from(most.max(1)).unwrap_or(usize::MAX);
    for b in bufs {
        if left == 0 {
            break;
        }
        let n = len(b).min(left);
        out.push(prefix(b, n));
        left -= n;
    }
}

impl HostQueue for FaultyQueue {
    fn push(&mut self, user_data: u64, op: HostOp<'_>) {
        let call = match op {
            HostOp::Read { .. } => HostCall::Read,
            HostOp::Write { .. } => HostCall::Write,
            HostOp::SyncData { .. } => HostCall::Flush,
        };
        match (self.injector.decide(call), op) {
            (None, op) => self.inner.push(user_data, op),
            (Some(HostFault::Fail(errno)), _) => self.settled.push_back(HostCompletion {
                user_data,
                result: Err(errno),
            }),
            (Some(HostFault::Short(most)), HostOp::Read { file, offset, bufs }) => {
                let mut out = std::mem::take(&mut self.read_cut);
                cut(
                    bufs,
                    most,
                    |b| b.len(),
                    |b, n| b.subslice(0, n).unwrap_or(*b),
                    &mut out,
                );
                let bufs = &out;
                self.inner
                    .push(user_data, HostOp::Read { file, offset, bufs });
                self.read_cut = out;
            }
            (Some(HostFault::Short(most)), HostOp::Write { file, offset, bufs }) => {
                let mut out = std::mem::take(&mut self.write_cut);
                cut(
                    bufs,
                    most,
                    |b| b.len(),
                    |b, n| b.subslice(0, n).unwrap_or(*b),
                    &mut out,
                );
                let bufs = &out;
                self.inner
                    .push(user_data, HostOp::Write { file, offset, bufs });
                self.write_cut = out;
            }
            (Some(HostFault::Short(_)), op) => self.inner.push(user_data, op),
        }
    }

    fn submit(&mut self) -> Result<()> {
        self.inner.submit()?;
        if !self.settled.is_empty() {
            // Completions made here: signal them as a backend does for the ones it settles itself.
            let _ = self.inner.notifier().write(1);
        }
        Ok(())
    }

    fn next_completion(&mut self) -> Option<HostCompletion> {
        self.settled
            .pop_front()
            .or_else(|| self.inner.next_completion())
    }

    fn notifier(&self) -> &EventFd {
        self.inner.notifier()
    }

    fn pending(&self) -> usize {
        self.settled.len() + self.inner.pending()
    }
}
