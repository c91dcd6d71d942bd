//! The comparison suite end to end in `--quick` mode (64 MiB images, tiny counts, one run), with a stand-in
//! for `blk` that forwards to `qemu-img bench` (so the test needs no release build of blk): every scenario
//! runs, the report is written, the images are deleted, and failing runs are reported instead of panicking.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xtask::bench_compare::{run_suite, CompareOptions, Environment};

/// Writes an executable script `name` in `dir` and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn environment(dir: &Path, blk: PathBuf) -> Environment {
    Environment {
        blk,
        qemu_img: PathBuf::from("qemu-img"),
        target_dir: dir.to_path_buf(),
        run_timeout: Duration::from_secs(60),
        baseline_blk: None,
    }
}

fn quick() -> CompareOptions {
    let mut args = vec!["--quick".to_string()];
    CompareOptions::extract(&mut args).unwrap()
}

/// A directory on the target's file system (O_DIRECT works there; a tmpfs /tmp would refuse it).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Whether `qemu-img bench -i io_uring -t none` works here (a sandbox may forbid io_uring).
fn qemu_img_has_io_uring(dir: &Path) -> bool {
    let image = dir.join("probe.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let args = [
        "bench", "-f", "raw", "-t", "none", "-i", "io_uring", "-c", "1",
    ];
    std::process::Command::new("qemu-img")
        .args(args)
        .arg(&image)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn quick_suite_runs_every_scenario_and_reports() {
    let dir = scratch();
    if !qemu_img_has_io_uring(dir.path()) {
        eprintln!(
            "qemu-img cannot use io_uring here: the suite's qemu io_uring runs would fail; skipped"
        );
        return;
    }
    // blk's flags are qemu-img's but for --queues, which the stand-in drops.
    let fake_blk = script(
        dir.path(),
        "blk",
        "#!/bin/bash\nargs=()\nwhile (($#)); do\n  if [[ $1 == --queues ]]; then shift 2; continue; fi\n  \
         args+=(\"$1\"); shift\ndone\necho 'backend: stand-in' >&2\nexec qemu-img \"${args[@]}\"\n",
    );
    let env = environment(dir.path(), fake_blk);
    run_suite(&env, &quick(), "cargo xtask bench --suite compare --quick").unwrap();
    let report = std::fs::read_to_string(dir.path().join("bench-compare.md")).unwrap();
    for id in 1..=6 {
        assert!(
            report.contains(&format!("| {id}. ")),
            "scenario {id} in:\n{report}"
        );
    }
    assert!(report.contains("--suite compare --quick"), "{report}");
    assert!(report.contains("qemu-img version"), "{report}");
    assert!(
        report.contains("stand-in"),
        "the backend blk named: {report}"
    );
    assert!(!report.contains("| failed |"), "{report}");
    assert!(!dir.path().join("bench-images").exists(), "images deleted");
}

#[test]
fn failing_runs_are_reported_not_fatal() {
    let dir = scratch();
    let broken = script(
        dir.path(),
        "blk",
        "#!/bin/sh\necho 'blk: no such luck' >&2\nexit 1\n",
    );
    let env = environment(dir.path(), broken);
    let mut args = vec![
        "--quick".to_string(),
        "--scenario".to_string(),
        "5".to_string(),
    ];
    let options = CompareOptions::extract(&mut args).unwrap();
    let err = run_suite(&env, &options, "test").unwrap_err();
    assert!(err.contains("1 bench runs failed"), "{err}");
    let report = std::fs::read_to_string(dir.path().join("bench-compare.md")).unwrap();
    assert!(
        report.contains("| 5 | blk qcow2 | failed | 0 / 1 |"),
        "{report}"
    );
    assert!(report.contains("n/a"), "{report}");
    assert!(!report.contains("| 1. "), "only scenario 5: {report}");
}
