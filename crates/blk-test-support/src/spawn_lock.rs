//! One lock for the tests of a test binary that spawn processes while holding images open.

use std::sync::{Mutex, MutexGuard};

/// Serializes the tests of one test binary that spawn processes (qemu-img, losetup) while holding images open.
///
/// A child process briefly holds a copy of every descriptor of its parent, between the fork and the exec that
/// closes them (`O_CLOEXEC`). An image closed by one test thread while another thread spawns a process can so
/// stay open, with its OFD locks, for a moment longer, and a test reopening it sees `Locked`. Tests that spawn
/// processes and also lock images take this guard first.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
