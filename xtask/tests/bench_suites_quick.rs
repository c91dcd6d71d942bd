//! The scaling, tmpfs and VHD/VHDX suites end to end in `--quick` mode (64 MiB images, tiny counts, one run), with the
//! stand-in `blk` of `bench_stand_in` (qemu-img bench, `--queues` dropped): every scenario runs, the report has
//! IOPS and CPU time per request beside every median, and the images are deleted.

mod bench_stand_in;

use std::path::Path;

use bench_stand_in::{environment, qemu_img_has_io_uring, scratch, stand_in_blk};
use xtask::bench_compare::CompareOptions;

fn quick() -> CompareOptions {
    let mut args = vec!["--quick".to_string()];
    CompareOptions::extract(&mut args).unwrap()
}

/// Every scenario `1..=count` has a ratio row in `report`, every contender row has IOPS and CPU figures, and
/// nothing failed.
fn assert_complete(report: &str, count: u32) {
    for id in 1..=count {
        assert!(
            report.contains(&format!("| {id}. ")),
            "scenario {id} in:\n{report}"
        );
    }
    assert!(report.contains("CPU/request (us)"), "{report}");
    for row in report.lines().filter(|l| l.contains("| 1 / 0 |")) {
        // | id | contender | median | IOPS | CPU/request | ...
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells[4].parse::<f64>().is_ok() && cells[5].parse::<f64>().is_ok(),
            "{row}"
        );
    }
    assert!(!report.contains("| failed |"), "{report}");
}

#[test]
fn quick_scaling_suite_runs_every_format_and_queue_count() {
    let dir = scratch();
    if !qemu_img_has_io_uring(dir.path()) {
        eprintln!("qemu-img cannot use io_uring here: the suite's runs would fail; skipped");
        return;
    }
    let env = environment(dir.path(), stand_in_blk(dir.path()));
    xtask::bench_scaling::run_suite(&env, &quick(), "cargo xtask bench --suite scaling --quick")
        .unwrap();
    let report = std::fs::read_to_string(dir.path().join("bench-scaling.md")).unwrap();
    assert_complete(&report, 8);
    assert!(report.contains("8 queues vs 2 queues"), "{report}");
    assert!(report.contains("--queues 8"), "{report}");
    assert!(!dir.path().join("bench-images").exists(), "images deleted");
}

#[test]
fn quick_tmpfs_suite_runs_on_the_tmpfs_and_the_disk() {
    let shm = Path::new(xtask::bench_tmpfs::DEFAULT_TMPFS);
    if !xtask::bench_tmpfs::is_tmpfs(shm).unwrap_or(false) {
        eprintln!("{} is not a tmpfs here; skipped", shm.display());
        return;
    }
    let dir = scratch();
    if !qemu_img_has_io_uring(dir.path()) {
        eprintln!("qemu-img cannot use io_uring here: the suite's runs would fail; skipped");
        return;
    }
    let env = environment(dir.path(), stand_in_blk(dir.path()));
    xtask::bench_tmpfs::run_suite(
        &env,
        &quick(),
        "cargo xtask bench --suite tmpfs --quick",
        shm,
    )
    .unwrap();
    let report = std::fs::read_to_string(dir.path().join("bench-tmpfs.md")).unwrap();
    assert_complete(&report, 3);
    assert!(report.contains("<= 0.70x"), "the CPU target: {report}");
    assert!(
        !dir.path().join("bench-images").exists(),
        "disk images deleted"
    );
    let leftover = std::fs::read_dir(shm)
        .unwrap()
        .flatten()
        .any(|e| e.file_name() == format!("blk-bench-{}", std::process::id()).as_str());
    assert!(!leftover, "tmpfs images deleted");
}

#[test]
fn quick_vhd_vhdx_suite_runs_reads_and_allocating_writes() {
    let dir = scratch();
    if !qemu_img_has_io_uring(dir.path()) {
        eprintln!("qemu-img cannot use io_uring here: the suite's runs would fail; skipped");
        return;
    }
    let env = environment(dir.path(), stand_in_blk(dir.path()));
    xtask::bench_vhd_vhdx::run_suite(&env, &quick(), "cargo xtask bench --suite vhd-vhdx --quick")
        .unwrap();
    let report = std::fs::read_to_string(dir.path().join("bench-vhd-vhdx.md")).unwrap();
    assert_complete(&report, 3);
    assert!(report.contains("blk vhd vs blk raw"), "{report}");
    assert!(report.contains("blk vhdx vs qemu"), "{report}");
    assert!(report.contains("the disk's floor"), "{report}");
    assert!(report.contains("empty.vhdx"), "{report}");
    assert!(!dir.path().join("bench-images").exists(), "images deleted");
}

#[test]
fn a_missing_tmpfs_is_an_error() {
    let dir = scratch();
    let env = environment(dir.path(), stand_in_blk(dir.path()));
    let err = xtask::bench_tmpfs::run_suite(&env, &quick(), "test", dir.path()).unwrap_err();
    assert!(err.contains("is not a tmpfs"), "{err}");
}
