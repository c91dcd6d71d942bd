//! `cargo xtask`: the blk workspace's task runner (see the `xtask` library docs for each command).

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  ci                          what CI runs: fmt, clippy, tests, docs, blk-factory feature builds,
                              dependency-direction check, parity suite; stops at the first failure
  deps                        the dependency-direction check alone
  bench [--suite NAME] [--runs N] [--quick] [--scenario K] [-- ARGS]
                              benchmark suites: criterion (`cargo bench -p blk-benches`; ARGS go to
                              the harness, e.g. a name filter or `--save-baseline before`), then
                              compare (blk bench vs qemu-img bench on 1 GiB images: medians of
                              --runs N runs (5), ratios; --quick: a smoke test; --scenario K: one of 1-6)
  fuzz [--seconds N] [TARGET...]
                              runs every (or each named) fuzz/ target for N seconds (default 60)
  parity [--filter STR] [--verbose] [--keep] [--jobs N] [--blk PATH]
                              the differential parity suite: every row of xtask/parity/table.txt run
                              with qemu-img/qemu-io and with blk on twin images, compared; fails on
                              any difference not documented in xtask/parity/differences.txt
  help                        this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = xtask::cmd::workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => xtask::ci::run(&root),
        Some("deps") if args.len() == 1 => xtask::deps::run(&root),
        Some("bench") => xtask::bench::run(&root, &args[1..]),
        Some("fuzz") => xtask::fuzz::run(&root, &args[1..]),
        Some("parity") => xtask::parity::run(&root, &args[1..]),
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
