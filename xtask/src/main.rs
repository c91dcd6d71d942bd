//! `cargo xtask`: the blk workspace's task runner (see the `xtask` library docs for each command).

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  ci                          what CI runs: fmt, clippy, tests, short crash and mutate campaigns, docs,
                              blk-factory feature builds, dependency-direction check, guest boot test;
                              stops at the first failure
  deps                        the dependency-direction check alone
  bench [--suite NAME] [--runs N] [--quick] [--scenario K] [-- ARGS]
                              benchmark suites: criterion (`cargo bench -p blk-benches`; ARGS go to
                              the harness, e.g. a name filter or `--save-baseline before`), then
                              compare (blk bench vs qemu-img bench on 1 GiB images: medians of
                              --runs N runs (5), ratios; --quick: a smoke test; --scenario K: one of 1-6);
                              --suite vhost-user: blk vhost-user-blk vs qemu-storage-daemon, libblkio client
  fuzz [--seconds N] [TARGET...]
                              runs every (or each named) fuzz/ target for N seconds (default 60)
  crash [--kills N] [--seed S] [--only IMAGE] [--release]
                              kills a writer (SIGKILL) at random points while it writes, discards,
                              flushes and grows images (N kills, default 300), then checks each image
                              with qemu-img and blk and reads every flushed write back
  mutate [--mutants N] [--seed S] [--only BASE] [--mutant I] [--release]
                              seeded mutants of qemu-img-made images (N, default 2000) through blk's
                              writable and read-only commands under a memory cap and a timeout
                              (--release: a release build of blk, for long runs; see docs/reliability.md)
  guest [--format F]... [--timeout S]
                              a Linux guest (QEMU, TCG) does I/O through `blk vhost-user-blk` and
                              qemu-storage-daemon's export, for qcow2, vpc, vhdx and raw; installs
                              QEMU and a kernel when missing (root)
  help                        this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = xtask::cmd::workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => xtask::ci::run(&root),
        Some("deps") if args.len() == 1 => xtask::deps::run(&root),
        Some("bench") => xtask::bench::run(&root, &args[1..]),
        Some("fuzz") => xtask::fuzz::run(&root, &args[1..]),
        Some("crash") => xtask::crash::run(&root, &args[1..]),
        Some("mutate") => xtask::mutate::run(&root, &args[1..]),
        // The crash campaign's child processes (not for people: see `xtask::crash::worker`).
        Some("crash-worker") => xtask::crash::worker::run(&args[1..]),
        Some("guest") => xtask::guest::run(&root, &args[1..]),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(_) => Err(format!(
            "unknown command or arguments: `{}`\n\n{USAGE}",
            args.join(" ")
        )),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
