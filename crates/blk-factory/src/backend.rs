//! Choosing the I/O backend of asynchronous queues: io_uring, then Linux AIO, then synchronous I/O.
//!
//! Each backend crate sits behind its own Cargo feature (`io-uring`, `aio`). [`choose_backend`] tries the
//! requested one and falls back, in that order, to one that is compiled in and works on this host (io_uring
//! may be disabled by `kernel.io_uring_disabled`, a seccomp filter or an old kernel; AIO by `fs.aio-max-nr` or
//! a sandbox), and says why in [`BackendChoice::notes`]. The synchronous backend always works. A probe's
//! outcome is kept for the life of the process, so opening many disks probes once.

use std::sync::Arc;
#[cfg(any(feature = "io-uring", feature = "aio"))]
use std::sync::OnceLock;

use blk_core::{HostQueueBackend, SyncHostBackend};

/// Which I/O backend serves asynchronous queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// The best one compiled in and working on this host: io_uring, else Linux AIO, else synchronous I/O.
    #[default]
    Auto,
    /// io_uring (`blk-uring`, feature `io-uring`).
    IoUring,
    /// Linux native AIO (`blk-aio`, feature `aio`): meant for O_DIRECT, as buffered AIO runs synchronously.
    Aio,
    /// Synchronous `preadv`/`pwritev` at submission: works everywhere.
    Sync,
}

impl Backend {
    /// The name the CLI shows and takes (`io_uring`, `aio`, `sync`; `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Aio => "aio",
            Backend::Sync => "sync",
        }
    }
}

/// The outcome of [`choose_backend`]: the backend that will serve queues, and why others were passed over.
#[derive(Debug, Clone)]
pub struct BackendChoice {
    /// The backend chosen (never [`Backend::Auto`]).
    pub backend: Backend,
    /// One line per backend tried and passed over, e.g. "io_uring is not available: ... ; using aio".
    pub notes: Vec<String>,
    handle: Arc<dyn HostQueueBackend>,
}

impl BackendChoice {
    /// The backend object formats make their host queues with.
    pub fn handle(&self) -> Arc<dyn HostQueueBackend> {
        Arc::clone(&self.handle)
    }
}

/// The order backends are tried in, starting from `requested`.
fn candidates(requested: Backend) -> &'static [Backend] {
    match requested {
        Backend::Auto | Backend::IoUring => &[Backend::IoUring, Backend::Aio, Backend::Sync],
        Backend::Aio => &[Backend::Aio, Backend::Sync],
        Backend::Sync => &[Backend::Sync],
    }
}

/// The backend `requested` names if it is built in and works here, else the next one in the order
/// io_uring, AIO, synchronous; never fails, as the synchronous backend always works.
pub fn choose_backend(requested: Backend) -> BackendChoice {
    let mut notes = Vec::new();
    for &candidate in candidates(requested) {
        match probe(candidate) {
            Ok(handle) => {
                if let Some(last) = notes.last_mut() {
                    *last = format!("{last}; using {}", candidate.name());
                }
                return BackendChoice {
                    backend: candidate,
                    notes,
                    handle,
                };
            }
            Err(why) => notes.push(why),
        }
    }
    // Unreachable in practice: `Sync` ends every candidate list and always works.
    BackendChoice {
        backend: Backend::Sync,
        notes,
        handle: Arc::new(SyncHostBackend),
    }
}

/// The backend object for `backend`, or why it cannot be used.
fn probe(backend: Backend) -> Result<Arc<dyn HostQueueBackend>, String> {
    match backend {
        Backend::Sync | Backend::Auto => Ok(Arc::new(SyncHostBackend)),
        Backend::IoUring => probe_io_uring(),
        Backend::Aio => probe_aio(),
    }
}

#[cfg(feature = "io-uring")]
fn probe_io_uring() -> Result<Arc<dyn HostQueueBackend>, String> {
    static PROBED: OnceLock<Result<Arc<dyn HostQueueBackend>, String>> = OnceLock::new();
    PROBED
        .get_or_init(|| {
            if std::env::var_os(DISABLE_IO_URING_ENV).is_some() {
                return Err(format!(
                    "io_uring is not available: disabled by {DISABLE_IO_URING_ENV}"
                ));
            }
            blk_uring::UringBackend::new()
                .map(|b| Arc::new(b) as Arc<dyn HostQueueBackend>)
                .map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(not(feature = "io-uring"))]
fn probe_io_uring() -> Result<Arc<dyn HostQueueBackend>, String> {
    Err("io_uring is not built in (blk-factory feature `io-uring`)".to_string())
}

#[cfg(feature = "aio")]
fn probe_aio() -> Result<Arc<dyn HostQueueBackend>, String> {
    static PROBED: OnceLock<Result<Arc<dyn HostQueueBackend>, String>> = OnceLock::new();
    PROBED
        .get_or_init(|| {
            blk_aio::AioBackend::new()
                .map(|b| Arc::new(b) as Arc<dyn HostQueueBackend>)
                .map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(not(feature = "aio"))]
fn probe_aio() -> Result<Arc<dyn HostQueueBackend>, String> {
    Err("Linux AIO is not built in (blk-factory feature `aio`)".to_string())
}

/// Setting this environment variable (to anything) makes [`choose_backend`] treat io_uring as unavailable,
/// as `sysctl kernel.io_uring_disabled=2` would: for sandboxes whose seccomp policy kills a process that calls
/// `io_uring_setup` instead of failing the call, and for testing the fallback.
pub const DISABLE_IO_URING_ENV: &str = "BLK_DISABLE_IO_URING";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_always_works() {
        let choice = choose_backend(Backend::Sync);
        assert_eq!(choice.backend, Backend::Sync);
        assert!(choice.notes.is_empty());
        assert_eq!(choice.handle().name(), "sync");
    }

    #[test]
    fn auto_resolves_to_a_real_backend() {
        let choice = choose_backend(Backend::Auto);
        assert_ne!(choice.backend, Backend::Auto);
        assert_eq!(choice.handle().name(), choice.backend.name());
        // Every backend passed over says why, and the last note names the one used.
        if let Some(last) = choice.notes.last() {
            assert!(
                last.ends_with(&format!("using {}", choice.backend.name())),
                "{last}"
            );
        }
    }
}
