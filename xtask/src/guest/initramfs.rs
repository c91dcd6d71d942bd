//! The guest's initramfs: busybox, the `virtio_blk` module and an `/init` that does the test's I/O on `/dev/vda`
//! and prints `BLKTEST` lines on the serial console. Built with cpio + gzip, cached by the content of its
//! parts.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::install::Kernel;
use super::plan::GuestPlan;

/// The `/init` script: the plan's writes and discard, with checks the host compares.
pub fn init_script(plan: &GuestPlan) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         insmod /virtio_blk.ko\n\
         i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo \"BLKTEST mq $(ls /sys/block/vda/mq | wc -l)\"\n\
         echo \"BLKTEST sectors $(cat /sys/block/vda/size)\"\n\
         echo \"BLKTEST sha256 $(sha256sum /dev/vda | cut -d' ' -f1)\"\n",
    );
    for w in &plan.writes {
        // `bs` = the write's length, one block at `seek` blocks: offsets are multiples of their lengths.
        s.push_str(&format!(
            "dd if=/dev/zero bs={len} count=1 2>/dev/null | tr '\\000' '\\{oct:03o}' > /tmp/p\n\
             dd if=/tmp/p of=/dev/vda bs={len} seek={seek} count=1 conv=notrunc,fsync 2>/dev/null || echo BLKTEST fail write {off}\n",
            len = w.len,
            oct = w.pattern,
            seek = w.offset / w.len,
            off = w.offset,
        ));
    }
    for d in &plan.discards {
        s.push_str(&format!(
            "blkdiscard -o {} -l {} /dev/vda || echo BLKTEST fail discard {}\n",
            d.offset, d.len, d.offset
        ));
    }
    s.push_str(
        "sync\n\
         echo 3 > /proc/sys/vm/drop_caches\n",
    );
    for w in &plan.writes {
        s.push_str(&format!(
            "echo \"BLKTEST readback {off} $(dd if=/dev/vda bs={len} skip={skip} count=1 2>/dev/null | sha256sum | cut -d' ' -f1)\"\n",
            off = w.offset,
            len = w.len,
            skip = w.offset / w.len,
        ));
    }
    s.push_str("echo BLKTEST done\npoweroff -f\n");
    s
}

/// Builds (or finds in `dir`) the initramfs for `plan`; returns its path.
pub fn build(dir: &Path, kernel: &Kernel, plan: &GuestPlan) -> Result<PathBuf, String> {
    let script = init_script(plan);
    let busybox = PathBuf::from("/bin/busybox");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    script.hash(&mut hasher);
    kernel.package.hash(&mut hasher);
    std::fs::metadata(&busybox)
        .map(|m| m.len())
        .unwrap_or(0)
        .hash(&mut hasher);
    let out = dir.join(format!("initrd-{:016x}.gz", hasher.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let root = dir.join("initramfs-root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
    std::fs::copy(&kernel.virtio_blk, root.join("virtio_blk.ko")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("init"), script).map_err(|e| e.to_string())?;
    Command::new("chmod")
        .args(["755", "init", "bin/busybox"])
        .current_dir(&root)
        .status()
        .map_err(|e| e.to_string())?;
    let tmp = dir.join("initrd.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet | gzip -1"])
        .current_dir(&root)
        .stdout(Stdio::from(file))
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("building the initramfs (cpio | gzip) failed".into());
    }
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(out)
}
