//! The [`HostOpenOptions`] the tests open images with.

use blk_core::{HostOpenOptions, LockMode};

/// Read-write, buffered, locked: the default.
pub fn rw() -> HostOpenOptions {
    HostOpenOptions::default()
}

/// Read-only, buffered, locked.
pub fn ro() -> HostOpenOptions {
    HostOpenOptions {
        read_only: true,
        ..HostOpenOptions::default()
    }
}

/// Read-write with O_DIRECT.
pub fn direct() -> HostOpenOptions {
    HostOpenOptions {
        direct: true,
        ..HostOpenOptions::default()
    }
}

/// Read-write without taking the image's locks.
pub fn unlocked() -> HostOpenOptions {
    HostOpenOptions {
        lock: LockMode::None,
        ..HostOpenOptions::default()
    }
}
