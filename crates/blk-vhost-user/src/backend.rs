//! The device: [`VhostUserBackend`] for one connection, and the state every connection shares (the disk, its
//! config, the serial, the shutdown flag).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use blk_factory::AsyncDiskFile;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{device_features, BlkConfig, CONFIG_LEN, WCE_OFFSET};
use crate::queue::{Accepted, QueueWorker};
use crate::request::Limits;

/// Requests per submission while the queue's I/O completes during its submission (buffered reads from the
/// page cache): the first completions reach the driver, which answers them, while the queue thread serves the
/// rest of the ring, instead of the two sides taking turns a whole ring at a time. I/O that completes later
/// (O_DIRECT on a device) is submitted a ring at a time: more submissions would only mean more device kicks.
const INLINE_SUB_BATCH: usize = 8;

/// How long shutdown and `GET_VRING_BASE` wait for a queue's requests in flight.
pub(crate) const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Guest memory as the vhost-user framework maps it, with the dirty-page log bitmap.
pub type GuestMemory = GuestMemoryMmap<BitmapMmapRegion>;
/// The frontend's memory table, replaced on every `SET_MEM_TABLE`.
pub type AtomicGuestMemory = GuestMemoryAtomic<GuestMemory>;
/// One virtqueue's state.
pub type Vring = VringRwLock<AtomicGuestMemory>;

/// What every connection shares: the disk, the advertised config, the serial, and whether the server stops.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) disk: Box<dyn AsyncDiskFile>,
    pub(crate) config: BlkConfig,
    pub(crate) limits: Limits,
    pub(crate) serial: Vec<u8>,
    pub(crate) queue_size: u16,
    pub(crate) writeback: AtomicBool,
    /// The maximum polling window of each queue thread ([`crate::BlkOptions::poll_max`]).
    pub(crate) poll_max: std::time::Duration,
    /// Set by shutdown: workers stop taking requests once the rings are drained.
    pub(crate) stopping: AtomicBool,
    /// The connection being served, for shutdown's drain.
    pub(crate) current: Mutex<Option<Arc<Connection>>>,
}

/// One frontend connection: its memory, its vrings (known at the first event), one worker per queue.
pub(crate) struct Connection {
    pub(crate) mem: AtomicGuestMemory,
    /// The framework's event loops, one per queue (weak: they own backends that own this connection).
    pub(crate) epoll_handlers: OnceLock<Vec<Weak<VringEpollHandler<BlkBackend>>>>,
    /// One eventfd per queue's worker thread, written by shutdown: the worker serves what its ring holds and
    /// counts itself in `drained`.
    pub(crate) drain_events: Vec<EventFd>,
    pub(crate) drained: (Mutex<usize>, Condvar),
    pub(crate) workers: Vec<Mutex<QueueWorker>>,
    pub(crate) event_idx: AtomicBool,
    pub(crate) acked_features: AtomicU64,
    /// Whether the frontend acked `VHOST_F_LOG_ALL` (keeps a dirty log): the blk queues mark the pages reads
    /// wrote only then.
    pub(crate) log_all: Arc<AtomicBool>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("queues", &self.workers.len())
            .finish()
    }
}

/// The [`VhostUserBackend`] of one connection (cheap to clone: the framework clones it per worker thread).
#[derive(Clone, Debug)]
pub(crate) struct BlkBackend {
    pub(crate) device: Arc<Device>,
    pub(crate) conn: Arc<Connection>,
}

impl Connection {
    pub(crate) fn new(device: &Device, mem: AtomicGuestMemory) -> blk_factory::Result<Connection> {
        let log_all = Arc::new(AtomicBool::new(false));
        let workers = (0..device.config.num_queues)
            .map(|_| QueueWorker::new(device, Arc::clone(&log_all)).map(Mutex::new))
            .collect::<blk_factory::Result<Vec<_>>>()?;
        Ok(Connection {
            mem,
            epoll_handlers: OnceLock::new(),
            drain_events: (0..device.config.num_queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<std::io::Result<Vec<_>>>()?,
            drained: (Mutex::new(0), Condvar::new()),
            workers,
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            log_all,
        })
    }

    /// Serves every request available on queue `index`: answers or submits them, completes what finished,
    /// signals the driver, and polls the ring or leaves driver notifications off as `poll` says. Called for a
    /// kick, and for a completion (`completion`: the blk queue's eventfd is read first), since the driver's
    /// kicks are off while requests are in flight.
    pub(crate) fn process_queue(
        &self,
        device: &Device,
        index: usize,
        vring: &Vring,
        completion: bool,
    ) -> io::Result<()> {
        let Some(worker) = self.workers.get(index) else {
            return Ok(());
        };
        // A poisoned lock means a worker panicked: keep serving with its state (scratch vectors are cleared
        // before use, slots are only freed on completion).
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.vring.is_none() {
            worker.vring = Some(vring.clone());
        }
        if completion {
            if let Some(notifier) = worker.notifier() {
                // Non-blocking: EAGAIN on a spurious wake-up.
                let _ = notifier.read();
            }
        }
        worker.poll.woke();
        let mut reaped = false;
        loop {
            // The requests of this round are those the avail index shows now; the memory table is loaded
            // after reading it, so it is at least as new as they are (a frontend adds a region, ADD_MEM_REG,
            // before it puts requests using it on the ring). Later requests come with their own kick, or make
            // `enable_notification` report them.
            let observed = vring
                .get_ref()
                .get_queue()
                .avail_idx(&*self.mem.memory(), std::sync::atomic::Ordering::Acquire)
                .map_err(io::Error::other)?;
            let mem = self.mem.memory();
            match worker.ensure_queue(mem.clone().into_inner()) {
                Ok(true) => {
                    if let Some(fd) = worker.notifier().map(|n| n.as_raw_fd()) {
                        self.watch_completions(device, index, fd)?;
                    }
                }
                Ok(false) => {}
                Err(e) => log::warn!("queue {index}: cannot make its blk queue: {e}"),
            }
            // No kicks while this thread looks at the ring.
            vring.disable_notification().map_err(io::Error::other)?;
            loop {
                if vring.get_ref().get_queue().next_avail() == observed.0 {
                    break;
                }
                // The chain's head and its descriptor table; the worker walks the chain itself.
                let popped = {
                    let mut state = vring.get_mut();
                    let queue = state.get_queue_mut();
                    let table = (GuestAddress(queue.desc_table()), queue.size());
                    queue
                        .pop_descriptor_chain(mem.clone())
                        .map(|chain| (chain.head_index(), table))
                };
                let Some((head, table)) = popped else { break };
                if let Accepted::Done(used) = worker.accept(device, &*mem, head, table) {
                    vring.add_used(head, used).map_err(io::Error::other)?;
                }
                if worker.completes_inline && worker.staged() >= INLINE_SUB_BATCH {
                    // The driver gets the first answers while this thread serves the rest.
                    reaped |= worker.submit_and_complete(device, &*mem, vring);
                    Self::signal(vring)?;
                }
            }
            // Buffered I/O finishes during the submission: completed now, so the driver answers while this
            // thread polls.
            reaped |= worker.submit_and_complete(device, &*mem, vring);
            Self::signal(vring)?;
            if worker.in_flight() > 0 && !worker.flushing() {
                // Kicks stay off: the completion's wake looks at the ring.
                worker.poll.awaiting_completions();
                return Ok(());
            }
            if worker.in_flight() == 0 && !device.stopping.load(Ordering::Relaxed) {
                let window = worker.poll.window();
                let queue_mem = &*mem;
                let arrived = || {
                    let queue = vring.get_ref();
                    let queue = queue.get_queue();
                    queue
                        .avail_idx(queue_mem, std::sync::atomic::Ordering::Acquire)
                        .is_ok_and(|idx| idx.0 != queue.next_avail())
                };
                if !window.is_zero() && crate::poll::spin_until(window, arrived) {
                    worker.poll.hit();
                    continue;
                }
                worker.poll.miss();
            } else {
                worker.poll.awaiting_completions();
            }
            if !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if reaped && worker.in_flight() == 0 {
            // The kernel signalled the completions reaped above on the eventfd: clear it, so the thread sleeps
            // until a kick instead of waking at once for nothing.
            if let Some(notifier) = worker.notifier() {
                let _ = notifier.read();
            }
        }
        Ok(())
    }

    /// Completes what queue `index`'s blk queue finished, and signals the driver (shutdown: no new requests).
    pub(crate) fn complete_queue(&self, index: usize, vring: &Vring) -> io::Result<()> {
        let Some(worker) = self.workers.get(index) else {
            return Ok(());
        };
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notifier) = worker.notifier() {
            // Non-blocking: EAGAIN on a spurious wake-up.
            let _ = notifier.read();
        }
        let mem = self.mem.memory();
        if worker.complete(&*mem, vring) == 0 {
            return Ok(());
        }
        drop(worker);
        Self::signal(vring)
    }

    fn signal(vring: &Vring) -> io::Result<()> {
        if vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Waits until queue `index` has nothing in flight, completing into its ring.
    pub(crate) fn wait_idle(&self, index: usize, timeout: std::time::Duration) {
        let Some(worker) = self.workers.get(index) else {
            return;
        };
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        let Some(vring) = worker.vring.clone() else {
            return;
        };
        let mem = self.mem.memory();
        worker.wait_idle(&*mem, &vring, timeout);
        drop(worker);
        let _ = Self::signal(&vring);
    }

    fn watch_completions(&self, device: &Device, index: usize, fd: RawFd) -> io::Result<()> {
        let handler = self
            .epoll_handlers
            .get()
            .and_then(|h| h.get(index))
            .and_then(Weak::upgrade)
            .ok_or_else(|| io::Error::other("no event loop for the queue"))?;
        handler.register_listener(fd, EventSet::IN, Connection::completion_event_id(device))
    }

    /// The event id of the blk queues' completion eventfds in the workers' epoll sets.
    pub(crate) fn completion_event_id(device: &Device) -> u64 {
        u64::from(device.config.num_queues) + 2
    }

    /// The event id of the drain eventfds in the workers' epoll sets (past the queues and the exit event).
    pub(crate) fn drain_event_id(device: &Device) -> u64 {
        u64::from(device.config.num_queues) + 1
    }

    /// The connection's vring workers have ended (the frontend left, or never came): a drain waiting for them
    /// returns now rather than at its timeout.
    pub(crate) fn workers_stopped(&self) {
        let (count, cond) = &self.drained;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        *count = (*count).max(self.drain_events.len());
        cond.notify_all();
    }

    /// Shutdown's drain: every worker serves what its ring holds; waits for all of them (at most `timeout`).
    pub(crate) fn drain(&self, timeout: std::time::Duration) {
        for event in &self.drain_events {
            let _ = event.write(1);
        }
        let (count, cond) = &self.drained;
        let count = count.lock().unwrap_or_else(|e| e.into_inner());
        let (_count, result) = cond
            .wait_timeout_while(count, timeout, |n| *n < self.drain_events.len())
            .unwrap_or_else(|e| e.into_inner());
        if result.timed_out() {
            log::warn!("not every queue drained within {timeout:?}");
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.device.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.queue_size)
    }

    fn features(&self) -> u64 {
        device_features(self.device.limits.read_only)
    }

    fn acked_features(&self, features: u64) {
        self.conn.acked_features.store(features, Ordering::Relaxed);
        // Release: a read completing after this is marked in the log (GuestQueue::set_dirty_log).
        let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
        self.conn
            .log_all
            .store(features & log_all != 0, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.conn.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = self.device.config;
        config.writeback = self.device.writeback.load(Ordering::Relaxed);
        let bytes = config.to_bytes();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= CONFIG_LEN => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `wce` is writable (VIRTIO_BLK_F_CONFIG_WCE).
        if offset as usize == WCE_OFFSET && buf.len() == 1 {
            let writeback = buf[0] != 0;
            if !writeback {
                // Switching to writethrough: what the cache holds becomes durable now.
                self.device.disk.flush().map_err(io::Error::from)?;
            }
            self.device.writeback.store(writeback, Ordering::Relaxed);
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only the wce byte of the config space is writable",
            ))
        }
    }

    fn update_memory(&self, _mem: AtomicGuestMemory) -> io::Result<()> {
        // `self.conn.mem` is the same `GuestMemoryAtomic` the framework just updated.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.config.num_queues)
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: every request the queue accepted completes first.
        self.conn.wait_idle(queue_index as usize, DRAIN_TIMEOUT);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected event set"));
        }
        // One thread per queue (`queues_per_thread`): the thread's only vring is queue `thread_id`.
        let index = thread_id;
        let Some(vring) = vrings.first() else {
            return Err(io::Error::other("event for a thread without a queue"));
        };
        let event = u64::from(device_event);
        if event == Connection::completion_event_id(&self.device) {
            if self.device.stopping.load(Ordering::Acquire) {
                return self.conn.complete_queue(index, vring);
            }
            return self.conn.process_queue(&self.device, index, vring, true);
        }
        if event == Connection::drain_event_id(&self.device) {
            if let Some(event) = self.conn.drain_events.get(index) {
                let _ = event.read();
            }
            let result = self.conn.process_queue(&self.device, index, vring, false);
            self.conn.wait_idle(index, DRAIN_TIMEOUT);
            let (count, cond) = &self.conn.drained;
            *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            cond.notify_all();
            return result;
        }
        if self.device.stopping.load(Ordering::Acquire) {
            // Shutdown drains the rings through the drain events.
            return Ok(());
        }
        self.conn.process_queue(&self.device, index, vring, false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_bits_are_what_qemu_needs() {
        use vhost::vhost_user::message::VhostUserProtocolFeatures as F;
        assert_eq!(F::CONFIG.bits(), 0x200);
        assert_eq!(F::MQ.bits(), 1);
    }
}
