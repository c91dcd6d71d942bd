//! The images the crash campaign writes to: each format and QCOW2 feature, how qemu-img creates it, and its
//! share of the kills.

/// One kind of image the campaign writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Its name in the summary and for `--only`.
    pub name: &'static str,
    /// The format, as qemu-img names it.
    pub format: &'static str,
    /// `qemu-img create -o` options.
    pub options: &'static str,
    /// Whether the image has a QCOW2 backing file (filled with data at a few places).
    pub backing: bool,
    /// Whether qemu-img can check the format (VHD: blk's check and `qemu-img compare` only).
    pub qemu_checks: bool,
    /// Its share of the kills (the images the issue asks at least 50 kills of weigh 2).
    pub weight: u64,
    /// What the writer does to it.
    pub workload: Workload,
}

/// The mix of operations the writer issues (see `worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Writes, zeroes, discards and flushes, mostly small and in a busy area (overwrites), and growing.
    Mixed,
    /// 4 to 16 KiB writes anywhere on the disk (most allocate a cluster), a flush after one in three
    /// operations on average, some discards (freed clusters get reused) and zeroes; no growing.
    Allocating,
}

impl Workload {
    /// Its name on the worker's command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Mixed => "mixed",
            Workload::Allocating => "allocating",
        }
    }

    /// The workload named `name` on the worker's command line.
    pub fn by_name(name: &str) -> Option<Workload> {
        [Workload::Mixed, Workload::Allocating]
            .into_iter()
            .find(|w| w.name() == name)
    }
}

/// Virtual size of a new image.
pub const SIZE: u64 = 64 << 20;
/// QCOW2 images grow up to this size.
pub const MAX_SIZE: u64 = 96 << 20;

/// Every scenario, in summary order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "qcow2-v2",
        format: "qcow2",
        options: "compat=0.10",
        backing: false,
        qemu_checks: true,
        weight: 1,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "qcow2-v3",
        format: "qcow2",
        options: "compat=1.1",
        backing: false,
        qemu_checks: true,
        weight: 2,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "qcow2-backing",
        format: "qcow2",
        options: "compat=1.1",
        backing: true,
        qemu_checks: true,
        weight: 2,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "qcow2-extl2",
        format: "qcow2",
        options: "compat=1.1,extended_l2=on,cluster_size=64k",
        backing: false,
        qemu_checks: true,
        weight: 1,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "qcow2-lazy",
        format: "qcow2",
        options: "compat=1.1,lazy_refcounts=on",
        backing: false,
        qemu_checks: true,
        weight: 1,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "qcow2-lazy-alloc",
        format: "qcow2",
        options: "compat=1.1,lazy_refcounts=on",
        backing: false,
        qemu_checks: true,
        weight: 1,
        workload: Workload::Allocating,
    },
    Scenario {
        name: "vhd",
        format: "vpc",
        options: "subformat=dynamic",
        backing: false,
        qemu_checks: false,
        weight: 2,
        workload: Workload::Mixed,
    },
    Scenario {
        name: "vhdx",
        format: "vhdx",
        options: "subformat=dynamic,block_size=1M",
        backing: false,
        qemu_checks: true,
        weight: 2,
        workload: Workload::Mixed,
    },
];

/// How many of `kills` each scenario of `chosen` gets: shares by weight, at least one each, summing to
/// `kills` (when `kills` is at least the number of scenarios).
pub fn shares(chosen: &[Scenario], kills: u64) -> Vec<u64> {
    let total: u64 = chosen.iter().map(|s| s.weight).sum::<u64>().max(1);
    let mut shares: Vec<u64> = chosen
        .iter()
        .map(|s| (kills * s.weight / total).max(1))
        .collect();
    let mut i = 0;
    while shares.iter().sum::<u64>() < kills && !shares.is_empty() {
        shares[i % chosen.len()] += 1;
        i += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hundred_kills_give_fifty_to_the_main_images() {
        let shares = shares(SCENARIOS, 300);
        assert_eq!(shares.iter().sum::<u64>(), 300);
        for (s, n) in SCENARIOS.iter().zip(&shares) {
            if s.weight == 2 {
                assert!(*n >= 50, "{}: {n}", s.name);
            }
        }
        assert!(super::shares(SCENARIOS, 3).iter().all(|&n| n == 1));
    }
}
