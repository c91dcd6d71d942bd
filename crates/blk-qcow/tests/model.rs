//! Random reads, writes, zero-writes and discards from 1 to 3 threads (each through its own clone, on its own
//! region) against an in-memory model; at the end the image equals the model through blk and through QEMU,
//! and `qemu-img check` finds it clean.

mod support;

use std::sync::Arc;

use blk_core::DiskFile;
use proptest::prelude::*;
use support::*;

const REGION: u64 = 256 << 10;
const TAIL: u64 = 3072;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, val: u8 },
    Zero { off: u64, len: u64, unmap: bool },
    Discard { off: u64, len: u64 },
    Read { off: u64, len: u64 },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..REGION + TAIL, 1..70_000u64);
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((off, len), val)| Op::Write { off, len, val: val | 1 }),
        2 => (range.clone(), any::<bool>()).prop_map(|((off, len), unmap)| Op::Zero { off, len, unmap }),
        2 => range.clone().prop_map(|(off, len)| Op::Discard { off, len }),
        2 => range.prop_map(|(off, len)| Op::Read { off, len }),
        1 => Just(Op::Flush),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Config {
    cluster: u64,
    refcount_bits: u64,
    v3: bool,
    backing: bool,
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(512u64), Just(4096), Just(65536)],
        prop_oneof![Just(1u64), Just(16), Just(64)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cluster, refcount_bits, v3, backing)| Config {
            cluster,
            refcount_bits: if v3 { refcount_bits } else { 16 },
            v3,
            // qemu's v2 discard reveals the backing file: the model covers backing files with v3 only.
            backing: backing && v3,
        })
}

/// Applies `op` (clipped to `[lo, hi)`) to the image and the model region.
fn apply(disk: &dyn DiskFile, model: &mut [u8], base: u64, op: &Op, cfg: Config, size: u64) {
    let hi = base + model.len() as u64;
    let clip = |off: u64, len: u64| {
        let start = base + off.min(model.len() as u64 - 1);
        let end = (start + len).min(hi);
        (start, end - start)
    };
    let m = |x: u64| (x - base) as usize;
    match *op {
        Op::Write { off, len, val } => {
            let (o, l) = clip(off, len);
            let buf = vec![val; l as usize];
            disk.write_all_at(o, &buf).unwrap();
            model[m(o)..m(o + l)].fill(val);
        }
        Op::Zero { off, len, unmap } => {
            let (o, l) = clip(off, len);
            disk.write_zeroes(o, l, unmap).unwrap();
            model[m(o)..m(o + l)].fill(0);
        }
        Op::Discard { off, len } => {
            let (o, l) = clip(off, len);
            disk.discard(o, l).unwrap();
            let cs = cfg.cluster;
            let start = o.div_ceil(cs) * cs;
            let mut end = (o + l) / cs * cs;
            if o + l == size && size % cs != 0 && o <= end {
                end = size;
            }
            if start < end {
                model[m(start)..m(end)].fill(0);
            }
        }
        Op::Read { off, len } => {
            let (o, l) = clip(off, len);
            let mut buf = vec![0u8; l as usize];
            disk.read_exact_at(o, &mut buf).unwrap();
            assert_same(&buf, &model[m(o)..m(o + l)], &format!("read {o}+{l}"));
        }
        Op::Flush => disk.flush().unwrap(),
    }
}

fn run(cfg: Config, threads: Vec<Vec<Op>>) {
    let dir = tempdir();
    let img = dir.path().join("model.qcow2");
    let nthreads = threads.len() as u64;
    let size = nthreads * REGION + TAIL;
    let mut model = vec![0u8; size as usize];
    let (cluster, refcount_bits) = (cfg.cluster.to_string(), cfg.refcount_bits.to_string());
    let mut opts = vec![
        ("cluster_size", cluster.as_str()),
        ("refcount_bits", refcount_bits.as_str()),
        ("compat", if cfg.v3 { "1.1" } else { "0.10" }),
    ];
    if cfg.backing {
        let base = dir.path().join("base.raw");
        // Shorter than the image: the rest reads as zeros.
        let data: Vec<u8> = (0..size - 5000).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, &data).unwrap();
        model[..data.len()].copy_from_slice(&data);
        opts.push(("backing_file", "base.raw"));
        opts.push(("backing_fmt", "raw"));
    }
    blk_create(&img, size, &opts);
    {
        let disk: Arc<dyn DiskFile> = Arc::new(support::open_disk(&img, &rw()).unwrap());
        let mut regions: Vec<&mut [u8]> = Vec::new();
        let mut rest = &mut model[..];
        for t in 0..nthreads {
            let len = if t + 1 == nthreads {
                rest.len()
            } else {
                REGION as usize
            };
            let (head, tail) = rest.split_at_mut(len);
            regions.push(head);
            rest = tail;
        }
        std::thread::scope(|s| {
            for (t, (ops, region)) in threads.iter().zip(regions).enumerate() {
                let clone = disk.try_clone().unwrap();
                s.spawn(move || {
                    for op in ops {
                        apply(clone.as_ref(), region, t as u64 * REGION, op, cfg, size);
                    }
                });
            }
        });
        assert_same(&read_all(disk.as_ref()), &model, "after the threads");
    }
    let _g = serial();
    assert_qemu_check_clean(&img);
    assert_same(&qemu_contents(&img, "qcow2"), &model, "through qemu");
    let disk = support::open_disk(&img, &ro()).unwrap();
    assert_same(&read_all(&disk), &model, "reopened");
}

/// 24 cases in CI; `PROPTEST_CASES` asks for more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_ops_match_the_model(
        cfg in config(),
        threads in prop::collection::vec(prop::collection::vec(op(), 1..25), 1..=3),
    ) {
        run(cfg, threads);
    }
}
