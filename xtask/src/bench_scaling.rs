//! The scaling suite of `cargo xtask bench` (`--suite scaling`): one image served by 1, 2, 4 and 8 queues,
//! each on its own thread (`blk bench --queues N`: N threads, each with its own handle and queue, the request
//! count split between them), for QCOW2, VHD, VHDX and raw, with page-cache 4 KiB scattered reads and writes
//! at depth 32 per queue (issue 18: "8 queues reach >= 0.95x the throughput of 2, no collapse under
//! contention").
//!
//! The images are the comparison suite's (module [`bench_images`](crate::bench_images)): 1 GiB of distinct
//! non-zero data converted by `qemu-img convert`, every cluster or block allocated. Reads run on an image
//! dropped from the page cache and read once ([`Preparation::WarmCache`]); writes on an image dropped from the page cache and then written
//! once in full, sequentially ([`Preparation::WriteOnce`]: 4 KiB writes into pages that reads brought in run
//! slower in this VM's kernel). Every queue count runs the same total count, so the time ratio of
//! two contenders is their throughput ratio; the contenders alternate run by run and the medians are
//! reported with IOPS and CPU time per request (see [`bench_compare`] for how runs are
//! timed and measured).

use crate::bench_compare::{self, CompareOptions, Environment};
use crate::bench_images::Image;
use crate::bench_scenarios::{Contender, Preparation, RatioCheck, Scenario, Tool, SCATTER_STEP};

/// The queue counts measured.
pub const QUEUES: [u32; 4] = [1, 2, 4, 8];

/// The least throughput of 8 queues relative to 2 (issue 18).
pub const EIGHT_VS_TWO_TARGET: f64 = 0.95;

/// The report's file name under the target directory.
pub const REPORT: &str = "bench-scaling.md";

/// Image size and request counts.
#[derive(Debug, Clone, Copy)]
pub struct ScalingScale {
    /// Bytes per image.
    pub image_size: u64,
    /// `-c` of the read scenarios (split between the queues).
    pub reads: u64,
    /// `-c` of the write scenarios.
    pub writes: u64,
}

impl ScalingScale {
    /// The scale `options` ask for: 1 GiB images and runs of about 1-5 s, or `--quick`.
    pub fn of(options: &CompareOptions) -> ScalingScale {
        if options.quick {
            ScalingScale {
                image_size: 64 << 20,
                reads: 512,
                writes: 512,
            }
        } else {
            ScalingScale {
                image_size: 1 << 30,
                reads: 1_000_000,
                writes: 200_000,
            }
        }
    }
}

/// The contender name of `queues` queues.
fn name(queues: u32) -> &'static str {
    match queues {
        1 => "blk 1 queue",
        2 => "blk 2 queues",
        4 => "blk 4 queues",
        _ => "blk 8 queues",
    }
}

/// The suite's scenarios: per format (QCOW2, VHD, VHDX, raw) reads then writes, numbered 1 to 8.
pub fn scenarios(scale: &ScalingScale) -> Vec<Scenario> {
    let formats = [
        (Image::DataQcow2, "QCOW2"),
        (Image::DataVhd, "VHD"),
        (Image::DataVhdx, "VHDX"),
        (Image::DataRaw, "raw"),
    ];
    let step = SCATTER_STEP.to_string();
    let mut list = Vec::new();
    for (image, format) in formats {
        for write in [false, true] {
            let count = if write { scale.writes } else { scale.reads }.to_string();
            let contenders = QUEUES
                .iter()
                .map(|&queues| {
                    let mut args: Vec<String> = if write { vec!["-w".into()] } else { vec![] };
                    for arg in [
                        "-t",
                        "writeback",
                        "-d",
                        "32",
                        "-s",
                        "4096",
                        "-S",
                        &step,
                        "-c",
                        &count,
                        "-i",
                        "io_uring",
                        "--queues",
                        &queues.to_string(),
                    ] {
                        args.push(arg.to_string());
                    }
                    Contender {
                        name: name(queues),
                        tool: Tool::Blk,
                        image,
                        args,
                    }
                })
                .collect();
            let title = format!(
                "{format}: 4 KiB scattered {}, depth 32 per queue, page cache, 1/2/4/8 queues",
                if write { "writes" } else { "reads" }
            );
            list.push(Scenario {
                id: list.len() as u32 + 1,
                // A handful of titles made once per suite run.
                title: Box::leak(title.into_boxed_str()),
                prepare: if write {
                    Preparation::WriteOnce
                } else {
                    Preparation::WarmCache
                },
                contenders,
                checks: vec![RatioCheck::speed(
                    "8 queues vs 2 queues",
                    name(8),
                    vec![name(2)],
                    EIGHT_VS_TWO_TARGET,
                )],
            });
        }
    }
    list
}

/// Runs the suite: images in `<target>/bench-images/`, the report in `<target>/bench-scaling.md`. Fails
/// (after reporting everything) when a run failed; ratios below target are reported, not errors.
pub fn run_suite(
    env: &Environment,
    options: &CompareOptions,
    command_line: &str,
) -> Result<(), String> {
    let scale = ScalingScale::of(options);
    let selected = bench_compare::select(scenarios(&scale), options)?;
    bench_compare::run_on_disk(
        env,
        options,
        command_line,
        &selected,
        scale.image_size,
        (
            "blk bench: 1, 2, 4 and 8 queues on one image, page cache",
            REPORT,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_scenarios::tests::assert_checks_name_contenders;

    #[test]
    fn every_format_reads_and_writes_at_every_queue_count() {
        let list = scenarios(&ScalingScale::of(&CompareOptions::default()));
        assert_eq!(list.len(), 8);
        assert_checks_name_contenders(&list);
        for (i, s) in list.iter().enumerate() {
            assert_eq!(s.id as usize, i + 1);
            let writes = s.contenders.iter().all(|c| c.args.contains(&"-w".into()));
            assert_eq!(writes, i % 2 == 1, "{}", s.title);
            assert_eq!(s.contenders.len(), QUEUES.len());
            // Every queue count runs the same total count: time ratios are throughput ratios.
            assert!(s
                .contenders
                .iter()
                .all(|c| c.requests() == s.contenders[0].requests()));
        }
    }
}
