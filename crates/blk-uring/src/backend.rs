//! [`UringBackend`]: probes that io_uring works on this host and makes [`UringQueue`]s; [`BACKEND`], its
//! registration with the factory.

use std::io;
use std::sync::Arc;

use blk_core::{
    BackendDescriptor, Error, ErrorKind, HostFile, HostQueue, HostQueueBackend, Result,
};
use io_uring::{opcode, IoUring, Probe};

use crate::queue::UringQueue;
use crate::ring::RingOptions;

/// The ring size used by the probe in [`UringBackend::new`].
const PROBE_RING_ENTRIES: u32 = 2;

/// What the probe found out about the kernel's io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingFeatures {
    /// `IORING_OP_READ` and `IORING_OP_WRITE` (Linux 5.6) exist: single-buffer operations skip the iovec.
    pub(crate) single_buffer_ops: bool,
    /// The set-up flags the queues' rings ask for.
    pub(crate) options: RingOptions,
}

/// The io_uring [`HostQueueBackend`]: one ring per queue, files registered with the ring, the queue's eventfd
/// registered for completions.
///
/// Made by [`UringBackend::new`], which checks that io_uring is usable here, so a factory can fall back to
/// another backend when it is not.
#[derive(Debug, Clone, Copy)]
pub struct UringBackend {
    features: RingFeatures,
}

impl UringBackend {
    /// Probes io_uring: creates and drops a tiny ring and checks that the kernel knows the operations the
    /// queues use (`READV`, `WRITEV`, `FSYNC`; `READ`/`WRITE` are used when present).
    ///
    /// Fails with [`ErrorKind::Unsupported`] and the message `io_uring is not available: <reason>` when the
    /// ring cannot be created (kernel too old, `kernel.io_uring_disabled` set, seccomp answering `ENOSYS` or
    /// `EPERM`, a container's policy) or lacks an operation.
    pub fn new() -> Result<UringBackend> {
        let ring = IoUring::new(PROBE_RING_ENTRIES).map_err(|e| unavailable(&e.to_string()))?;
        let mut probe = Probe::new();
        let features = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => {
                for (code, name) in [
                    (opcode::Readv::CODE, "READV"),
                    (opcode::Writev::CODE, "WRITEV"),
                    (opcode::Fsync::CODE, "FSYNC"),
                ] {
                    if !probe.is_supported(code) {
                        return Err(unavailable(&format!(
                            "the kernel lacks the {name} operation"
                        )));
                    }
                }
                RingFeatures {
                    single_buffer_ops: probe.is_supported(opcode::Read::CODE)
                        && probe.is_supported(opcode::Write::CODE),
                    options: RingOptions::default(),
                }
            }
            // Kernels before 5.6 have no probe; they have READV, WRITEV and FSYNC (5.1) but not READ/WRITE.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => RingFeatures {
                single_buffer_ops: false,
                options: RingOptions::default(),
            },
            Err(e) => return Err(unavailable(&format!("probing operations: {e}"))),
        };
        Ok(UringBackend { features })
    }

    /// The same backend, its queues' rings asking for `options` (each flag still only where the kernel has
    /// it). [`UringBackend::new`] asks for [`RingOptions::default`].
    #[must_use]
    pub fn with_ring_options(mut self, options: RingOptions) -> UringBackend {
        self.features.options = options;
        self
    }

    /// The set-up flags the queues' rings ask for.
    pub fn ring_options(&self) -> RingOptions {
        self.features.options
    }

    /// A queue over `files` with at most `depth` operations in the kernel at once, as its concrete type
    /// (the [`HostQueueBackend::create_queue`] of this backend, without the box).
    pub fn create_uring_queue(&self, files: &[&HostFile], depth: u32) -> Result<UringQueue> {
        UringQueue::new(files, depth, self.features)
    }
}

impl HostQueueBackend for UringBackend {
    fn name(&self) -> &'static str {
        crate::BACKEND_NAME
    }

    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        Ok(Box::new(self.create_uring_queue(files, depth)?))
    }
}

/// Setting this environment variable (to anything) makes [`BACKEND`]'s probe treat io_uring as unavailable, as
/// `sysctl kernel.io_uring_disabled=2` would: for sandboxes whose seccomp policy kills a process that calls
/// `io_uring_setup` instead of failing the call, and for testing the fallback. [`UringBackend::new`] itself
/// does not look at it.
pub const DISABLE_IO_URING_ENV: &str = "BLK_DISABLE_IO_URING";

/// The io_uring backend's registration: `io_uring` (no alias; qemu-img's name too). Its probe fails when
/// [`DISABLE_IO_URING_ENV`] is set, without touching io_uring, and otherwise is [`UringBackend::new`].
pub const BACKEND: &dyn BackendDescriptor = &UringDescriptor;

/// What [`BACKEND`] points at.
#[derive(Debug)]
struct UringDescriptor;

impl BackendDescriptor for UringDescriptor {
    fn name(&self) -> &'static str {
        crate::BACKEND_NAME
    }

    fn probe(&self) -> Result<Arc<dyn HostQueueBackend>> {
        if std::env::var_os(DISABLE_IO_URING_ENV).is_some() {
            return Err(unavailable(&format!("disabled by {DISABLE_IO_URING_ENV}")));
        }
        Ok(Arc::new(UringBackend::new()?))
    }
}

/// The error [`UringBackend::new`] gives when io_uring cannot be used.
fn unavailable(reason: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("io_uring is not available: {reason}"),
    )
}

/// Turns an `io::Error` from ring setup into the backend's error: `Unsupported` when io_uring itself is refused
/// (so a caller can still fall back), an I/O error otherwise.
pub(crate) fn ring_setup_error(err: io::Error, what: &str) -> Error {
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => unavailable(&err.to_string()),
        _ => Error::io_while(err, what),
    }
}
