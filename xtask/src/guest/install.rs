//! What the guest test needs on the host, installed when missing: `qemu-system-x86_64` from
//! bookworm-backports (Debian's own 7.2 would replace qemu-utils 10.0.2), busybox-static, cpio and xz, and a
//! Debian cloud kernel (extracted with `dpkg-deb`, cached under the target directory with its `virtio_blk`
//! module decompressed).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::debian::{apt_install, program_exists, with_backports, BACKPORTS};

/// The host packages, each with a program that shows it is there.
const HOST_PACKAGES: [(&str, &str); 4] = [
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
    ("xz-utils", "xz"),
];
/// The meta package naming the current cloud kernel.
const KERNEL_META: &str = "linux-image-6.12-cloud-amd64";

/// The kernel and module the initramfs needs.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `boot/vmlinuz-*`.
    pub vmlinuz: PathBuf,
    /// `virtio_blk.ko`, decompressed.
    pub virtio_blk: PathBuf,
    /// The package it came from.
    pub package: String,
}

fn kernel_cached(dir: &Path) -> Option<Kernel> {
    let package = std::fs::read_to_string(dir.join("package")).ok()?;
    let kernel = Kernel {
        vmlinuz: dir.join("vmlinuz"),
        virtio_blk: dir.join("virtio_blk.ko"),
        package: package.trim().to_string(),
    };
    (kernel.vmlinuz.is_file() && kernel.virtio_blk.is_file()).then_some(kernel)
}

fn download_kernel(dir: &Path) -> Result<(), String> {
    let depends = cmd::output(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6.12.") && p.ends_with("-cloud-amd64"))
        .ok_or_else(|| format!("{KERNEL_META} names no kernel package:\n{depends}"))?
        .to_string();
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| format!("{}: {e}", download.display()))?;
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", "-t", BACKPORTS, &package])
            .current_dir(&download),
    )?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let tree = download.join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let find = |dir: &Path, pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).ok()?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
                    return Some(path);
                }
            }
        }
        None
    };
    let vmlinuz = find(&tree.join("boot"), &|n| n.starts_with("vmlinuz-"))
        .ok_or("the kernel package has no boot/vmlinuz-*")?;
    let module = find(&tree.join("lib/modules"), &|n| {
        n.starts_with("virtio_blk.ko")
    })
    .or_else(|| {
        find(&tree.join("usr/lib/modules"), &|n| {
            n.starts_with("virtio_blk.ko")
        })
    })
    .ok_or("the kernel package has no virtio_blk module")?;
    std::fs::copy(&vmlinuz, dir.join("vmlinuz")).map_err(|e| e.to_string())?;
    if module.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&module)
            .output()
            .map_err(|e| format!("xz: {e}"))?;
        if !out.status.success() {
            return Err(format!("xz -dc {} failed", module.display()));
        }
        std::fs::write(dir.join("virtio_blk.ko"), out.stdout).map_err(|e| e.to_string())?;
    } else {
        std::fs::copy(&module, dir.join("virtio_blk.ko")).map_err(|e| e.to_string())?;
    }
    std::fs::write(dir.join("package"), &package).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}

/// Makes sure the host programs are installed and a kernel is cached in `dir`; installs and downloads what is
/// missing (needs root and apt-get).
pub fn ensure(dir: &Path) -> Result<Kernel, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(_, program)| !program_exists(program))
        .map(|(package, _)| *package)
        .collect();
    let cached = kernel_cached(dir);
    if missing.is_empty() {
        if let Some(kernel) = cached {
            return Ok(kernel);
        }
    }
    if !program_exists("apt-get") {
        return Err(format!(
            "missing {missing:?} or a cached kernel, and no apt-get to install them"
        ));
    }
    println!(
        "guest: installing {} from {BACKPORTS}{}",
        if missing.is_empty() {
            "nothing".to_string()
        } else {
            missing.join(" ")
        },
        if cached.is_none() {
            ", downloading a cloud kernel"
        } else {
            ""
        }
    );
    with_backports(|| {
        if !missing.is_empty() {
            apt_install(&missing)?;
        }
        if kernel_cached(dir).is_none() {
            download_kernel(dir)?;
        }
        Ok(())
    })?;
    kernel_cached(dir).ok_or_else(|| "the kernel is still missing after the download".to_string())
}
