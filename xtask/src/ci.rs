//! `cargo xtask ci`: everything CI checks, in order, stopping at the first failure.
//!
//! 1. the QEMU tools the tests compare against (`qemu-img`, `qemu-io`, `qemu-nbd`, `qemu-storage-daemon`
//!    10.0.2): installed from bookworm-backports when missing (as root, [`crate::debian`]), so the README's
//!    test command sets up a fresh machine by itself
//! 2. `cargo fmt --all -- --check`
//! 3. `cargo clippy --workspace --all-targets -- -D warnings`
//! 4. `cargo test --workspace` (unit, integration and doc tests; output shown)
//! 5. short reliability campaigns, with fixed seeds: [`crate::crash`] ([`CI_CRASH_ARGS`]: one kill per image
//!    kind) and [`crate::mutate`] ([`CI_MUTATE_ARGS`]: three mutants per base), about 30 s together
//! 6. `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS=-Dwarnings`
//! 7. `blk-factory` built with `--no-default-features`, then with each of its features alone
//! 8. the dependency-direction check ([`crate::deps`])
//! 9. the guest boot test ([`crate::guest`]): a Linux guest under QEMU does I/O through `blk vhost-user-blk`
//!    for every format (installs QEMU and a kernel when missing)
//! 10. the differential parity suite ([`crate::parity`]): every row of `xtask/parity/table.txt` run with
//!     qemu-img/qemu-io and with blk (about 40 s on an idle 2-core machine)
//!
//! All steps share the workspace's target directory, and nothing is cleaned, so a second run only rebuilds
//! what changed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd;

/// The arguments of the crash campaign's short run in CI.
pub const CI_CRASH_ARGS: [&str; 4] = ["--kills", "8", "--seed", "20261207"];
/// The arguments of the mutation campaign's short run in CI.
pub const CI_MUTATE_ARGS: [&str; 4] = ["--mutants", "48", "--seed", "20261207"];

/// The package whose feature matrix step 7 builds.
pub const FACTORY: &str = "blk-factory";

/// What one step does.
#[derive(Debug)]
enum Action {
    /// A cargo command with extra environment variables.
    Cargo {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
    },
    /// Step 1: makes sure `qemu-img` and `qemu-io` are on `PATH`.
    QemuTools,
    /// Step 5: a campaign, run in this process with fixed arguments.
    Campaign {
        run: fn(&Path, &[String]) -> Result<(), String>,
        args: &'static [&'static str],
    },
    /// Step 7: builds `blk-factory` per feature (read from `cargo metadata` when the step starts).
    FactoryFeatures,
    /// Step 8: [`crate::deps::run`].
    Deps,
    /// Step 9: [`crate::guest::run`].
    Guest,
    /// Step 10: [`crate::parity::run`] with no options (the whole table).
    Parity,
}

/// One step of the pipeline.
#[derive(Debug)]
struct Step {
    name: &'static str,
    action: Action,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "qemu tools",
            action: Action::QemuTools,
        },
        Step {
            name: "format",
            action: Action::Cargo {
                args: &["fmt", "--all", "--", "--check"],
                env: &[],
            },
        },
        Step {
            name: "clippy",
            action: Action::Cargo {
                args: &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                env: &[],
            },
        },
        Step {
            name: "test",
            action: Action::Cargo {
                args: &["test", "--workspace"],
                env: &[],
            },
        },
        Step {
            name: "crash campaign (short)",
            action: Action::Campaign {
                run: crate::crash::run,
                args: &CI_CRASH_ARGS,
            },
        },
        Step {
            name: "mutate campaign (short)",
            action: Action::Campaign {
                run: crate::mutate::run,
                args: &CI_MUTATE_ARGS,
            },
        },
        Step {
            name: "doc",
            action: Action::Cargo {
                args: &["doc", "--workspace", "--no-deps"],
                env: &[("RUSTDOCFLAGS", "-Dwarnings")],
            },
        },
        Step {
            name: "blk-factory feature builds",
            action: Action::FactoryFeatures,
        },
        Step {
            name: "dependency direction",
            action: Action::Deps,
        },
        Step {
            name: "guest boot (vhost-user-blk)",
            action: Action::Guest,
        },
        Step {
            name: "parity with qemu-img",
            action: Action::Parity,
        },
    ]
}

/// The names of `package`'s features, `default` excluded, from `cargo metadata` JSON.
pub fn features_of(metadata_json: &str, package: &str) -> Result<Vec<String>, String> {
    let metadata: Value = serde_json::from_str(metadata_json)
        .map_err(|e| format!("unexpected `cargo metadata` output: {e}"))?;
    let found = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(package))
        .ok_or_else(|| format!("package {package} is not in the workspace"))?;
    // serde_json's map is sorted, so the feature order is stable.
    Ok(found["features"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| name.clone())
        .filter(|name| name != "default")
        .collect())
}

/// The feature-matrix builds of `package`: `--no-default-features`, then each feature alone.
pub fn feature_builds(package: &str, features: &[String]) -> Vec<Vec<String>> {
    let base = || {
        vec![
            "build".to_string(),
            "-p".to_string(),
            package.to_string(),
            "--no-default-features".to_string(),
        ]
    };
    let mut builds = vec![base()];
    for feature in features {
        let mut args = base();
        args.push("--features".to_string());
        args.push(feature.clone());
        builds.push(args);
    }
    builds
}

fn run_factory_features(root: &Path) -> Result<(), String> {
    let features = features_of(
        &cmd::cargo_metadata_no_deps(&root.join("Cargo.toml"))?,
        FACTORY,
    )?;
    if features.is_empty() {
        println!("{FACTORY} declares no features besides `default`: building it without default features only");
    }
    for args in feature_builds(FACTORY, &features) {
        let mut command = cmd::cargo_command(root);
        command.args(&args);
        println!("--> {}", cmd::display(&command));
        cmd::run(&mut command)?;
    }
    Ok(())
}

/// The QEMU tools the tests run, and the Debian package that has them (bookworm-backports' 10.0.2).
const QEMU_TOOLS: [&str; 4] = ["qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon"];
const QEMU_PACKAGE: &str = "qemu-utils";
/// The QEMU release the tests compare against (`qemu-img --version` starts with it).
const QEMU_VERSION: &str = "qemu-img version 10.";

fn tool_works(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `qemu-img --version`'s first line, if qemu-img runs.
fn qemu_img_version() -> Option<String> {
    let out = Command::new("qemu-img").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_string)
}

/// Step 1: the QEMU tools on `PATH`, installed from bookworm-backports when missing or older than 10
/// ([`crate::debian`]); bookworm's own 7.2 is never installed.
fn ensure_qemu_tools() -> Result<(), String> {
    let missing: Vec<&str> = QEMU_TOOLS.into_iter().filter(|t| !tool_works(t)).collect();
    let old = qemu_img_version().filter(|v| !v.starts_with(QEMU_VERSION));
    if missing.is_empty() && old.is_none() {
        println!("{} found", QEMU_TOOLS.join(", "));
        return Ok(());
    }
    println!(
        "installing {QEMU_PACKAGE} from {} ({})",
        crate::debian::BACKPORTS,
        match &old {
            Some(version) => format!("found {version}"),
            None => format!("missing: {}", missing.join(", ")),
        }
    );
    crate::debian::install_from_backports(&[QEMU_PACKAGE])?;
    if let Some(tool) = QEMU_TOOLS.into_iter().find(|t| !tool_works(t)) {
        return Err(format!(
            "{tool} is still missing after installing {QEMU_PACKAGE}"
        ));
    }
    match qemu_img_version() {
        Some(v) if v.starts_with(QEMU_VERSION) => {
            println!("{v}");
            Ok(())
        }
        other => Err(format!(
            "the tests need QEMU 10 (bookworm-backports); qemu-img says {other:?}"
        )),
    }
}

fn run_step(root: &Path, step: &Step) -> Result<(), String> {
    match &step.action {
        Action::Cargo { args, env } => {
            let mut command: Command = cmd::cargo_command(root);
            command.args(args.iter());
            for (key, value) in env.iter() {
                let value = match std::env::var(key) {
                    Ok(old) if !old.trim().is_empty() => format!("{old} {value}"),
                    _ => value.to_string(),
                };
                command.env(key, value);
            }
            let shown = env
                .iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>();
            println!("--> {shown}{}", cmd::display(&command));
            cmd::run(&mut command)
        }
        Action::Campaign { run, args } => {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            run(root, &args)
        }
        Action::QemuTools => ensure_qemu_tools(),
        Action::FactoryFeatures => run_factory_features(root),
        Action::Deps => crate::deps::run(root),
        Action::Guest => crate::guest::run(root, &[]),
        Action::Parity => crate::parity::run(root, &[]),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Runs every step in order in the workspace at `root`; the error names the first step that failed.
pub fn run(root: &Path) -> Result<(), String> {
    let steps = steps();
    let total = steps.len();
    let started = Instant::now();
    let mut timings = Vec::with_capacity(total);
    for (i, step) in steps.iter().enumerate() {
        println!();
        println!("==> [{}/{total}] {}", i + 1, step.name);
        let t = Instant::now();
        if let Err(e) = run_step(root, step) {
            println!();
            println!(
                "==> xtask ci: FAILED at step {}/{total} ({}) after {}",
                i + 1,
                step.name,
                secs(started.elapsed())
            );
            return Err(format!("ci step `{}` failed: {e}", step.name));
        }
        timings.push((step.name, t.elapsed()));
    }
    println!();
    println!("==> xtask ci: all {total} steps passed");
    for (name, d) in timings {
        println!("    {:<28} {:>8}", name, secs(d));
    }
    println!("    {:<28} {:>8}", "total", secs(started.elapsed()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_skip_default_and_may_be_empty() {
        let json = r#"{"packages": [
            {"name": "blk-factory", "features": {"default": ["raw"], "raw": [], "qcow": ["dep:blk-qcow"]}},
            {"name": "blk-core", "features": {}}
        ]}"#;
        assert_eq!(features_of(json, "blk-factory").unwrap(), ["qcow", "raw"]);
        assert!(features_of(json, "blk-core").unwrap().is_empty());
        assert!(features_of(json, "blk-missing").is_err());
        let only_default =
            r#"{"packages": [{"name": "blk-factory", "features": {"default": []}}]}"#;
        assert!(features_of(only_default, "blk-factory").unwrap().is_empty());
    }

    #[test]
    fn feature_matrix() {
        assert_eq!(
            feature_builds("blk-factory", &[]),
            vec![vec!["build", "-p", "blk-factory", "--no-default-features"]]
        );
        let builds = feature_builds("blk-factory", &["qcow".into(), "uring".into()]);
        assert_eq!(builds.len(), 3);
        assert_eq!(
            builds[2],
            [
                "build",
                "-p",
                "blk-factory",
                "--no-default-features",
                "--features",
                "uring"
            ]
        );
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let names: Vec<&str> = steps().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "qemu tools",
                "format",
                "clippy",
                "test",
                "crash campaign (short)",
                "mutate campaign (short)",
                "doc",
                "blk-factory feature builds",
                "dependency direction",
                "guest boot (vhost-user-blk)",
                "parity with qemu-img"
            ]
        );
    }
}
