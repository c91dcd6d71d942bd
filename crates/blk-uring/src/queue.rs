//! [`UringQueue`]: one io_uring ring serving the [`HostQueue`] contract.
//!
//! An operation goes through three places: `ready` (pushed, or partly done and waiting to go on), the ring
//! (an SQE in the submission queue or in the kernel, counted by `in_ring`, never more than `depth`), and back
//! to the caller from [`next_completion`](HostQueue::next_completion). Its slot holds its buffers and progress
//! the whole time.
//!
//! A single-issuer ring belongs to the thread that enabled it. When another thread submits, the queue moves to
//! a new ring owned by that thread as soon as the old ring has none of its operations in the kernel (at once
//! when idle; otherwise new operations wait in the backlog until the old ring's completions are reaped).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Duration;

use blk_core::{
    Error, ErrorKind, EventFd, HostCompletion, HostFile, HostOp, HostQueue, IoBufMut, Result,
};
use io_uring::IoUring;

use crate::backend::{ring_setup_error, RingFeatures};
use crate::files::FileTable;
use crate::fixed_buffers::FixedBuffers;
use crate::ring::{build_ring, enable, RingOptions, RingSetup, ThreadKey};
use crate::slot::SlotTable;

/// `IORING_ENTER_GETEVENTS` (`linux/io_uring.h`): the `io_uring_enter` flag that waits for completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The largest queue depth (and ring size) a queue uses; a larger `depth` is clamped to it.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// How many times [`HostQueue::submit`] retries a ring that answers `EAGAIN`/`EBUSY` while none of the queue's
/// operations are in the kernel (so no completion will come to retry from), one millisecond apart.
const MAX_BUSY_RETRIES: u32 = 1000;

/// One io_uring ring with its registered files and eventfd: a [`HostQueue`] of the [`UringBackend`].
///
/// Dropping the queue waits for every operation the kernel has been handed (the memory they target belongs
/// to the caller until they complete, so this must block); operations still waiting in the backlog are
/// dropped without being executed and without completions.
///
/// [`UringBackend`]: crate::UringBackend
pub struct UringQueue {
    ring: IoUring,
    /// The flags `ring` was made with.
    setup: RingSetup,
    /// What a new ring is asked for (when another thread takes the queue over).
    options: RingOptions,
    /// The ring size asked for.
    entries: u32,
    /// The thread that enabled `ring` (single-issuer rings; `None` while it is disabled).
    owner: Option<ThreadKey>,
    /// Rings made after the first one, for other threads.
    moves: u64,
    files: FileTable,
    notifier: EventFd,
    slots: SlotTable,
    /// Slots waiting for room in the ring: new operations and the rest of partly transferred ones.
    ready: VecDeque<u32>,
    /// Completions made without the kernel (an operation naming a file the queue does not have).
    local: VecDeque<HostCompletion>,
    /// Most operations in the ring (submission queue plus kernel) at once.
    depth: u32,
    /// Operations in the ring now.
    in_ring: u32,
    /// Slots whose SQE is in the submission queue and not yet taken by the kernel, in ring order (left there
    /// when the kernel answered `EAGAIN`/`EBUSY`).
    in_sq: Vec<u32>,
    /// Operations pushed and not yet returned.
    pending: usize,
    single_buffer_ops: bool,
    /// Regions registered with [`UringQueue::register_buffers`].
    fixed: FixedBuffers,
    /// The same regions in registration order (registered again on a new ring).
    regions: Vec<IoBufMut<'static>>,
    /// SQEs submitted with a registered buffer (`READ_FIXED`/`WRITE_FIXED`).
    fixed_ops: u64,
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("depth", &self.depth)
            .field("in_ring", &self.in_ring)
            .field("backlog", &self.ready.len())
            .field("pending", &self.pending)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl UringQueue {
    /// A ring of `depth` entries (rounded up to a power of two, at most [`MAX_QUEUE_DEPTH`]) over `files`.
    pub(crate) fn new(
        files: &[&HostFile],
        depth: u32,
        features: RingFeatures,
    ) -> Result<UringQueue> {
        if depth == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "an io_uring queue needs a depth of at least 1",
            ));
        }
        let depth = depth.min(MAX_QUEUE_DEPTH);
        let entries = depth.next_power_of_two();
        // The flags and their fallbacks are `ring`'s business (see the crate docs, "The ring"). A single-issuer
        // ring comes back disabled: registrations below work from this thread, and the thread that first
        // submits enables it.
        let (ring, setup) = build_ring(entries, features.options)?;
        let depth = depth.min(ring.params().sq_entries());
        // A single-issuer ring's registrations can be undone only by its owner, and the queue may be dropped by
        // another thread: registered files would then stay referenced (with their advisory locks) until a
        // kernel worker frees the ring, after the drop. Its SQEs name the duplicated descriptors instead (the
        // kernel holds a file only while an operation on it runs).
        let files = FileTable::new(&ring, files, !setup.single_issuer)?;
        let notifier = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| Error::io_while(e, "creating the queue's eventfd"))?;
        ring.submitter()
            .register_eventfd(notifier.as_raw_fd())
            .map_err(|e| ring_setup_error(e, "registering the eventfd with io_uring"))?;
        Ok(UringQueue {
            ring,
            setup,
            options: features.options,
            entries,
            owner: None,
            moves: 0,
            files,
            notifier,
            slots: SlotTable::default(),
            ready: VecDeque::new(),
            local: VecDeque::new(),
            depth,
            in_ring: 0,
            in_sq: Vec::with_capacity(depth as usize),
            pending: 0,
            single_buffer_ops: features.single_buffer_ops,
            fixed: FixedBuffers::default(),
            regions: Vec::new(),
            fixed_ops: 0,
        })
    }

    /// The most operations this queue has in the kernel at once.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The set-up flags of the queue's ring (what the kernel took of the backend's
    /// [`RingOptions`](crate::RingOptions)).
    pub fn ring_setup(&self) -> RingSetup {
        self.setup
    }

    /// How many times the queue moved to a new ring because another thread than the ring's owner submitted
    /// (single-issuer rings only; see the crate docs, "Threads").
    pub fn ring_moves(&self) -> u64 {
        self.moves
    }

    /// Whether the queue's files are registered with the ring (`IORING_REGISTER_FILES`); otherwise SQEs name
    /// duplicated descriptors.
    pub fn files_registered(&self) -> bool {
        self.files.is_registered()
    }

    /// Registers `regions` with the ring as fixed buffers (once per queue): from then on an operation whose
    /// single buffer lies inside one region goes out as `READ_FIXED`/`WRITE_FIXED`, sparing the kernel the
    /// page pinning of every operation. Other operations are unaffected. A VMM registers its guest memory.
    ///
    /// At most [`MAX_FIXED_BUFFERS`](crate::MAX_FIXED_BUFFERS) regions of 1 byte to
    /// [`MAX_FIXED_BUFFER_LEN`](crate::MAX_FIXED_BUFFER_LEN) each (the kernel's limits, `InvalidInput` past
    /// them); a second call fails (`InvalidInput`). The kernel pins the pages (counted against
    /// `RLIMIT_MEMLOCK` on kernels before 5.12).
    ///
    /// # Safety
    /// The regions must stay mapped, and be memory that I/O may read and write, until the queue is dropped:
    /// the kernel keeps the pages it pinned here and moves data to and from those pages, not to whatever
    /// the addresses map later.
    pub unsafe fn register_buffers(&mut self, regions: &[IoBufMut<'static>]) -> Result<()> {
        if !self.fixed.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this io_uring queue already has registered buffers",
            ));
        }
        let fixed = FixedBuffers::new(regions)?;
        if !self.may_register()? {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this io_uring queue's ring belongs to another thread, which still has operations in it",
            ));
        }
        // SAFETY: the caller guarantees the regions stay valid for I/O until the queue (and so the ring) is
        // dropped (see `# Safety`); `as_iovecs_mut` gives their addresses and lengths in iovec layout.
        unsafe {
            self.ring
                .submitter()
                .register_buffers(blk_core::buffer::as_iovecs_mut(regions))
        }
        .map_err(|e| Error::io_while(e, "registering buffers with io_uring"))?;
        self.fixed = fixed;
        self.regions = regions.to_vec();
        Ok(())
    }

    /// How many submission entries used a registered buffer (`READ_FIXED`/`WRITE_FIXED`) so far.
    pub fn fixed_buffer_ops(&self) -> u64 {
        self.fixed_ops
    }

    /// Operations waiting for room in the ring (the backlog).
    pub fn backlog(&self) -> usize {
        self.ready.len()
    }

    /// Whether the calling thread may enter the ring now without taking it: a ring any thread may use, or a
    /// single-issuer ring this thread enabled.
    fn is_owner(&self) -> bool {
        !self.setup.single_issuer || self.owner == Some(ThreadKey::current())
    }

    /// Whether the calling thread may register with the ring: as [`is_owner`](Self::is_owner), or a ring still
    /// disabled (registrations do not enable it), or, when another thread owns it, after the queue moved to a
    /// ring of this thread (possible while none of its operations are in the kernel). `false`: not now.
    fn may_register(&mut self) -> Result<bool> {
        if self.owner.is_none() || self.is_owner() {
            return Ok(true);
        }
        self.ensure_submitter()
    }

    /// Makes the calling thread the ring's submitter: nothing to do for a ring any thread may use or one this
    /// thread owns; a disabled ring is enabled by (and belongs to) this thread; a ring of another thread is
    /// replaced by a new ring of this thread when none of the queue's operations are in its kernel side.
    /// `Ok(false)`: some still are (another thread's submissions, completing there); the backlog waits for
    /// them, and [`next_completion`](HostQueue::next_completion) moves the queue once they are reaped.
    fn ensure_submitter(&mut self) -> Result<bool> {
        if !self.setup.single_issuer {
            return Ok(true);
        }
        let me = ThreadKey::current();
        match self.owner {
            Some(owner) if owner == me => Ok(true),
            None => {
                enable(&self.ring).map_err(|e| Error::io_while(e, "enabling the io_uring ring"))?;
                self.owner = Some(me);
                Ok(true)
            }
            Some(_) => {
                let in_kernel = (self.in_ring as usize).saturating_sub(self.in_sq.len());
                if in_kernel > 0 {
                    return Ok(false);
                }
                self.move_to_this_thread()?;
                Ok(true)
            }
        }
    }

    /// Replaces the ring (owned by another thread, with nothing of the queue in its kernel side) by a new one
    /// owned by the calling thread, with the same files, eventfd and registered buffers. Entries the old ring
    /// never took go back to the front of the backlog. On error the old ring stays.
    fn move_to_this_thread(&mut self) -> Result<()> {
        let (ring, setup) = build_ring(self.entries, self.options)?;
        if setup.single_issuer {
            enable(&ring).map_err(|e| Error::io_while(e, "enabling the io_uring ring"))?;
        }
        ring.submitter()
            .register_eventfd(self.notifier.as_raw_fd())
            .map_err(|e| ring_setup_error(e, "registering the eventfd with io_uring"))?;
        if !self.regions.is_empty() {
            // SAFETY: the regions were registered with the old ring under `register_buffers`'s contract (valid
            // until the queue is dropped), which the new ring, owned by the queue too, inherits.
            let registered = unsafe {
                ring.submitter()
                    .register_buffers(blk_core::buffer::as_iovecs_mut(&self.regions))
            };
            if registered.is_err() {
                // Plain operations instead (nothing in the kernel names a registered buffer now).
                self.fixed = FixedBuffers::default();
                self.regions.clear();
            }
        }
        for &index in self.in_sq.iter().rev() {
            self.ready.push_front(index);
        }
        let unsent = u32::try_from(self.in_sq.len()).unwrap_or(u32::MAX);
        self.in_ring = self.in_ring.saturating_sub(unsent);
        self.in_sq.clear();
        // The old ring closes here: none of the queue's operations are in it. Its pins of the registered
        // buffers go a little later, from a kernel worker (it belongs to another thread: it cannot unregister
        // them). Files are never registered with a single-issuer ring.
        self.ring = ring;
        self.setup = setup;
        self.owner = setup.single_issuer.then(ThreadKey::current);
        self.moves += 1;
        Ok(())
    }

    /// Posts completions waiting as task work of this thread: `io_uring_enter` with `GETEVENTS` and no wait
    /// (the task work runs on the way out of any system call). Errors (`EINTR`) only mean a later call does
    /// it.
    fn run_task_work(&self) {
        // SAFETY: submits nothing (to_submit 0) and passes no argument: the call only runs task work.
        let _ = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
        };
    }

    /// Moves operations from the backlog into the submission queue while the ring has room.
    fn fill_submission_queue(&mut self) {
        let mut sq = self.ring.submission();
        while self.in_ring < self.depth {
            let Some(&index) = self.ready.front() else {
                break;
            };
            let Some(slot) = self.slots.get(index) else {
                // Every index in `ready` came from the slot table; nothing to submit for a stale one.
                self.ready.pop_front();
                continue;
            };
            let Some(file) = self.files.get(slot.file) else {
                // `push` checked the index; keep the invariant anyway.
                let user_data = slot.user_data;
                self.ready.pop_front();
                self.slots.release(index);
                self.local.push_back(HostCompletion {
                    user_data,
                    result: Err(libc::EBADF),
                });
                continue;
            };
            let (entry, uses_fixed) = slot.sqe(index, file, self.single_buffer_ops, &self.fixed);
            // SAFETY: the entry points at (a) the slot's buffer list, a heap array the queue owns and does not
            // touch until this SQE's completion has been reaped (slots are modified only in `finish`, after
            // their CQE, and released only then; `Drop` waits for every SQE in the ring before the lists are
            // freed), and (b) the caller's buffers, which the HostQueue contract keeps valid until the
            // operation's completion has been returned, which happens after this SQE completes. The file is a
            // registered index or a descriptor the queue owns for its whole life. A `_FIXED` entry's buffer
            // lies inside a region registered with `register_buffers`, whose contract keeps it valid for as
            // long as the ring lives.
            if unsafe { sq.push(&entry) }.is_err() {
                break;
            }
            self.ready.pop_front();
            self.in_sq.push(index);
            self.in_ring += 1;
            self.fixed_ops += u64::from(uses_fixed);
        }
    }

    /// Hands the submission queue to the kernel: one `io_uring_enter` in the normal case, retried on `EINTR`
    /// and, when the kernel stopped early, until everything queued was taken.
    fn enter(&mut self) -> Result<()> {
        let mut busy_retries = 0;
        loop {
            let queued = self.ring.submission().len();
            if queued == 0 {
                return Ok(());
            }
            let outcome = self.ring.submit();
            // The kernel takes entries in ring order: what it took leaves `in_sq` from the front.
            let left = self.ring.submission().len();
            let taken = self.in_sq.len().saturating_sub(left);
            self.in_sq.drain(..taken);
            match outcome {
                Ok(n) if n > 0 => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {}
                Err(e) => return Err(Error::io_while(e, "submitting to io_uring")),
            }
            // The kernel took nothing for now (out of resources, or busy flushing completions). If some of our
            // operations are in the kernel, their completions come and `next_completion` submits again;
            // otherwise retry here for a while.
            let in_kernel = (self.in_ring as usize).saturating_sub(queued);
            if in_kernel > 0 {
                return Ok(());
            }
            busy_retries += 1;
            if busy_retries > MAX_BUSY_RETRIES {
                return Err(Error::new(
                    ErrorKind::Io,
                    "io_uring kept refusing submissions (EAGAIN/EBUSY)",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Completes every backlogged operation with `errno` (the ring can no longer take them).
    fn fail_backlog(&mut self, errno: i32) {
        while let Some(index) = self.ready.pop_front() {
            if let Some(slot) = self.slots.get(index) {
                let user_data = slot.user_data;
                self.slots.release(index);
                self.local.push_back(HostCompletion {
                    user_data,
                    result: Err(errno),
                });
            }
        }
    }

    /// Accounts for the CQE of slot `index` with result `res`: the operation's completion, or `None` when the
    /// rest of it went back to the backlog (a short transfer, or more iovecs than one SQE takes). Whether it
    /// goes on, and what it completes with, is blk-core's [`HostTransfer`](blk_core::host_queue::HostTransfer)
    /// decision.
    fn finish(&mut self, index: u32, res: i32) -> Option<HostCompletion> {
        let files = &self.files;
        let slot = self.slots.get_mut(index)?;
        let result = match usize::try_from(res) {
            Ok(n) => Ok(n),
            Err(_) => Err(res.checked_neg().unwrap_or(libc::EIO)),
        };
        let file = slot.file;
        let Some(result) = slot.step(result, || files.len_of(file)) else {
            self.ready.push_back(index);
            return None;
        };
        let user_data = slot.user_data;
        self.slots.release(index);
        Some(HostCompletion { user_data, result })
    }
}

impl HostQueue for UringQueue {
    fn push(&mut self, user_data: u64, op: HostOp<'_>) {
        self.pending += 1;
        let file = match op {
            HostOp::Read { file, .. } | HostOp::Write { file, .. } | HostOp::SyncData { file } => {
                file
            }
        };
        if self.files.get(file).is_none() {
            self.local.push_back(HostCompletion {
                user_data,
                result: Err(libc::EBADF),
            });
            return;
        }
        match self.slots.insert(user_data, op) {
            Some(index) => self.ready.push_back(index),
            None => self.local.push_back(HostCompletion {
                user_data,
                result: Err(libc::ENOMEM),
            }),
        }
    }

    fn submit(&mut self) -> Result<()> {
        let entered = match self.ensure_submitter() {
            Ok(true) => {
                self.fill_submission_queue();
                self.enter()
            }
            // Another thread's ring still holds operations: the backlog goes out once they are reaped.
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if !self.local.is_empty() {
            // Completions the kernel will not signal; a full counter (EAGAIN) is already signalled.
            let _ = self.notifier.write(1);
        }
        entered
    }

    fn next_completion(&mut self) -> Option<HostCompletion> {
        let mut submitted = false;
        let mut ran_task_work = false;
        loop {
            if let Some(done) = self.local.pop_front() {
                self.pending = self.pending.saturating_sub(1);
                return Some(done);
            }
            // Reading the CQ ring directly: two atomic accesses, no system call.
            let cqe = self.ring.completion().next();
            match cqe {
                Some(cqe) => {
                    self.in_ring = self.in_ring.saturating_sub(1);
                    let Ok(index) = u32::try_from(cqe.user_data()) else {
                        continue;
                    };
                    if let Some(done) = self.finish(index, cqe.result()) {
                        self.pending = self.pending.saturating_sub(1);
                        return Some(done);
                    }
                }
                None => {
                    if !ran_task_work && self.ring.submission().taskrun() {
                        // Completions wait for the submitting thread to enter the kernel (COOP_TASKRUN): one
                        // system call posts them all. Another thread's call would run its own task work, not
                        // the submitter's: that waits for the submitter's next system call (a sleeping
                        // submitter is woken for it; one that ended leaves it to a kernel worker).
                        ran_task_work = true;
                        if self.is_owner() {
                            self.run_task_work();
                            continue;
                        }
                    }
                    let unsubmitted = !self.in_sq.is_empty();
                    let room = self.in_ring < self.depth && !self.ready.is_empty();
                    if submitted || !(unsubmitted || room) {
                        return None;
                    }
                    // The CQ is drained and the backlog can move: submit it (buffered reads may complete
                    // during the call, so look at the CQ once more). A ring of another thread that still
                    // holds operations cannot take it: their completions come first.
                    match self.ensure_submitter() {
                        Ok(true) => {
                            self.fill_submission_queue();
                            if let Err(e) = self.enter() {
                                self.fail_backlog(e.errno());
                            }
                        }
                        Ok(false) => return None,
                        Err(e) => self.fail_backlog(e.errno()),
                    }
                    submitted = true;
                }
            }
        }
    }

    fn notifier(&self) -> &EventFd {
        &self.notifier
    }

    /// Waits in `io_uring_enter` (`GETEVENTS`, at least one completion; with a timeout through the
    /// extended argument) when all is submitted, something is in the kernel and this thread may enter the
    /// ring: there the kernel runs this thread's task work and posts the completions as they come, where a
    /// sleep on the eventfd is woken for the task work, restarted, and then read.
    fn wait_for_completion(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let idle = self.in_ring == 0 || !self.local.is_empty();
        let unsubmitted = !self.in_sq.is_empty() || !self.ring.submission().is_empty();
        if idle || unsubmitted || !self.is_owner() {
            return Ok(false);
        }
        if !self.ring.completion().is_empty() {
            return Ok(true);
        }
        let waited = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(_) if !self.ring.params().is_feature_ext_arg() => return Ok(false),
            Some(t) => {
                let ts = io_uring::types::Timespec::from(t);
                let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match waited {
            Ok(_) => Ok(true),
            // A signal, the timeout, or the kernel short of memory for the wait: the caller reaps and loops.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(Error::io_while(e, "waiting for io_uring completions")),
        }
    }

    fn pending(&self) -> usize {
        self.pending
    }

    unsafe fn register_memory(&mut self, regions: &[IoBufMut<'static>]) -> Result<bool> {
        if !self.may_register()? {
            // Another thread's ring still holds operations: it cannot take a registration from this thread.
            return Ok(false);
        }
        if !self.fixed.is_empty() {
            if self.in_ring > 0 || !self.ready.is_empty() {
                // An operation in the kernel (or about to be) may name a registered buffer by index.
                return Ok(false);
            }
            // Nothing in the kernel: the kernel drops its pins of the old regions, and the table names
            // the new ones only.
            self.fixed = FixedBuffers::default();
            self.regions.clear();
            self.ring
                .submitter()
                .unregister_buffers()
                .map_err(|e| Error::io_while(e, "unregistering io_uring buffers"))?;
        }
        // SAFETY: the caller keeps the regions valid for I/O until this queue is dropped or a later call
        // replaces them (the trait's `# Safety`); a replacement happens only with nothing in the kernel, so
        // from then on the kernel holds none of their pages. That is what `register_buffers` asks.
        unsafe { self.register_buffers(regions) }.map(|()| true)
    }

    fn fixed_buffer_ops(&self) -> u64 {
        self.fixed_ops
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // Backlogged operations never reached the kernel: drop them, and the entries the kernel has not taken
        // from the submission queue (nothing below submits). Everything in the kernel must complete before
        // the caller's memory and our iovec arrays may be released.
        self.ready.clear();
        let unsent = u32::try_from(self.in_sq.len()).unwrap_or(u32::MAX);
        self.in_ring = self.in_ring.saturating_sub(unsent);
        self.in_sq.clear();
        while self.in_ring > 0 {
            let reaped = self.ring.completion().count();
            let reaped = u32::try_from(reaped).unwrap_or(u32::MAX);
            self.in_ring = self.in_ring.saturating_sub(reaped);
            if self.in_ring == 0 {
                break;
            }
            // SAFETY: submits nothing and passes no argument: the call only waits for a completion.
            let waited = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 1, IORING_ENTER_GETEVENTS, None)
            };
            match waited {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    // A valid ring only fails to wait with EINTR/EAGAIN/EBUSY (any thread may wait on a ring
                    // without DEFER_TASKRUN, which blk-uring never sets). Returning now
                    // would let the kernel write into memory the caller may free: stop the process instead.
                    eprintln!("blk-uring: cannot wait for in-flight io_uring operations: {e}");
                    std::process::abort();
                }
            }
        }
        // Closing a ring releases its registered files later, from a kernel worker: the files (and the
        // advisory locks on their open file descriptions) would outlive the queue for a while, and a reopen
        // right after the drop could find the image still locked. Unregistering releases them now (the
        // queue's duplicated descriptors close right after, with its fields). Files are registered only with
        // rings any thread may use; registered buffers of a single-issuer ring only its owner may unregister
        // (others get EEXIST: a kernel worker unpins them shortly after). Errors only mean the ring will
        // release them itself.
        if self.owner.is_none() || self.is_owner() {
            if self.files.is_registered() {
                let _ = self.ring.submitter().unregister_files();
            }
            if !self.fixed.is_empty() {
                let _ = self.ring.submitter().unregister_buffers();
            }
        }
    }
}
