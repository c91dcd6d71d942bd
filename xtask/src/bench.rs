//! `cargo xtask bench`: runs the benchmark suites and says where their results are.
//!
//! A suite is one way of measuring (see `docs/performance.md`). Today there is one:
//!
//! - [`Suite::Criterion`]: the criterion micro-benchmarks of `blk-benches` (hot paths of `blk-core` and
//!   `blk-raw`), results under `<target>/criterion/`.
//!
//! The comparison against QEMU belongs here as a second suite once the `blk` CLI has a `bench` subcommand
//! mirroring `qemu-img bench`: it will run `qemu-img bench` and `blk bench` on the same images, alternating the
//! contenders within one run, and report ratios (timings on this hardware vary by about 30% between runs, so
//! only ratios measured in one run are meaningful). Add it as a variant of [`Suite`] with its own `run`
//! arm; nothing is measured or printed for it until then.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cmd;

/// The package holding the criterion benchmarks.
pub const BENCH_PACKAGE: &str = "blk-benches";

/// One benchmark suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// `cargo bench -p blk-benches`: criterion micro-benchmarks.
    Criterion,
}

impl Suite {
    /// Every suite, in the order `cargo xtask bench` runs them.
    pub const ALL: &'static [Suite] = &[Suite::Criterion];

    /// The suite's name, as `--suite` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Criterion => "criterion",
        }
    }

    /// The suite named `name`.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Runs the suite in the workspace at `root`; `args` go to the benchmark harness (for criterion: a name
    /// filter, `--save-baseline NAME`, `--baseline NAME`, ...).
    pub fn run(self, root: &Path, args: &[String]) -> Result<(), String> {
        match self {
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
    let mut suites = Vec::new();
    let mut harness_args = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--suite" => {
                let name = it.next().ok_or("--suite needs a suite name")?;
                let suite = Suite::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown suite `{name}` (known: {})", known.join(", "))
                })?;
                suites.push(suite);
            }
            "--" => harness_args.extend(it.by_ref().cloned()),
            other => harness_args.push(other.to_string()),
        }
    }
    if suites.is_empty() {
        suites.extend_from_slice(Suite::ALL);
    }
    for suite in suites {
        println!("==> bench suite: {}", suite.name());
        suite.run(root, &harness_args)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_by_name() {
        assert_eq!(Suite::from_name("criterion"), Some(Suite::Criterion));
        assert_eq!(Suite::from_name("qemu"), None);
        assert!(run(Path::new("."), &["--suite".into(), "nope".into()]).is_err());
    }
}
