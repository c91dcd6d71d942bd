//! [`GuestQueue`]: an [`AsyncIo`] queue that takes guest memory safely.
//!
//! A VMM's requests name guest addresses ([`GuestIoVec`]), not host pointers. The queue owns an `Arc` of the
//! VMM's guest memory (any vm-memory [`GuestMemoryBackend`], e.g. `GuestMemoryMmap<AtomicBitmap>`), translates
//! each range with vm-memory at submission (bounds-checked: a range outside guest memory completes with
//! [`ErrorKind::InvalidInput`] and never reaches the disk), hands the host pointers to the kernel as they are
//! (no copy), keeps the memory mapped until every request that uses it has completed, and marks the dirty
//! bitmap for exactly the bytes a read wrote when it completes. No `unsafe` in the caller.
//!
//! Guest memory is registered with the backend when the queue is made (io_uring: `IORING_REGISTER_BUFFERS`),
//! and again after [`GuestQueue::set_memory`] once nothing is in flight, so single-buffer requests inside it
//! skip the kernel's per-operation page pinning; anything else is plain I/O. See ADR 0009.
//!
//! ```
//! use std::sync::Arc;
//! use blk_core::vm_memory::{bitmap::AtomicBitmap, GuestAddress, GuestMemoryMmap};
//! use blk_core::{GuestIoVec, GuestOp, GuestQueue, GuestRequest, HostFile, HostOpenOptions, MappedDisk, AsyncDiskFile};
//! # use blk_core::{Mapper, ReadMapping, WriteMapping};
//! # #[derive(Debug)] struct Raw(Vec<HostFile>);
//! # impl Mapper for Raw {
//! #     fn format_name(&self) -> &'static str { "raw" }
//! #     fn logical_size(&self) -> u64 { 1 << 20 }
//! #     fn host_files(&self) -> &[HostFile] { &self.0 }
//! #     fn duplicate(&self) -> blk_core::Result<Arc<dyn Mapper>> { Ok(Arc::new(Raw(vec![self.0[0].try_clone()?]))) }
//! #     fn map_read(&self, o: u64, l: u64, out: &mut Vec<ReadMapping>) -> blk_core::Result<()> {
//! #         out.push(ReadMapping::Host { file: 0, offset: o, len: l }); Ok(()) }
//! #     fn map_write(&self, o: u64, l: u64, out: &mut Vec<WriteMapping>) -> blk_core::Result<()> {
//! #         out.push(WriteMapping::Host { file: 0, offset: o, len: l }); Ok(()) }
//! # }
//!
//! # fn main() -> blk_core::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let file = HostFile::create(dir.path().join("disk.img"), HostOpenOptions::default())?;
//! # file.set_len(1 << 20)?;
//! # let disk = MappedDisk::new(Raw(vec![file]));
//! // The VMM's guest memory, with a dirty bitmap for live migration.
//! let memory = Arc::new(GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
//! let mut queue = GuestQueue::new(disk.create_async_io(32)?, Arc::clone(&memory))?;
//!
//! let iov = [GuestIoVec::new(GuestAddress(0x2000), 4096)];
//! queue.submit(&[GuestRequest::new(1, GuestOp::Write { offset: 0, iovecs: &iov })])?;
//! let mut done = Vec::new();
//! queue.wait(1, None, &mut done)?; // sleeps on the eventfd until the write completed
//! assert_eq!((done[0].user_data, done[0].result.as_ref().ok()), (1, Some(&4096)));
//!
//! // A range outside guest memory fails alone; nothing is read or written.
//! let bad = [GuestIoVec::new(GuestAddress(1 << 40), 512)];
//! queue.submit(&[GuestRequest::new(2, GuestOp::Read { offset: 0, iovecs: &bad })])?;
//! done.clear();
//! queue.wait(1, None, &mut done)?;
//! assert!(done[0].result.is_err());
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::async_io::{AsyncIo, Completion, Request, RequestFlags, RequestOp};
use crate::buffer::{IoBuf, IoBufMut};
use crate::completion_wait::{wait_for, BusyPoll, Reaper};
use crate::error::{Error, ErrorKind, Result};

/// The largest piece of guest memory registered as one region (the kernel's limit for one registered
/// buffer is 1 GiB); larger guest regions are registered as several.
pub const REGISTERED_CHUNK: usize = 1 << 30;

/// `len` bytes of guest memory at guest physical address `addr`: one element of a request's scatter-gather
/// list, as a virtio descriptor gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestIoVec {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: usize,
}

impl GuestIoVec {
    /// `len` bytes at `addr`.
    pub fn new(addr: GuestAddress, len: usize) -> GuestIoVec {
        GuestIoVec { addr, len }
    }
}

/// What a [`GuestRequest`] does.
#[derive(Debug, Clone, Copy)]
pub enum GuestOp<'a> {
    /// Read disk bytes at `offset` into guest memory (`iovecs`, filled in order); marks them dirty.
    Read {
        /// Disk offset in bytes.
        offset: u64,
        /// Guest memory to fill.
        iovecs: &'a [GuestIoVec],
    },
    /// Write guest memory (`iovecs`, in order) to the disk at `offset`.
    Write {
        /// Disk offset in bytes.
        offset: u64,
        /// Guest memory to write.
        iovecs: &'a [GuestIoVec],
    },
    /// Make `len` bytes at `offset` read as zeros (deallocating unless [`RequestFlags::NO_UNMAP`]).
    WriteZeroes {
        /// Disk offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Discard `len` bytes at `offset`.
    Discard {
        /// Disk offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make every write completed before this request durable.
    Flush,
}

/// One request of a [`GuestQueue`] batch. The iovec list only needs to live for the
/// [`submit`](GuestQueue::submit) call.
#[derive(Debug, Clone, Copy)]
pub struct GuestRequest<'a> {
    /// Returned unchanged in the request's [`Completion`].
    pub user_data: u64,
    /// What to do.
    pub op: GuestOp<'a>,
    /// Modifiers.
    pub flags: RequestFlags,
}

impl<'a> GuestRequest<'a> {
    /// A request with no flags.
    pub fn new(user_data: u64, op: GuestOp<'a>) -> GuestRequest<'a> {
        GuestRequest {
            user_data,
            op,
            flags: RequestFlags::NONE,
        }
    }

    /// The same request with `flags`.
    pub fn with_flags(self, flags: RequestFlags) -> GuestRequest<'a> {
        GuestRequest { flags, ..self }
    }
}

/// A request in flight: what its completion needs.
#[derive(Debug, Default)]
struct Slot {
    user_data: u64,
    live: bool,
    /// The memory generation it was translated with.
    generation: u64,
    /// A read's guest ranges, marked dirty when it completes (empty for other requests).
    dirty: Vec<GuestIoVec>,
}

/// A guest memory replaced by [`GuestQueue::set_memory`], kept mapped while requests use it.
struct Retired<M> {
    generation: u64,
    memory: Arc<M>,
    live: usize,
}

/// Where a request of the batch being submitted has its buffers.
#[derive(Debug, Clone, Copy)]
enum Staged {
    /// Completed at once (translation failed).
    Done,
    Read(u32, usize, usize),
    Write(u32, usize, usize),
    Other(u32),
}

/// An [`AsyncIo`] queue serving guest memory (see the [module docs](self)).
///
/// `M` is the VMM's guest memory, e.g. `GuestMemoryMmap<AtomicBitmap>` (or `GuestMemoryMmap<()>` without
/// dirty tracking). It must hand out pointers that stay valid while `M` lives, as mmap-backed memory does
/// (vm-memory's `xen` feature, whose pointer guards map memory temporarily, is not supported).
pub struct GuestQueue<M: GuestMemoryBackend + Send + Sync + 'static> {
    // Field order is drop order: the inner queue goes first (its drop waits for every operation in flight),
    // then the memories its operations used.
    queue: Box<dyn AsyncIo>,
    memory: Arc<M>,
    /// The memory registered with the backend, kept mapped until the queue is dropped or a registration of
    /// newer memory replaces it (the kernel holds its pages until then).
    registered: Option<Arc<M>>,
    /// The memory changed since it was registered: register the new one when nothing is in flight.
    reregister: bool,
    retired: Vec<Retired<M>>,
    generation: u64,
    /// Live requests translated with the current memory.
    live_current: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    immediate: VecDeque<Completion>,
    read_bufs: Vec<IoBufMut<'static>>,
    write_bufs: Vec<IoBuf<'static>>,
    staged: Vec<Staged>,
    /// The allocation of the request list handed to the inner queue, reused across batches.
    requests: Vec<Request<'static>>,
    busy_poll: BusyPoll,
    /// While this is false, completed reads do not mark their pages dirty ([`GuestQueue::set_dirty_log`]);
    /// `None`: they always do.
    dirty_log: Option<Arc<AtomicBool>>,
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> fmt::Debug for GuestQueue<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestQueue")
            .field("backend", &self.queue.backend())
            .field("ring_depth", &self.queue.ring_depth())
            .field("in_flight", &self.in_flight())
            .field("registered_memory", &self.registered.is_some())
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> GuestQueue<M> {
    /// Serves `memory` on `queue` (from [`AsyncDiskFile::create_async_io`](crate::AsyncDiskFile)), and
    /// registers the memory's regions with the queue's backend when it can (io_uring; a refusal, e.g. by
    /// `RLIMIT_MEMLOCK`, only means plain I/O: [`registered_memory`](GuestQueue::registered_memory) says which).
    pub fn new(queue: Box<dyn AsyncIo>, memory: Arc<M>) -> Result<GuestQueue<M>> {
        let depth = queue.ring_depth().max(1) as usize;
        let mut this = GuestQueue {
            queue,
            memory,
            registered: None,
            reregister: false,
            retired: Vec::new(),
            generation: 0,
            live_current: 0,
            slots: Vec::with_capacity(depth),
            free: Vec::with_capacity(depth),
            live: 0,
            immediate: VecDeque::with_capacity(depth),
            read_bufs: Vec::new(),
            write_bufs: Vec::new(),
            staged: Vec::with_capacity(depth),
            requests: Vec::with_capacity(depth),
            busy_poll: BusyPoll::default(),
            dirty_log: None,
        };
        this.register();
        Ok(this)
    }

    /// Registers every region of the current memory, in chunks of at most [`REGISTERED_CHUNK`].
    fn register(&mut self) {
        self.reregister = false;
        let mut regions = Vec::new();
        for region in self.memory.iter() {
            let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
                return;
            };
            let Ok(len) = usize::try_from(region.len()) else {
                return;
            };
            let mut at = 0;
            while at < len {
                let n = (len - at).min(REGISTERED_CHUNK);
                // SAFETY: `host + at .. + n` lies inside the region's mapping, which stays mapped while it is
                // registered: `self.registered` keeps the memory's `Arc` until after the inner queue is dropped,
                // or until a later registration replaced it (with nothing in the kernel).
                regions.push(unsafe { IoBufMut::from_raw_parts(host.wrapping_add(at), n) });
                at += n;
            }
        }
        if regions.is_empty() {
            return;
        }
        // SAFETY: as above: the regions stay mapped until the inner queue is dropped (field order) or a later
        // registration replaces them; `registered` changes only when the backend took new regions, which it
        // does only with nothing in the kernel, so the pages of the memory it drops are no longer held.
        match unsafe { self.queue.register_memory(&regions) } {
            Ok(true) => self.registered = Some(Arc::clone(&self.memory)),
            // A replacement refused while operations are in the kernel: retried at the next idle submission.
            // (A backend without registration says the same to the first call, and is not asked again.)
            Ok(false) => self.reregister = self.registered.is_some(),
            // Plain I/O from now on; the memory registered before (if any) stays mapped, in case the kernel
            // still holds its pages.
            Err(_) => {}
        }
    }

    /// The guest memory requests are translated with.
    pub fn memory(&self) -> &Arc<M> {
        &self.memory
    }

    /// Serves requests submitted from now on with `memory` (memory hot-plug, vhost-user `SET_MEM_TABLE`). The
    /// previous memory stays mapped until every request submitted with it has completed. If guest memory is
    /// registered with the backend, the new memory replaces it there at the first submission that finds
    /// nothing in flight; the old registered memory stays mapped until then (the kernel holds its pages).
    pub fn set_memory(&mut self, memory: Arc<M>) {
        self.reregister |= self.registered.is_some();
        let old = std::mem::replace(&mut self.memory, memory);
        if self.live_current > 0 {
            self.retired.push(Retired {
                generation: self.generation,
                memory: old,
                live: self.live_current,
            });
        }
        self.live_current = 0;
        self.generation += 1;
    }

    /// Whether guest memory is registered with the backend (io_uring's registered buffers).
    pub fn registered_memory(&self) -> bool {
        self.registered.is_some()
    }

    /// The eventfd written when completions are ready; non-blocking (see [`AsyncIo::notifier`]).
    pub fn notifier(&self) -> &EventFd {
        self.queue.notifier()
    }

    /// The backend the queue runs on: `io_uring`, `aio` or `sync`.
    pub fn backend(&self) -> &'static str {
        self.queue.backend()
    }

    /// How many requests may be in flight.
    pub fn ring_depth(&self) -> u32 {
        self.queue.ring_depth()
    }

    /// Requests submitted whose completions have not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.live + self.immediate.len()
    }

    /// How many host operations used registered memory so far.
    pub fn fixed_buffer_ops(&self) -> u64 {
        self.queue.fixed_buffer_ops()
    }

    /// Spins reaping for up to `max` in [`wait`](GuestQueue::wait) before sleeping (zero, the default: never
    /// spins). The window adapts: it grows while completions come within it and shrinks to nothing on an idle
    /// queue.
    pub fn set_busy_poll(&mut self, max: Duration) {
        self.busy_poll = BusyPoll::new(max);
    }

    /// Submits a batch: every request's guest ranges are translated, then the whole batch goes to the backend
    /// at once. A request whose ranges are not all inside guest memory completes at once with
    /// [`ErrorKind::InvalidInput`]; `Err` here means the queue itself failed and no request was accepted.
    pub fn submit(&mut self, batch: &[GuestRequest<'_>]) -> Result<()> {
        if self.reregister && self.live == 0 {
            self.register();
        }
        self.read_bufs.clear();
        self.write_bufs.clear();
        self.staged.clear();
        let immediate_before = self.immediate.len();
        for request in batch {
            let staged = self.stage(request);
            self.staged.push(staged);
        }
        let mut requests = recycle(std::mem::take(&mut self.requests));
        for (request, staged) in batch.iter().zip(&self.staged) {
            let (slot, op) = match (request.op, *staged) {
                (GuestOp::Read { offset, .. }, Staged::Read(slot, start, end)) => (
                    slot,
                    RequestOp::Read {
                        offset,
                        bufs: &self.read_bufs[start..end],
                    },
                ),
                (GuestOp::Write { offset, .. }, Staged::Write(slot, start, end)) => (
                    slot,
                    RequestOp::Write {
                        offset,
                        bufs: &self.write_bufs[start..end],
                    },
                ),
                (GuestOp::WriteZeroes { offset, len }, Staged::Other(slot)) => {
                    (slot, RequestOp::WriteZeroes { offset, len })
                }
                (GuestOp::Discard { offset, len }, Staged::Other(slot)) => {
                    (slot, RequestOp::Discard { offset, len })
                }
                (GuestOp::Flush, Staged::Other(slot)) => (slot, RequestOp::Flush),
                _ => continue,
            };
            requests.push(Request {
                user_data: u64::from(slot),
                op,
                flags: request.flags,
            });
        }
        let submitted = if requests.is_empty() {
            Ok(())
        } else {
            self.queue.submit(&requests)
        };
        self.requests = recycle(requests);
        if let Err(e) = submitted {
            // Nothing of the batch was accepted: forget it.
            self.immediate.truncate(immediate_before);
            for i in 0..self.staged.len() {
                if let Staged::Read(slot, ..) | Staged::Write(slot, ..) | Staged::Other(slot) =
                    self.staged[i]
                {
                    self.release(slot);
                }
            }
            return Err(e);
        }
        if self.immediate.len() > immediate_before {
            // Fails only when the counter would overflow, and then the eventfd is readable anyway.
            let _ = self.queue.notifier().write(1);
        }
        Ok(())
    }

    /// Translates one request's ranges into the batch's buffers and gives it a slot.
    fn stage(&mut self, request: &GuestRequest<'_>) -> Staged {
        match request.op {
            GuestOp::Read { iovecs, .. } => {
                let start = self.read_bufs.len();
                match translate(&*self.memory, iovecs, |ptr, len| {
                    // SAFETY: `ptr..ptr + len` is guest memory vm-memory just bounds-checked; it stays mapped
                    // until the request completes (the queue holds the memory's `Arc` until then, and drops the
                    // inner queue, which waits for I/O in flight, before any memory). Guest memory is only
                    // accessed through raw pointers (IoBufMut's contract).
                    self.read_bufs
                        .push(unsafe { IoBufMut::from_raw_parts(ptr, len) });
                }) {
                    Ok(()) => {
                        let slot = self.acquire(request.user_data, iovecs);
                        Staged::Read(slot, start, self.read_bufs.len())
                    }
                    Err(e) => {
                        self.read_bufs.truncate(start);
                        self.fail_now(request.user_data, e)
                    }
                }
            }
            GuestOp::Write { iovecs, .. } => {
                let start = self.write_bufs.len();
                match translate(&*self.memory, iovecs, |ptr, len| {
                    // SAFETY: as for reads; the kernel only reads through these.
                    self.write_bufs
                        .push(unsafe { IoBuf::from_raw_parts(ptr, len) });
                }) {
                    Ok(()) => {
                        let slot = self.acquire(request.user_data, &[]);
                        Staged::Write(slot, start, self.write_bufs.len())
                    }
                    Err(e) => {
                        self.write_bufs.truncate(start);
                        self.fail_now(request.user_data, e)
                    }
                }
            }
            GuestOp::WriteZeroes { .. } | GuestOp::Discard { .. } | GuestOp::Flush => {
                Staged::Other(self.acquire(request.user_data, &[]))
            }
        }
    }

    fn fail_now(&mut self, user_data: u64, error: Error) -> Staged {
        self.immediate.push_back(Completion {
            user_data,
            result: Err(error),
        });
        Staged::Done
    }

    /// A slot for a request; `dirty` is what its completion marks dirty.
    fn acquire(&mut self, user_data: u64, dirty: &[GuestIoVec]) -> u32 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                // The slots never outnumber the requests in flight, far below 2^32.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.user_data = user_data;
            slot.live = true;
            slot.generation = self.generation;
            slot.dirty.clear();
            slot.dirty.extend_from_slice(dirty);
        }
        self.live += 1;
        self.live_current += 1;
        index
    }

    /// Frees a slot, and the retired memory its request was the last user of.
    fn release(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if !slot.live {
            return;
        }
        slot.live = false;
        let generation = slot.generation;
        self.free.push(index);
        self.live -= 1;
        if generation == self.generation {
            self.live_current = self.live_current.saturating_sub(1);
        } else if let Some(i) = self.retired.iter().position(|r| r.generation == generation) {
            self.retired[i].live -= 1;
            if self.retired[i].live == 0 {
                self.retired.swap_remove(i);
            }
        }
    }

    /// The next finished request, or `None` when there is none yet. A read's guest pages are marked dirty
    /// before its completion is returned (also when it failed: it may have written part of its buffers).
    pub fn next_completed_request(&mut self) -> Option<Completion> {
        if let Some(done) = self.immediate.pop_front() {
            return Some(done);
        }
        loop {
            let done = self.queue.next_completed_request()?;
            let Ok(index) = u32::try_from(done.user_data) else {
                continue;
            };
            let Some(slot) = self.slots.get(index as usize).filter(|s| s.live) else {
                continue;
            };
            let user_data = slot.user_data;
            let logging = self
                .dirty_log
                .as_ref()
                .is_none_or(|on| on.load(Ordering::Acquire));
            if logging && !slot.dirty.is_empty() {
                let memory = if slot.generation == self.generation {
                    Some(&self.memory)
                } else {
                    self.retired
                        .iter()
                        .find(|r| r.generation == slot.generation)
                        .map(|r| &r.memory)
                };
                if let Some(memory) = memory {
                    mark_dirty(&**memory, &slot.dirty);
                }
            }
            self.release(index);
            return Some(Completion {
                user_data,
                result: done.result,
            });
        }
    }

    /// Marks the pages a completed read wrote dirty only while `logging` is true (by default every read
    /// marks them). A VMM that keeps its dirty log only during live migration shares its switch here, so reads
    /// outside a migration skip the walk over their ranges. The switch is loaded (`Acquire`) for each read
    /// after its completion came back, so after its data reached guest memory: a read whose data may land
    /// after the VMM turned logging on (`Release`) is marked, also if it was submitted before.
    pub fn set_dirty_log(&mut self, logging: Arc<AtomicBool>) {
        self.dirty_log = Some(logging);
    }

    /// Reaps every completion ready into `out` and, while fewer than `min` were reaped, spins (see
    /// [`set_busy_poll`](GuestQueue::set_busy_poll)) then sleeps on the notifier until more come or `timeout`
    /// passes; as [`AsyncIo::wait`]. Returns how many completions it appended.
    pub fn wait(
        &mut self,
        min: usize,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<usize> {
        let spin = self.busy_poll.window();
        let (n, outcome) = wait_for(self, min, timeout, spin, out)?;
        self.busy_poll.update(&outcome);
        Ok(n)
    }
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> Reaper for GuestQueue<M> {
    fn reap_one(&mut self) -> Option<Completion> {
        self.next_completed_request()
    }

    fn reaper_notifier(&self) -> &EventFd {
        self.notifier()
    }

    fn reaper_in_flight(&self) -> usize {
        self.in_flight()
    }

    fn sleep_in_backend(&mut self, timeout: Option<std::time::Duration>) -> Result<bool> {
        self.queue.wait_in_backend(timeout)
    }
}

/// Calls `push(host pointer, length)` for each contiguous host piece of `iovecs` in `memory`, or fails when a
/// range is not all inside guest memory.
fn translate<M: GuestMemoryBackend>(
    memory: &M,
    iovecs: &[GuestIoVec],
    mut push: impl FnMut(*mut u8, usize),
) -> Result<()> {
    for iov in iovecs {
        if iov.len == 0 {
            continue;
        }
        // The usual case: the range lies in one region (one lookup, no iterator).
        if let Ok(slice) = memory.get_slice(iov.addr, iov.len) {
            push(slice.ptr_guard_mut().as_ptr(), slice.len());
            continue;
        }
        let mut covered = 0usize;
        for slice in memory.get_slices(iov.addr, iov.len) {
            let slice = slice.map_err(|e| outside(iov, &e.to_string()))?;
            push(slice.ptr_guard_mut().as_ptr(), slice.len());
            covered += slice.len();
        }
        if covered != iov.len {
            return Err(outside(iov, "the range ends outside guest memory"));
        }
    }
    Ok(())
}

fn outside(iov: &GuestIoVec, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "guest address range {:#x}+{:#x} is not in guest memory: {why}",
            iov.addr.0, iov.len
        ),
    )
}

/// Marks dirty, in the memory's bitmaps, every byte of `ranges`.
fn mark_dirty<M: GuestMemoryBackend>(memory: &M, ranges: &[GuestIoVec]) {
    for iov in ranges {
        for slice in memory.get_slices(iov.addr, iov.len).flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

/// An empty request list with `v`'s allocation, for requests of another lifetime (the allocation is reused
/// when the standard library collects in place, as it does for an element type of the same layout).
// `filter_map` to `None` on purpose: the element type changes (its lifetime), which `filter` cannot do.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Request<'_>>) -> Vec<Request<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lists_keep_their_allocation() {
        let v: Vec<Request<'static>> = Vec::with_capacity(16);
        let ptr = v.as_ptr() as usize;
        let again: Vec<Request<'_>> = recycle(v);
        assert!(again.capacity() >= 16);
        assert_eq!(again.as_ptr() as usize, ptr);
    }

    #[test]
    fn queues_move_between_threads() {
        fn send<T: Send>() {}
        send::<GuestQueue<vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>>>();
        send::<GuestQueue<vm_memory::GuestMemoryMmap<()>>>();
    }
}
