//! What the `blk bench` suites' end-to-end tests share: a stand-in for `blk` that forwards to `qemu-img bench`
//! (so the tests need no release build of blk), a scratch directory that takes O_DIRECT, and the io_uring probe.

// Each test crate including this module uses a part of it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xtask::bench_compare::Environment;

/// Writes an executable script `name` in `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A `blk` in `dir` that runs `qemu-img` with the same arguments but `--queues N` (blk's flags are qemu-img's
/// but for that one) and says `backend: stand-in` on stderr.
pub fn stand_in_blk(dir: &Path) -> PathBuf {
    script(
        dir,
        "blk",
        "#!/bin/bash\nargs=()\nwhile (($#)); do\n  if [[ $1 == --queues ]]; then shift 2; continue; fi\n  \
         args+=(\"$1\"); shift\ndone\necho 'backend: stand-in' >&2\nexec qemu-img \"${args[@]}\"\n",
    )
}

/// The suites' environment with `blk` and the target directory `dir`.
pub fn environment(dir: &Path, blk: PathBuf) -> Environment {
    Environment {
        blk,
        qemu_img: PathBuf::from("qemu-img"),
        target_dir: dir.to_path_buf(),
        run_timeout: Duration::from_secs(60),
        baseline_blk: None,
    }
}

/// A directory on the target's file system (O_DIRECT works there; a tmpfs /tmp would refuse it).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Whether `qemu-img bench -i io_uring -t none` works in `dir` (a sandbox may forbid io_uring).
pub fn qemu_img_has_io_uring(dir: &Path) -> bool {
    let image = dir.join("probe.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let args = [
        "bench", "-f", "raw", "-t", "none", "-i", "io_uring", "-c", "1",
    ];
    let works = std::process::Command::new("qemu-img")
        .args(args)
        .arg(&image)
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&image);
    works
}
