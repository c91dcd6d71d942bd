//! The tmpfs suite of `cargo xtask bench` (`--suite tmpfs`): `blk bench` against `qemu-img bench` on images in
//! a tmpfs opened O_DIRECT (`-t none`): RAM behind O_DIRECT, a device with no latency, where only the block
//! layers' own cost counts (issue 18: ">= 2x qemu-img bench's IOPS for reads and writes"). 4 KiB scattered
//! reads and writes at depth 32 on QCOW2, with raw as a reference; blk on io_uring against qemu-img bench on
//! io_uring and on its default thread pool (the faster qemu counts). One more scenario runs O_DIRECT 4 KiB
//! QCOW2 reads on the disk (`<target>/bench-images/`), where the virtual disk bounds both tools' IOPS, and
//! compares their CPU time per request (target: blk at most 0.7x QEMU's, at the same IOPS).
//!
//! Runs, medians, alternation, IOPS and CPU time per request are the comparison suite's (see
//! [`bench_compare`]); the tmpfs images are made in a fresh directory under the tmpfs
//! (`/dev/shm` by default), which must be a tmpfs, and deleted at the end.

use std::path::{Path, PathBuf};

use crate::bench_compare::{self, CompareOptions, Environment};
use crate::bench_images::Image;
use crate::bench_scenarios::{
    Contender, Measure, Preparation, RatioCheck, Scenario, Tool, SCATTER_STEP,
};

/// Where the tmpfs images go by default.
pub const DEFAULT_TMPFS: &str = "/dev/shm";

/// The report's file name under the target directory.
pub const REPORT: &str = "bench-tmpfs.md";

/// The least IOPS ratio of blk over the faster qemu-img bench on the tmpfs (issue 18).
pub const TMPFS_TARGET: f64 = 2.0;

/// The greatest CPU time per request of blk relative to QEMU's on the disk (issue 18).
pub const DISK_CPU_TARGET: f64 = 0.7;

/// The id of the scenario on the disk (the others run on the tmpfs).
pub const DISK_SCENARIO: u32 = 3;

/// Image size and request counts.
#[derive(Debug, Clone, Copy)]
pub struct TmpfsScale {
    /// Bytes per image.
    pub image_size: u64,
    /// `-c` of the tmpfs scenarios.
    pub tmpfs: u64,
    /// `-c` of the disk scenario.
    pub disk: u64,
}

impl TmpfsScale {
    /// The scale `options` ask for: 1 GiB images and runs of about 1-5 s, or `--quick`.
    pub fn of(options: &CompareOptions) -> TmpfsScale {
        if options.quick {
            TmpfsScale {
                image_size: 64 << 20,
                tmpfs: 512,
                disk: 256,
            }
        } else {
            TmpfsScale {
                image_size: 1 << 30,
                tmpfs: 1_000_000,
                disk: 200_000,
            }
        }
    }
}

/// The suite's scenarios: 1 and 2 on the tmpfs (reads, writes), 3 ([`DISK_SCENARIO`]) on the disk.
pub fn scenarios(scale: &TmpfsScale) -> Vec<Scenario> {
    let step = SCATTER_STEP.to_string();
    let contender = |name, tool, image, write: bool, count: u64, uring: bool| {
        let mut args: Vec<String> = if write { vec!["-w".into()] } else { vec![] };
        let count = count.to_string();
        for arg in [
            "-t", "none", "-d", "32", "-s", "4096", "-S", &step, "-c", &count,
        ] {
            args.push(arg.to_string());
        }
        if uring {
            args.extend(["-i".to_string(), "io_uring".to_string()]);
        }
        Contender {
            name,
            tool,
            image,
            args,
        }
    };
    let qemus = || vec!["qemu io_uring", "qemu threads"];
    let mut list = Vec::new();
    for (id, write) in [(1, false), (2, true)] {
        let n = scale.tmpfs;
        let c = |name, tool, image, uring| contender(name, tool, image, write, n, uring);
        list.push(Scenario {
            id,
            title: if write {
                "tmpfs: 4 KiB scattered writes, depth 32, O_DIRECT, allocated QCOW2"
            } else {
                "tmpfs: 4 KiB scattered reads, depth 32, O_DIRECT"
            },
            prepare: Preparation::None,
            contenders: vec![
                c("blk qcow2", Tool::Blk, Image::DataQcow2, true),
                c("qemu io_uring", Tool::QemuImg, Image::DataQcow2, true),
                c("qemu threads", Tool::QemuImg, Image::DataQcow2, false),
                // References, not targets: both tools on the raw file.
                c("blk raw", Tool::Blk, Image::DataRaw, true),
                c("qemu raw", Tool::QemuImg, Image::DataRaw, true),
            ],
            checks: vec![RatioCheck::speed(
                "blk qcow2 vs qemu (IOPS)",
                "blk qcow2",
                qemus(),
                TMPFS_TARGET,
            )],
        });
    }
    let c = |name, tool, uring| contender(name, tool, Image::DataQcow2, false, scale.disk, uring);
    list.push(Scenario {
        id: DISK_SCENARIO,
        title: "disk: 4 KiB scattered reads, depth 32, O_DIRECT, QCOW2 (device-bound)",
        prepare: Preparation::None,
        contenders: vec![
            c("blk qcow2", Tool::Blk, true),
            c("qemu io_uring", Tool::QemuImg, true),
            c("qemu threads", Tool::QemuImg, false),
        ],
        checks: vec![
            RatioCheck {
                measure: Measure::CpuPerRequest,
                ..RatioCheck::speed(
                    "blk qcow2 vs qemu (CPU per request)",
                    "blk qcow2",
                    qemus(),
                    DISK_CPU_TARGET,
                )
            },
            // "At the same IOPS": the device bounds both, so blk is within 5% of the faster qemu.
            RatioCheck::speed(
                "blk qcow2 vs qemu (IOPS, same device)",
                "blk qcow2",
                qemus(),
                0.95,
            ),
        ],
    });
    list
}

/// Whether `path` is on a tmpfs (`statfs`'s `f_type` is `TMPFS_MAGIC`).
pub fn is_tmpfs(path: &Path) -> Result<bool, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct of integers.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable struct, both live for the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(format!(
            "cannot statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    Ok(stat.f_type as i64 == TMPFS_MAGIC)
}

/// Runs the suite: the tmpfs scenarios on images in a new directory under `tmpfs` (which must be a tmpfs),
/// the disk scenario on images in `<target>/bench-images/`, the report in `<target>/bench-tmpfs.md`. Fails
/// (after reporting everything) when a run failed; ratios below target are reported, not errors.
pub fn run_suite(
    env: &Environment,
    options: &CompareOptions,
    command_line: &str,
    tmpfs: &Path,
) -> Result<(), String> {
    if !is_tmpfs(tmpfs)? {
        return Err(format!("{} is not a tmpfs", tmpfs.display()));
    }
    let scale = TmpfsScale::of(options);
    let (disk, memory): (Vec<Scenario>, Vec<Scenario>) =
        bench_compare::select(scenarios(&scale), options)?
            .into_iter()
            .partition(|s| s.id == DISK_SCENARIO);
    let dir: PathBuf = tmpfs.join(format!("blk-bench-{}", std::process::id()));
    let mut results = Vec::new();
    if !memory.is_empty() {
        results.extend(bench_compare::run_scenarios(
            env,
            &dir,
            scale.image_size,
            &memory,
            options.runs,
        )?);
    }
    if !disk.is_empty() {
        results.extend(bench_compare::run_scenarios(
            env,
            &env.target_dir.join("bench-images"),
            scale.image_size,
            &disk,
            options.runs,
        )?);
    }
    bench_compare::report(
        env,
        "blk bench vs qemu-img bench, O_DIRECT on a tmpfs and on the disk",
        REPORT,
        &results,
        command_line,
        options.runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_scenarios::tests::assert_checks_name_contenders;

    #[test]
    fn scenarios_are_o_direct_and_counts_are_equal() {
        let list = scenarios(&TmpfsScale::of(&CompareOptions::default()));
        assert_eq!(
            list.iter().map(|s| s.id).collect::<Vec<_>>(),
            [1, 2, DISK_SCENARIO]
        );
        assert_checks_name_contenders(&list);
        for s in &list {
            assert!(s
                .contenders
                .iter()
                .all(|c| c.args.windows(2).any(|w| w == ["-t", "none"])));
            assert!(s
                .contenders
                .iter()
                .all(|c| c.requests() == s.contenders[0].requests()));
        }
    }

    #[test]
    fn tmpfs_is_recognised() {
        assert_eq!(is_tmpfs(Path::new("/proc")), Ok(false), "procfs");
        assert!(is_tmpfs(Path::new("/nonexistent/dir")).is_err());
    }
}
