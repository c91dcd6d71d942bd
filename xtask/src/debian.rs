//! Installing Debian packages from bookworm-backports, the one place the tooling does it.
//!
//! The tests compare against QEMU 10.0.2, which bookworm ships only in bookworm-backports; bookworm's own
//! QEMU is 7.2, whose output and features differ (and whose `qemu-system-x86` would even replace qemu-utils
//! 10.0.2). So every install goes through [`install_from_backports`]: a sources file naming the machine's own
//! Debian mirror's backports suite is added, the packages are installed from it without recommends, and the
//! file is removed again, whatever happened, so later apt runs see the machine as it was.

use std::process::Command;

use crate::cmd;

/// The suite QEMU 10 and the 6.12 kernels come from.
pub const BACKPORTS: &str = "bookworm-backports";
/// The sources file added for an install and removed after it.
const SOURCES_FILE: &str = "/etc/apt/sources.list.d/blk-backports.list";

/// Whether `program` is on `PATH`.
pub fn program_exists(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (apt-get needs it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The Debian mirror the machine already uses (the `URIs:` line of debian.sources, else deb.debian.org).
fn debian_mirror() -> String {
    let sources =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|uri| !uri.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// Runs `body` with bookworm-backports enabled (and apt's lists updated), removing the sources file
/// afterwards whatever happens.
pub fn with_backports<T>(body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    if !is_root() || !program_exists("apt-get") {
        return Err(format!(
            "installing from {BACKPORTS} needs root and apt-get: install what is missing by hand"
        ));
    }
    std::fs::write(
        SOURCES_FILE,
        format!("deb {} {BACKPORTS} main\n", debian_mirror()),
    )
    .map_err(|e| format!("cannot write {SOURCES_FILE}: {e}"))?;
    let result = cmd::run(Command::new("apt-get").args(["update", "-q"])).and_then(|()| body());
    let removed = std::fs::remove_file(SOURCES_FILE);
    let refreshed = cmd::run(Command::new("apt-get").args(["update", "-q"]));
    let value = result?;
    removed.map_err(|e| format!("cannot remove {SOURCES_FILE}: {e}"))?;
    refreshed?;
    Ok(value)
}

/// Installs `packages` from bookworm-backports; call it inside [`with_backports`].
pub fn apt_install(packages: &[&str]) -> Result<(), String> {
    cmd::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-t",
                BACKPORTS,
            ])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs `packages` from bookworm-backports (sources file added and removed around it).
pub fn install_from_backports(packages: &[&str]) -> Result<(), String> {
    with_backports(|| apt_install(packages))
}
