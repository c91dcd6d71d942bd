//! Running cargo and other programs: where the workspace is, which cargo to call, and turning exit statuses
//! into error messages.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The root of the workspace xtask belongs to (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // xtask/ sits directly under the workspace root.
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The cargo that runs xtask (`$CARGO`, set by `cargo run` and `cargo test`), else `cargo` from `PATH`.
///
/// Use [`rustup_cargo`] instead for `cargo +toolchain ...`: `$CARGO` is the toolchain's own binary, which does
/// not understand `+toolchain`.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// `cargo` from `PATH` (the rustup proxy), for commands that select a toolchain with `+nightly`.
pub fn rustup_cargo() -> OsString {
    OsString::from("cargo")
}

/// A cargo command run in `dir`.
pub fn cargo_command(dir: &Path) -> Command {
    let mut command = Command::new(cargo());
    command.current_dir(dir);
    command
}

/// How a command is shown in messages: the program's file name (`cargo`, not the toolchain's full path) and
/// the arguments, space-separated.
pub fn display(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let mut text = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` with the terminal's stdin/stdout/stderr and fails unless it exits with status 0.
pub fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("could not start `{}`: {e}", display(command)))?;
    check_status(command, status)
}

/// Runs `command` capturing its stdout (stderr goes to the terminal); fails unless it exits with status 0.
pub fn output(command: &mut Command) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", display(command)))?;
    check_status(command, out.status)?;
    String::from_utf8(out.stdout)
        .map_err(|_| format!("`{}` printed something that is not UTF-8", display(command)))
}

fn check_status(command: &Command, status: ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", display(command)))
    }
}

/// Runs `cargo metadata --format-version 1 --no-deps` on `manifest_path` and returns its JSON.
///
/// `--no-deps` lists the workspace members with their *declared* dependencies (all kinds, optional ones
/// included) without resolving anything, so it needs neither the network nor a lock file; `--offline` makes
/// sure it never tries.
pub fn cargo_metadata_no_deps(manifest_path: &Path) -> Result<String, String> {
    let dir = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    let mut command = cargo_command(dir);
    command
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(manifest_path);
    output(&mut command)
}
