//! `cargo xtask guest [--format F]... [--timeout SECONDS]`: a real Linux guest does I/O through
//! `blk vhost-user-blk`.
//!
//! QEMU (`qemu-system-x86_64 -accel tcg -smp 2`, `memory-backend-memfd,share=on`, `vhost-user-blk-pci` with 2
//! queues) boots a Debian cloud kernel with a busybox initramfs whose `/init` checks that `/sys/block/vda/mq`
//! lists 2 queues, hashes the whole disk (compared with `qemu-img convert` of the image), writes patterns,
//! discards, flushes and reads the patterns back. Afterwards the image checks clean (`qemu-img check`; blk's
//! check for VHD and raw), qemu-io reads the patterns back, and the same guest against qemu-storage-daemon's
//! export (`discard=unmap`) of a twin image leaves the same bytes outside the discarded ranges. QCOW2 (on a
//! backing file), VHD, VHDX and raw.
//!
//! | module | what it holds |
//! |---|---|
//! | [`install`] | the host packages (QEMU from bookworm-backports, busybox, cpio) and the cached kernel |
//! | [`initramfs`] | the `/init` script and the cpio archive, cached by content |
//! | [`plan`] | the guest's writes and discards |
//! | [`mod@run`] | one format: images, both servers, the boots and the checks |
//!
//! Downloads and the initramfs are cached under `<target>/guest/`, so a rerun only boots.

pub mod initramfs;
pub mod install;
pub mod plan;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd;
use run::{GuestEnv, GuestFormat};

/// Seconds one boot may take by default (TCG on a busy 2-core machine).
pub const DEFAULT_TIMEOUT: u64 = 300;

/// The cargo target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn parse_args(args: &[String]) -> Result<(Vec<GuestFormat>, u64), String> {
    let mut formats = Vec::new();
    let mut timeout = DEFAULT_TIMEOUT;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--format" => {
                let name = it.next().ok_or("--format needs a format name")?;
                formats.push(
                    GuestFormat::parse(name).ok_or_else(|| {
                        format!("unknown format `{name}` (qcow2, vpc, vhdx, raw)")
                    })?,
                );
            }
            "--timeout" => {
                let n = it.next().ok_or("--timeout needs seconds")?;
                timeout = n
                    .parse()
                    .map_err(|_| format!("--timeout: `{n}` is not a number"))?;
            }
            other => return Err(format!("unknown guest option `{other}`")),
        }
    }
    if formats.is_empty() {
        formats = GuestFormat::ALL.to_vec();
    }
    Ok((formats, timeout))
}

/// `cargo xtask guest`: installs what is missing, builds `blk`, and runs the guest test per format.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (formats, timeout) = parse_args(args)?;
    let target = target_dir(root);
    let cache = target.join("guest");
    let kernel = install::ensure(&cache.join("kernel"))?;
    let plan = plan::GuestPlan::for_size(64 << 20);
    let initrd = initramfs::build(&cache, &kernel, &plan)?;
    let mut build = cmd::cargo_command(root);
    build.args(["build", "-q", "-p", "blk"]);
    println!("--> {}", cmd::display(&build));
    cmd::run(&mut build)?;
    let env = GuestEnv {
        blk: target.join("debug").join("blk"),
        vmlinuz: kernel.vmlinuz.clone(),
        initrd,
        dir: cache.join("runs"),
        timeout: Duration::from_secs(timeout),
    };
    for format in formats {
        run::run_format(&env, format)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let (f, t) = parse_args(&[]).unwrap();
        assert_eq!((f.len(), t), (4, DEFAULT_TIMEOUT));
        let args: Vec<String> = ["--format", "vhd", "--timeout", "9"]
            .map(String::from)
            .to_vec();
        assert_eq!(parse_args(&args).unwrap(), (vec![GuestFormat::Vpc], 9));
        assert!(parse_args(&["--format".into(), "nope".into()]).is_err());
    }
}
