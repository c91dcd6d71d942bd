//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs cargo-fuzz targets for a bounded time each.
//!
//! The targets are the binary targets of the crate at `fuzz/Cargo.toml` (the layout `cargo fuzz init`
//! makes), read with `cargo metadata`. Each runs as `cargo +nightly fuzz run T -- -max_total_time=N`; the
//! first crash stops the run with an error. Without a `fuzz/` directory there is nothing to run, and the
//! command says so and succeeds.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::cmd;

/// Seconds per target when `--seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 60;

/// The names of the binary targets of the fuzz crate at `manifest`, from `cargo metadata --no-deps` JSON.
pub fn targets_from_metadata(metadata_json: &str, manifest: &Path) -> Result<Vec<String>, String> {
    let metadata: Value = serde_json::from_str(metadata_json)
        .map_err(|e| format!("unexpected `cargo metadata` output: {e}"))?;
    let packages = metadata["packages"].as_array().into_iter().flatten();
    let mut names = Vec::new();
    for package in packages {
        let same = package["manifest_path"]
            .as_str()
            .is_some_and(|m| Path::new(m) == manifest);
        if !same {
            continue;
        }
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k.as_str() == Some("bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn parse_args(args: &[String]) -> Result<(u64, Vec<String>), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                let n = it.next().ok_or("--seconds needs a number")?;
                seconds = n
                    .parse()
                    .map_err(|_| format!("--seconds: `{n}` is not a whole number of seconds"))?;
            }
            other if other.starts_with('-') => {
                return Err(format!("unknown fuzz option `{other}`"))
            }
            other => targets.push(other.to_string()),
        }
    }
    Ok((seconds, targets))
}

/// `cargo xtask fuzz`: runs the chosen (default: every) target under `root/fuzz` for `--seconds` each.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (seconds, chosen) = parse_args(args)?;
    let manifest = root.join("fuzz").join("Cargo.toml");
    if !manifest.is_file() {
        println!(
            "no fuzz targets yet: {} does not exist (docs/adding-a-format.md says how to add one)",
            manifest.display()
        );
        return Ok(());
    }
    // cargo metadata reports canonical paths; compare against the same.
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let all = targets_from_metadata(&cmd::cargo_metadata_no_deps(&manifest)?, &manifest)?;
    if all.is_empty() {
        println!(
            "no fuzz targets yet: {} has no binary targets",
            manifest.display()
        );
        return Ok(());
    }
    println!("fuzz targets: {}", all.join(", "));
    let targets = if chosen.is_empty() {
        all
    } else {
        if let Some(unknown) = chosen.iter().find(|t| !all.contains(t)) {
            return Err(format!(
                "no fuzz target `{unknown}` (have: {})",
                all.join(", ")
            ));
        }
        chosen
    };

    let mut probe = Command::new(cmd::rustup_cargo());
    probe
        .args(["+nightly", "fuzz", "--version"])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !probe.status().is_ok_and(|s| s.success()) {
        return Err(
            "cargo-fuzz is not available for the nightly toolchain: install it with `cargo install cargo-fuzz` \
             (builds from crates.io in a few minutes)"
                .to_string(),
        );
    }
    for target in &targets {
        println!();
        println!("==> fuzz {target} for {seconds}s");
        let mut command = Command::new(cmd::rustup_cargo());
        command
            .current_dir(root)
            .args(["+nightly", "fuzz", "run", target.as_str(), "--"])
            .arg(format!("-max_total_time={seconds}"));
        println!("--> {}", cmd::display(&command));
        cmd::run(&mut command).map_err(|e| {
            format!("fuzz target `{target}` failed (crash inputs are under fuzz/artifacts/{target}/): {e}")
        })?;
    }
    println!();
    println!(
        "fuzzing: {} target(s) ran {seconds}s each without a crash",
        targets.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(parse_args(&[]).unwrap(), (DEFAULT_SECONDS, vec![]));
        let args: Vec<String> = ["--seconds", "5", "qcow_open"].map(String::from).to_vec();
        assert_eq!(
            parse_args(&args).unwrap(),
            (5, vec!["qcow_open".to_string()])
        );
        assert!(parse_args(&["--seconds".into()]).is_err());
        assert!(parse_args(&["--seconds".into(), "x".into()]).is_err());
        assert!(parse_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn bin_targets_of_the_fuzz_crate() {
        let json = r#"{"packages": [
            {"manifest_path": "/ws/fuzz/Cargo.toml", "targets": [
                {"name": "raw_read", "kind": ["bin"]},
                {"name": "blk_fuzz", "kind": ["lib"]},
                {"name": "qcow_open", "kind": ["bin"]}
            ]},
            {"manifest_path": "/ws/crates/blk/Cargo.toml", "targets": [{"name": "blk", "kind": ["bin"]}]}
        ]}"#;
        assert_eq!(
            targets_from_metadata(json, Path::new("/ws/fuzz/Cargo.toml")).unwrap(),
            ["qcow_open", "raw_read"]
        );
    }
}
