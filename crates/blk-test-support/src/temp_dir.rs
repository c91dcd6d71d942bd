//! Temporary directories on the target's file system, where O_DIRECT works (unlike tmpfs).

use std::path::Path;

/// A new temporary directory named `prefix…` inside `parent`, removed when dropped.
///
/// Integration tests pass Cargo's `CARGO_TARGET_TMPDIR` (known only while they compile), or call
/// [`target_tempdir!`](crate::target_tempdir), which does.
pub fn tempdir_in(parent: impl AsRef<Path>, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .expect("creating a temporary directory")
}

/// A new temporary directory named `prefix…` in the calling test's `CARGO_TARGET_TMPDIR` (the target
/// directory's `tmp`, on the target's file system), removed when dropped: [`tempdir_in`] for integration tests.
#[macro_export]
macro_rules! target_tempdir {
    ($prefix:expr) => {
        $crate::tempdir_in(env!("CARGO_TARGET_TMPDIR"), $prefix)
    };
}
