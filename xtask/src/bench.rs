//! `cargo xtask bench`: runs the benchmark suites and says where their results are.
//!
//! A suite is one way of measuring (see `docs/performance.md`). There are two, run in this order by default:
//!
//! - [`Suite::Criterion`]: the criterion micro-benchmarks of `blk-benches` (hot paths of `blk-core`,
//!   `blk-raw`, `blk-qcow` and the async queues), results under `<target>/criterion/`.
//! - [`Suite::Compare`]: `blk bench` against `qemu-img bench` on the same 1 GiB images, alternating the
//!   contenders within one run, medians and speed ratios against issue 7's targets (timings on this hardware
//!   vary by about 30% between runs, so only ratios measured in one run are meaningful); see
//!   [`bench_compare`]. Its options: `--runs N` (5), `--quick` (tiny images and counts,
//!   one run: a smoke test), `--scenario K` (repeatable), `--baseline-blk PATH` (an older `blk` binary run
//!   beside every blk contender, alternating with it, with a check that the current build is at most 5%
//!   slower).
//! - [`Suite::VhostUser`] (run only when named: `--suite vhost-user`): blk's vhost-user-blk backend against
//!   qemu-storage-daemon's export, one libblkio client for both; see [`bench_vhost_user`](crate::bench_vhost_user).
//! - [`Suite::Scaling`] (run only when named: `--suite scaling`): `blk bench --queues 1|2|4|8` on one image
//!   for QCOW2, VHD, VHDX and raw, page-cache 4 KiB reads and writes; see [`bench_scaling`](crate::bench_scaling).
//! - [`Suite::Tmpfs`] (run only when named: `--suite tmpfs`): blk bench vs qemu-img bench with O_DIRECT on
//!   images in `/dev/shm`, and CPU per request on the disk; see [`bench_tmpfs`](crate::bench_tmpfs).
//! - [`Suite::VhdVhdx`] (run only when named: `--suite vhd-vhdx`): dynamic VHD page-cache reads against the raw
//!   file, and allocating O_DIRECT writes into empty VHD and VHDX images against qemu-img bench and against the
//!   same writes into a raw file; see [`bench_vhd_vhdx`](crate::bench_vhd_vhdx).
//!
//! The scaling, tmpfs and VHD/VHDX suites take the comparison suite's `--runs N`, `--quick` and `--scenario K`, and report
//! IOPS and CPU time per request beside every median, as the comparison suite does.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bench_compare::{self, CompareOptions, Environment};
use crate::cmd;

/// The package holding the criterion benchmarks.
pub const BENCH_PACKAGE: &str = "blk-benches";

/// One benchmark suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// `cargo bench -p blk-benches`: criterion micro-benchmarks.
    Criterion,
    /// `blk bench` vs `qemu-img bench` on the same images: speed ratios.
    Compare,
    /// `blk vhost-user-blk` vs qemu-storage-daemon's export, one libblkio client (only when named).
    VhostUser,
    /// `blk bench --queues 1|2|4|8` on one image, page cache (only when named).
    Scaling,
    /// blk bench vs qemu-img bench, O_DIRECT on a tmpfs (only when named).
    Tmpfs,
    /// VHD and VHDX: page-cache reads vs raw, allocating writes vs qemu-img bench (only when named).
    VhdVhdx,
}

impl Suite {
    /// Every suite, in the order `cargo xtask bench` runs them.
    pub const ALL: &'static [Suite] = &[Suite::Criterion, Suite::Compare];
    /// Every suite `--suite` knows.
    pub const KNOWN: &'static [Suite] = &[
        Suite::Criterion,
        Suite::Compare,
        Suite::VhostUser,
        Suite::Scaling,
        Suite::Tmpfs,
        Suite::VhdVhdx,
    ];

    /// The suite's name, as `--suite` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Criterion => "criterion",
            Suite::Compare => "compare",
            Suite::VhostUser => "vhost-user",
            Suite::Scaling => "scaling",
            Suite::Tmpfs => "tmpfs",
            Suite::VhdVhdx => "vhd-vhdx",
        }
    }

    /// The suite named `name`.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::KNOWN.iter().copied().find(|s| s.name() == name)
    }

    /// Runs the suite in the workspace at `root`; `args` go to the benchmark harness (for criterion: a name
    /// filter, `--save-baseline NAME`, `--baseline NAME`, ...); `compare` configures the comparison suite,
    /// and `command_line` is how the user ran xtask (recorded in its report).
    pub fn run(
        self,
        root: &Path,
        args: &[String],
        compare: &CompareOptions,
        command_line: &str,
    ) -> Result<(), String> {
        match self {
            Suite::VhostUser => {
                let target = target_dir(root)?;
                let blk = build_release_blk(root, &target)?;
                let mut command = cmd::cargo_command(root);
                command.args([
                    "build",
                    "--release",
                    "-p",
                    BENCH_PACKAGE,
                    "--bin",
                    "blkio-client",
                ]);
                println!("--> {}", cmd::display(&command));
                cmd::run(&mut command)?;
                let env = crate::bench_vhost_user::VhostBenchEnv::new(
                    blk,
                    target.join("release").join("blkio-client"),
                    target.join("bench-vhost-user"),
                    5.0,
                );
                crate::bench_vhost_user::run_suite(&env)
            }
            Suite::Compare => {
                bench_compare::run_suite(&bench_environment(root, compare)?, compare, command_line)
            }
            Suite::Scaling => crate::bench_scaling::run_suite(
                &bench_environment(root, compare)?,
                compare,
                command_line,
            ),
            Suite::Tmpfs => crate::bench_tmpfs::run_suite(
                &bench_environment(root, compare)?,
                compare,
                command_line,
                Path::new(crate::bench_tmpfs::DEFAULT_TMPFS),
            ),
            Suite::VhdVhdx => crate::bench_vhd_vhdx::run_suite(
                &bench_environment(root, compare)?,
                compare,
                command_line,
            ),
            Suite::Criterion => {
                let mut command = cmd::cargo_command(root);
                command.args(["bench", "-p", BENCH_PACKAGE]);
                if !args.is_empty() {
                    command.arg("--").args(args);
                }
                println!("--> {}", cmd::display(&command));
                cmd::run(&mut command)?;
                let results = target_dir(root)?.join("criterion");
                println!();
                println!("criterion results: {}", results.display());
                println!(
                    "  per benchmark: <group>/<bench>/new/estimates.json (this run), base/ (the previous run)"
                );
                println!(
                    "  compare runs: cargo xtask bench -- --save-baseline before; ...; cargo xtask bench -- --baseline before"
                );
                Ok(())
            }
        }
    }
}

/// The `blk bench` suites' environment: a release build of `blk`, `qemu-img` from `PATH`, the target directory.
fn bench_environment(root: &Path, compare: &CompareOptions) -> Result<Environment, String> {
    let target = target_dir(root)?;
    let blk = build_release_blk(root, &target)?;
    Ok(Environment {
        blk,
        qemu_img: PathBuf::from("qemu-img"),
        target_dir: target,
        run_timeout: std::time::Duration::from_secs(120),
        baseline_blk: compare.baseline_blk.clone(),
    })
}

/// Builds `blk` in release mode with its default features (every format and backend) and returns the binary's
/// path.
fn build_release_blk(root: &Path, target: &Path) -> Result<PathBuf, String> {
    let mut command = cmd::cargo_command(root);
    command.args(["build", "--release", "-p", "blk"]);
    println!("--> {}", cmd::display(&command));
    cmd::run(&mut command)?;
    Ok(target.join("release").join("blk"))
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR` and `.cargo/config.toml`).
fn target_dir(root: &Path) -> Result<PathBuf, String> {
    let json = cmd::cargo_metadata_no_deps(&root.join("Cargo.toml"))?;
    let metadata: Value = serde_json::from_str(&json)
        .map_err(|e| format!("unexpected `cargo metadata` output: {e}"))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "`cargo metadata` printed no target_directory".to_string())
}

/// `cargo xtask bench [--suite NAME] [-- ARGS...]`: runs the chosen suite (default: all of them).
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let command_line = format!("cargo xtask bench {}", args.join(" "));
    let command_line = command_line.trim_end();
    let mut suites = Vec::new();
    let mut harness_args = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--suite" => {
                let name = it.next().ok_or("--suite needs a suite name")?;
                let suite = Suite::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = Suite::KNOWN.iter().map(|s| s.name()).collect();
                    format!("unknown suite `{name}` (known: {})", known.join(", "))
                })?;
                suites.push(suite);
            }
            "--" => harness_args.extend(it.by_ref().cloned()),
            other => harness_args.push(other.to_string()),
        }
    }
    let compare = CompareOptions::extract(&mut harness_args)?;
    if suites.is_empty() {
        suites.extend_from_slice(Suite::ALL);
    }
    for suite in suites {
        println!("==> bench suite: {}", suite.name());
        suite.run(root, &harness_args, &compare, command_line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_by_name() {
        assert_eq!(Suite::from_name("criterion"), Some(Suite::Criterion));
        assert_eq!(Suite::from_name("compare"), Some(Suite::Compare));
        assert_eq!(Suite::from_name("vhost-user"), Some(Suite::VhostUser));
        assert_eq!(Suite::from_name("scaling"), Some(Suite::Scaling));
        assert_eq!(Suite::from_name("tmpfs"), Some(Suite::Tmpfs));
        assert_eq!(Suite::from_name("vhd-vhdx"), Some(Suite::VhdVhdx));
        assert_eq!(Suite::from_name("qemu"), None);
        assert!(run(Path::new("."), &["--suite".into(), "nope".into()]).is_err());
    }
}
