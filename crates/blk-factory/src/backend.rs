//! Choosing the I/O backend of asynchronous queues: `BACKENDS`, one registration per backend crate in the
//! order the factory falls back through them (io_uring, then Linux AIO, then synchronous I/O).
//!
//! Each backend crate sits behind its own Cargo feature (`io-uring`, `aio`). [`choose_backend`] tries the
//! requested one and falls back, in the list's order, to one that works on this host (io_uring may be disabled
//! by `kernel.io_uring_disabled`, a seccomp filter or an old kernel; AIO by `fs.aio-max-nr` or a sandbox), and
//! says why in [`BackendChoice::notes`]. The synchronous backend always works and ends the list. A probe's
//! outcome is kept for the life of the process, so opening many disks probes once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use blk_core::{BackendDescriptor, Error, ErrorKind, HostQueueBackend, SyncHostBackend};

/// The backends compiled in, in fallback order. Adding a backend is one line here.
static BACKENDS: &[&dyn BackendDescriptor] = &[
    #[cfg(feature = "io-uring")]
    blk_uring::BACKEND,
    #[cfg(feature = "aio")]
    blk_aio::BACKEND,
    blk_core::SYNC_BACKEND,
];

/// Which I/O backend serves asynchronous queues: [`Backend::AUTO`] (the best one that works here), or one by
/// name.
///
/// ```
/// use blk_factory::Backend;
/// assert_eq!(Backend::named("threads").unwrap(), Backend::SYNC); // qemu-img's name for it
/// assert_eq!(Backend::AUTO.name(), "auto");
/// assert!(Backend::named("bogus").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Backend(Option<&'static str>);

impl Backend {
    /// The best one compiled in and working on this host, in fallback order.
    pub const AUTO: Backend = Backend(None);

    /// Synchronous `preadv`/`pwritev` at submission: works everywhere.
    pub const SYNC: Backend = Backend(Some("sync"));

    /// The backend compiled in with this name or alias (`io_uring`; `aio` or `native`; `sync` or `threads`),
    /// or `None`.
    pub fn by_name(name: &str) -> Option<Backend> {
        BACKENDS
            .iter()
            .find(|d| d.name() == name || d.aliases().contains(&name))
            .map(|d| Backend(Some(d.name())))
    }

    /// [`by_name`](Backend::by_name), with an error naming the backends this build has.
    pub fn named(name: &str) -> blk_core::Result<Backend> {
        Backend::by_name(name).ok_or_else(|| {
            let known: Vec<&str> = BACKENDS.iter().map(|d| d.name()).collect();
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "unknown I/O backend '{name}' (this build has: {})",
                    known.join(", ")
                ),
            )
        })
    }

    /// Every backend compiled in, in fallback order.
    pub fn all() -> impl Iterator<Item = Backend> {
        BACKENDS.iter().map(|d| Backend(Some(d.name())))
    }

    /// The name the CLI shows and takes (`io_uring`, `aio`, `sync`; `auto`).
    pub fn name(self) -> &'static str {
        self.0.unwrap_or("auto")
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Backend").field(&self.name()).finish()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of [`choose_backend`]: the backend that will serve queues, and why others were passed over.
#[derive(Debug, Clone)]
pub struct BackendChoice {
    /// The backend chosen (never [`Backend::AUTO`]).
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

/// The backends to try for `requested`, in order: all of them for [`Backend::AUTO`], else the requested one
/// and those after it in [`BACKENDS`].
fn candidates(requested: Backend) -> &'static [&'static dyn BackendDescriptor] {
    let start = requested
        .0
        .and_then(|name| BACKENDS.iter().position(|d| d.name() == name))
        .unwrap_or(0);
    &BACKENDS[start..]
}

/// The backend `requested` names if it works here, else the next one in `BACKENDS` (the fallback order); never fails, as the
/// synchronous backend always works.
pub fn choose_backend(requested: Backend) -> BackendChoice {
    let mut notes = Vec::new();
    for &candidate in candidates(requested) {
        match probe(candidate) {
            Ok(handle) => {
                if let Some(last) = notes.last_mut() {
                    *last = format!("{last}; using {}", candidate.name());
                }
                return BackendChoice {
                    backend: Backend(Some(candidate.name())),
                    notes,
                    handle,
                };
            }
            Err(why) => notes.push(why),
        }
    }
    // Unreachable in practice: the synchronous backend ends the list and always works.
    BackendChoice {
        backend: Backend::SYNC,
        notes,
        handle: Arc::new(SyncHostBackend),
    }
}

/// The backend `requested` names, or an [`ErrorKind::Unsupported`] error saying why it does not work here:
/// no fallback. [`Backend::AUTO`] resolves as in [`choose_backend`] (it names no backend to insist on).
///
/// ```
/// use blk_factory::{choose_backend_strict, Backend};
/// assert_eq!(choose_backend_strict(Backend::SYNC).unwrap().backend, Backend::SYNC);
/// ```
pub fn choose_backend_strict(requested: Backend) -> blk_core::Result<BackendChoice> {
    let Some(name) = requested.0 else {
        return Ok(choose_backend(requested));
    };
    let descriptor = BACKENDS.iter().find(|d| d.name() == name).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!("the I/O backend '{name}' is not compiled in"),
        )
    })?;
    match probe(*descriptor) {
        Ok(handle) => Ok(BackendChoice {
            backend: requested,
            notes: Vec::new(),
            handle,
        }),
        Err(why) => Err(Error::new(
            ErrorKind::Unsupported,
            format!("the I/O backend '{name}' was required and does not work here: {why}"),
        )),
    }
}

/// A backend, or why it cannot be used here.
type Probed = Result<Arc<dyn HostQueueBackend>, String>;

/// `descriptor`'s backend, probed once per process, or why it cannot be used.
fn probe(descriptor: &'static dyn BackendDescriptor) -> Probed {
    static PROBED: OnceLock<Vec<OnceLock<Probed>>> = OnceLock::new();
    let probed = PROBED.get_or_init(|| BACKENDS.iter().map(|_| OnceLock::new()).collect());
    let index = BACKENDS
        .iter()
        .position(|d| d.name() == descriptor.name())
        .unwrap_or(0);
    match probed.get(index) {
        Some(cell) => cell
            .get_or_init(|| descriptor.probe().map_err(|e| e.to_string()))
            .clone(),
        None => descriptor.probe().map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_always_works() {
        let choice = choose_backend(Backend::SYNC);
        assert_eq!(choice.backend, Backend::SYNC);
        assert!(choice.notes.is_empty());
        assert_eq!(choice.handle().name(), "sync");
    }

    #[test]
    fn auto_resolves_to_a_real_backend() {
        let choice = choose_backend(Backend::AUTO);
        assert_ne!(choice.backend, Backend::AUTO);
        assert_eq!(choice.handle().name(), choice.backend.name());
        // Every backend passed over says why, and the last note names the one used.
        if let Some(last) = choice.notes.last() {
            assert!(
                last.ends_with(&format!("using {}", choice.backend.name())),
                "{last}"
            );
        }
    }

    #[test]
    fn strict_choice_of_a_working_backend() {
        let choice = choose_backend_strict(Backend::SYNC).unwrap();
        assert_eq!(choice.handle().name(), "sync");
        assert!(choice.notes.is_empty());
        assert_ne!(
            choose_backend_strict(Backend::AUTO).unwrap().backend,
            Backend::AUTO
        );
    }

    #[test]
    fn names_are_unique_and_sync_ends_the_list() {
        let mut names: Vec<&str> = BACKENDS
            .iter()
            .flat_map(|d| std::iter::once(d.name()).chain(d.aliases().iter().copied()))
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "two backends answer to one name");
        assert_eq!(Backend::all().last(), Some(Backend::SYNC));
    }
}
