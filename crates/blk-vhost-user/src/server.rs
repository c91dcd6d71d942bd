//! The server: options, the device built from a disk, the accept loop (one frontend at a time, a new one after a
//! disconnect), and the stop path (drain the rings, flush, close) that SIGTERM and SIGINT take.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use blk_factory::{AsyncDiskFile, Error, ErrorKind, Result};
use std::os::fd::AsRawFd;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{BlkBackend, Connection, Device, DRAIN_TIMEOUT};
use crate::config::BlkConfig;
use crate::request::{Limits, SECTOR_SIZE};

/// The largest virtqueue the device accepts (`--queue-size`'s maximum, virtio's split-ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// The most queues (`--num-queues`'s maximum).
pub const MAX_QUEUES: u16 = 64;
/// The most data descriptors per request (`seg_max`; less for queues smaller than 130).
pub const SEG_MAX: u32 = 128;
/// `size_max`: the largest data descriptor the device advertises.
pub const SIZE_MAX: u32 = 1 << 20;
/// The most data bytes of one read or write the device accepts (larger ones get `VIRTIO_BLK_S_IOERR`).
pub const MAX_DATA_BYTES: u64 = 32 << 20;
/// The most ranges of one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 16;
/// The largest discard or write-zeroes range, in sectors (1 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// How the device presents the disk (the `blk vhost-user-blk` options, after qemu-storage-daemon's
/// vhost-user-blk export and Cloud Hypervisor's `vhost_user_block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkOptions {
    /// Request queues (`--num-queues`, default 1).
    pub num_queues: u16,
    /// The largest virtqueue a frontend may configure (`--queue-size`, default 256; a power of two).
    pub queue_size: u16,
    /// The serial `GET_ID` answers (at most 20 bytes are sent; default empty).
    pub serial: String,
    /// The logical block size (`--logical-block-size`: 512 to 65536, a power of two; default: the image's).
    pub logical_block_size: Option<u32>,
    /// Writeback cache enabled at start (`wce`); writethrough flushes after every write. The driver may change
    /// it (`VIRTIO_BLK_F_CONFIG_WCE`).
    pub writeback: bool,
    /// How long an idle queue thread polls its ring for new requests before it sleeps (`--poll-max-ns`,
    /// default 32 µs as QEMU's iothreads; adaptive: it shrinks while polling finds nothing; zero: never).
    pub poll_max: std::time::Duration,
}

impl Default for BlkOptions {
    fn default() -> BlkOptions {
        BlkOptions {
            num_queues: 1,
            queue_size: 256,
            serial: String::new(),
            logical_block_size: None,
            writeback: true,
            poll_max: DEFAULT_POLL_MAX,
        }
    }
}

/// [`BlkOptions::poll_max`]'s default: QEMU's `poll-max-ns` default for iothreads.
pub const DEFAULT_POLL_MAX: std::time::Duration = std::time::Duration::from_nanos(32768);

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Stops a running [`VhostUserBlk::serve`] (from another thread or a signal handler: it only writes an
/// eventfd).
#[derive(Debug, Clone)]
pub struct StopHandle {
    event: Arc<EventFd>,
}

impl StopHandle {
    /// A new handle, not yet triggered.
    pub fn new() -> Result<StopHandle> {
        Ok(StopHandle {
            event: Arc::new(EventFd::new(0)?),
        })
    }

    /// Asks the server to stop: it serves what the rings hold, flushes the disk, closes the connection and
    /// returns.
    pub fn stop(&self) {
        // Cannot fail short of the counter overflowing, which one write per stop never reaches.
        let _ = self.event.write(1);
    }

    fn wait(&self) {
        // Blocking read; retried when a signal interrupts it.
        while self.event.read().is_err() {}
    }
}

static SIGNAL_STOP: OnceLock<StopHandle> = OnceLock::new();

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: an atomic load and a write(2) to an eventfd.
    if let Some(handle) = SIGNAL_STOP.get() {
        handle.stop();
    }
}

/// Makes SIGTERM and SIGINT trigger `handle` (once per process: later calls keep the first handle and fail).
pub fn stop_on_signals(handle: &StopHandle) -> Result<()> {
    if SIGNAL_STOP.set(handle.clone()).is_err() {
        return Err(invalid("signal handlers are already installed".into()));
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(signal, on_stop_signal).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot handle signal {signal}: {e}"))
        })?;
    }
    Ok(())
}

/// A vhost-user-blk device serving one disk.
#[derive(Debug)]
pub struct VhostUserBlk {
    device: Arc<Device>,
}

impl VhostUserBlk {
    /// The device for `disk` as `options` present it (its read-only state is the disk's).
    pub fn new(disk: Box<dyn AsyncDiskFile>, options: &BlkOptions) -> Result<VhostUserBlk> {
        if options.num_queues == 0 || options.num_queues > MAX_QUEUES {
            return Err(invalid(format!(
                "--num-queues must be 1 to {MAX_QUEUES}, not {}",
                options.num_queues
            )));
        }
        if !options.queue_size.is_power_of_two() || options.queue_size < 4 {
            return Err(invalid(format!(
                "--queue-size must be a power of two from 4 to {MAX_QUEUE_SIZE}, not {}",
                options.queue_size
            )));
        }
        let topology = disk.topology();
        let lbs = options
            .logical_block_size
            .unwrap_or(topology.logical_block_size.max(SECTOR_SIZE as u32));
        if !lbs.is_power_of_two() || !(512..=65536).contains(&lbs) {
            return Err(invalid(format!(
                "--logical-block-size must be a power of two from 512 to 65536, not {lbs}"
            )));
        }
        let size = disk.logical_size() / u64::from(lbs) * u64::from(lbs);
        let capacity_sectors = size / SECTOR_SIZE;
        let read_only = disk.is_read_only();
        let physical = topology.physical_block_size.max(lbs);
        let physical_block_exp = (physical / lbs).trailing_zeros() as u8;
        let in_blocks = |bytes: u32| bytes / lbs;
        let granularity = topology.discard_granularity.max(lbs);
        // Linux's driver never puts more than seg_max data descriptors (plus header and status) in a chain.
        let seg_max = (u32::from(options.queue_size) - 2).min(SEG_MAX);
        let config = BlkConfig {
            capacity_sectors,
            size_max: SIZE_MAX,
            seg_max,
            blk_size: lbs,
            physical_block_exp,
            min_io_size: u16::try_from(in_blocks(topology.minimum_io_size).max(1)).unwrap_or(1),
            opt_io_size: in_blocks(topology.optimal_io_size),
            writeback: options.writeback,
            num_queues: options.num_queues,
            max_discard_sectors: MAX_RANGE_SECTORS,
            max_discard_seg: MAX_RANGES,
            discard_sector_alignment: granularity / SECTOR_SIZE as u32,
            max_write_zeroes_sectors: MAX_RANGE_SECTORS,
            max_write_zeroes_seg: MAX_RANGES,
        };
        let limits = Limits {
            capacity_sectors,
            logical_block_size: lbs,
            // Data descriptors plus header and status.
            max_segments: seg_max as usize + 2,
            max_data_bytes: MAX_DATA_BYTES,
            max_ranges: MAX_RANGES,
            max_range_sectors: MAX_RANGE_SECTORS,
            read_only,
            discard: !read_only,
            write_zeroes: !read_only,
        };
        Ok(VhostUserBlk {
            device: Arc::new(Device {
                disk,
                config,
                limits,
                serial: options.serial.as_bytes().to_vec(),
                queue_size: options.queue_size,
                writeback: AtomicBool::new(options.writeback),
                poll_max: options.poll_max,
                stopping: AtomicBool::new(false),
                current: Mutex::new(None),
            }),
        })
    }

    /// The config space the device advertises.
    pub fn config(&self) -> BlkConfig {
        self.device.config
    }

    /// Listens on `socket` (replacing a stale socket file) and serves one frontend at a time, accepting the
    /// next one after a disconnect, until `stop` is triggered. Then it serves every request the rings hold,
    /// flushes the disk, closes the connection and returns.
    pub fn serve(&self, socket: &Path, stop: &StopHandle) -> Result<()> {
        let listener = Listener::new(socket, true).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot listen on the socket: {e}")).with_path(socket)
        })?;
        let device = Arc::clone(&self.device);
        let socket_path: PathBuf = socket.to_path_buf();
        let shutdown: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>> =
            Arc::new(Mutex::new(None));
        let shutdown_in_loop = Arc::clone(&shutdown);
        let acceptor = std::thread::Builder::new()
            .name("vhost-user-accept".into())
            .spawn(move || accept_loop(&device, listener, &shutdown_in_loop))
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start a thread: {e}")))?;

        stop.wait();
        let device = &self.device;
        device.stopping.store(true, Ordering::SeqCst);
        let current = device
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(conn) = current {
            conn.drain(DRAIN_TIMEOUT);
        }
        let flushed = device.disk.flush();
        if let Some(handle) = shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.shutdown();
        }
        // Wake the accept loop if it waits for a frontend.
        drop(UnixStream::connect(&socket_path));
        if acceptor.join().is_err() {
            log::warn!("the accept loop panicked");
        }
        flushed
    }
}

fn accept_loop(
    device: &Arc<Device>,
    mut listener: Listener,
    shutdown: &Mutex<Option<vhost_user_backend::ShutdownHandle>>,
) {
    // Signals go to the thread waiting in `serve`, not to this one or the vring workers it starts (an
    // interrupted socket read would drop the frontend).
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let _ = vmm_sys_util::signal::block_signal(signal);
    }
    while !device.stopping.load(Ordering::Acquire) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let conn = match Connection::new(device, mem.clone()) {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                log::error!("cannot set up the queues: {e}");
                return;
            }
        };
        let backend = BlkBackend {
            device: Arc::clone(device),
            conn: Arc::clone(&conn),
        };
        // A daemon per connection: the framework keeps a frontend's ownership and vring state for the
        // daemon's life, so a reconnecting frontend needs a fresh one.
        let mut daemon = match VhostUserDaemon::new("blk-vhost-user".into(), backend, mem) {
            Ok(daemon) => daemon,
            Err(e) => {
                log::error!("cannot start the vhost-user daemon: {e}");
                return;
            }
        };
        let _ = conn.epoll_handlers.set(
            daemon
                .get_epoll_handlers()
                .iter()
                .map(Arc::downgrade)
                .collect(),
        );
        let drain_id = Connection::drain_event_id(device);
        for (handler, event) in daemon.get_epoll_handlers().iter().zip(&conn.drain_events) {
            if let Err(e) = handler.register_listener(event.as_raw_fd(), EventSet::IN, drain_id) {
                log::error!("cannot watch the drain event: {e}");
                return;
            }
        }
        // Known to `serve`'s stop path before the frontend can send anything: requests it puts on the rings
        // right after connecting are drained too.
        *device.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&conn));
        if let Err(e) = daemon.start(&mut listener) {
            log::warn!("accept failed: {e}");
            conn.workers_stopped();
            continue;
        }
        if device.stopping.load(Ordering::Acquire) {
            // The connection `serve` made to wake this loop: let the daemon's thread end, so everything
            // holding the disk is dropped before `serve` returns.
            daemon.request_shutdown();
            let _ = daemon.wait();
            break;
        }
        *shutdown.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if device.stopping.load(Ordering::SeqCst) {
            // A stop that came before the handle was stored did not see it: close the connection here.
            daemon.request_shutdown();
        }
        if let Err(e) = daemon.wait() {
            log::info!("frontend disconnected: {e}");
        }
        *shutdown.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Dropping the daemon stops its vring workers after their current batch. A stop that came as the
        // frontend left may be draining this connection: it must not wait for workers that are gone.
        drop(daemon);
        conn.workers_stopped();
        if !device.stopping.load(Ordering::Acquire) {
            *device.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}
