//! The comparison suite end to end in `--quick` mode (64 MiB images, tiny counts, one run), with a stand-in
//! for `blk` that forwards to `qemu-img bench` (so the test needs no release build of blk): every scenario
//! runs, the report is written, the images are deleted, and failing runs are reported instead of panicking.

mod bench_stand_in;

use bench_stand_in::{environment, qemu_img_has_io_uring, scratch, script, stand_in_blk};
use xtask::bench_compare::{run_suite, CompareOptions};

fn quick() -> CompareOptions {
    let mut args = vec!["--quick".to_string()];
    CompareOptions::extract(&mut args).unwrap()
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
    let env = environment(dir.path(), stand_in_blk(dir.path()));
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
        report.contains("| 5 | blk qcow2 | failed | - | - | 0 / 1 |"),
        "{report}"
    );
    assert!(report.contains("n/a"), "{report}");
    assert!(!report.contains("| 1. "), "only scenario 5: {report}");
}
