//! Writes through the native async path compared with qemu-io's result of the same writes, and four queues on
//! one image at once against a model (see `async_io.rs` for the drivers' roles).

mod async_support;
mod support;

use async_support::*;
use blk_core::AsyncDiskFile;
use blk_core::SyncHostBackend;
use support::*;

/// A random sequence of writes, write-zeroes, discards and flushes (some FUA), in batches; with qemu-io
/// commands doing the same.
fn write_ops(rng: &mut Rng, size: u64, cs: u64, count: usize) -> Vec<Vec<Op>> {
    let mut batches = Vec::new();
    let mut n = 0;
    let mut pattern = 1u8;
    while n < count {
        let mut batch = Vec::new();
        // Non-overlapping requests inside one batch (a guest must not overlap in-flight writes): each request
        // takes its own slot of the disk.
        let slots = 8;
        let slot = size / slots;
        let mut used = [false; 8];
        for _ in 0..1 + rng.below(8) {
            let s = rng.below(slots) as usize;
            if used[s] {
                continue;
            }
            used[s] = true;
            let base = s as u64 * slot;
            let kind = rng.below(10);
            let (offset, len) = match kind {
                // Whole clusters (allocating or in place).
                0..=3 => {
                    let c = rng.below(slot / cs - 4);
                    (base + c * cs, (1 + rng.below(4)) * cs)
                }
                // Sector-aligned partial writes.
                _ => {
                    let o = rng.below(slot / 512 - 300) * 512;
                    (base + o, (1 + rng.below(200)) * 512)
                }
            };
            pattern = pattern.wrapping_add(1).max(1);
            let op = match rng.below(12) {
                0 => Op::WriteZeroes {
                    offset,
                    len,
                    unmap: rng.below(2) == 0,
                },
                1 => Op::Discard { offset, len },
                2 => Op::Flush,
                k => Op::Write {
                    offset,
                    data: vec![pattern; len as usize],
                    fua: k == 3,
                },
            };
            batch.push(op);
            n += 1;
        }
        batches.push(batch);
    }
    batches
}

fn qemu_commands(batches: &[Vec<Op>]) -> Vec<String> {
    let mut cmds = Vec::new();
    for op in batches.iter().flatten() {
        cmds.push(match op {
            Op::Read { .. } => continue,
            Op::Write { offset, data, fua } => format!(
                "write {}-P {} {offset} {}",
                if *fua { "-f " } else { "" },
                data[0],
                data.len()
            ),
            Op::WriteZeroes { offset, len, unmap } => {
                format!("write -z {}{offset} {len}", if *unmap { "-u " } else { "" })
            }
            Op::Discard { offset, len } => format!("discard {offset} {len}"),
            Op::Flush => "flush".to_string(),
        });
    }
    cmds
}

#[test]
fn writes_equal_qemu_io() {
    let _g = serial();
    let dir = tempdir();
    let size = 4u64 << 20;
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0xbbu8; size as usize]).unwrap();
    for (case, (opts, cs)) in [
        ("cluster_size=64k", 65536u64),
        ("cluster_size=4k", 4096),
        (
            "cluster_size=64k,backing_file=base.raw,backing_fmt=raw",
            65536,
        ),
        ("cluster_size=64k,extended_l2=on", 65536),
        ("cluster_size=64k,lazy_refcounts=on", 65536),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng(0x5eed + case as u64);
        let batches = write_ops(&mut rng, size, *cs, 60);
        let prefill = ["write -P 0x10 0 512k", "write -P 0x12 2M 256k"];
        let theirs = dir.path().join(format!("theirs{case}.qcow2"));
        qemu_create(&theirs, opts, "4M");
        qemu_io("qcow2", &theirs, &prefill);
        let cmds = qemu_commands(&batches);
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io("qcow2", &theirs, &cmds);
        for driver in ["queue", "manual"] {
            let ours = dir.path().join(format!("ours{case}-{driver}.qcow2"));
            qemu_create(&ours, opts, "4M");
            qemu_io("qcow2", &ours, &prefill);
            {
                let disk = support::open_disk(&ours, &rw()).unwrap();
                if driver == "queue" {
                    let arena = Arena::new(64 << 20);
                    let mut queue = queue_of(&disk, &SyncHostBackend, 32);
                    for batch in &batches {
                        for (op, (_, r)) in batch.iter().zip(run_queue(&mut queue, &arena, batch)) {
                            r.unwrap_or_else(|e| panic!("{opts}: {op:?}: {e}"));
                        }
                    }
                } else {
                    let engine = ManualEngine::new(&disk);
                    for op in batches.iter().flatten() {
                        engine
                            .run(op)
                            .1
                            .unwrap_or_else(|e| panic!("{opts}: {op:?}: {e}"));
                    }
                }
            }
            assert_qemu_check_clean(&ours);
            qemu_img(&["compare", "-q", path_str(&ours), path_str(&theirs)]);
        }
    }
}

/// Four queues (two `MappedQueue`s, two manual engines on their own mappers) on one image, each writing,
/// zeroing, discarding and reading its own clusters, from four threads: each sees its model; the whole disk
/// equals the merged model; qemu-img check is clean.
#[test]
fn four_queues_at_once_equal_a_model() {
    let _g = serial();
    let dir = tempdir();
    for (opts, cs) in [("cluster_size=4k", 4096u64), ("cluster_size=64k", 65536)] {
        let img = dir.path().join("mq.qcow2");
        let _ = std::fs::remove_file(&img);
        qemu_create(&img, opts, "8M");
        let size = 8u64 << 20;
        let disk = support::open_disk(&img, &rw()).unwrap();
        let models: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let clone = disk.try_clone_async().unwrap();
                    let engine = ManualEngine::new(&disk);
                    s.spawn(move || run_owner(t, clone, engine, size, cs))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Cluster c belongs to thread c % 4.
        let mut model = vec![0u8; size as usize];
        for c in 0..size / cs {
            let t = (c % 4) as usize;
            let r = (c * cs) as usize..((c + 1) * cs) as usize;
            model[r.clone()].copy_from_slice(&models[t][r]);
        }
        assert_same(&read_all(&disk), &model, &format!("{opts}: merged model"));
        drop(disk);
        assert_qemu_check_clean(&img);
        assert_same(
            &qemu_contents(&img, "qcow2"),
            &model,
            &format!("{opts}: qemu"),
        );
    }
}

/// Thread `t`'s work (see `four_queues_at_once_equal_a_model`); returns its model of the disk.
fn run_owner(
    t: u64,
    disk: Box<dyn AsyncDiskFile>,
    engine: ManualEngine,
    size: u64,
    cs: u64,
) -> Vec<u8> {
    let mut rng = Rng(0xabcd + t);
    let mut model = vec![0u8; size as usize];
    let clusters = size / cs;
    // Runs of clusters owned by this thread: cluster c with c % 4 == t, so a request covers one cluster (or a
    // part of it) at a time; batches touch distinct clusters.
    let mine = |i: u64| (i * 4 + t) % clusters;
    let queue_driven = t < 2;
    let mut queue = if queue_driven {
        Some(disk.create_async_io(32).unwrap())
    } else {
        None
    };
    let arena = Arena::new(32 * 70_000);
    for _round in 0..12 {
        let mut batch = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for _ in 0..1 + rng.below(24) {
            let c = mine(rng.below(clusters / 4));
            if !taken.insert(c) {
                continue;
            }
            let base = c * cs;
            let (in_off, len) = if rng.below(2) == 0 {
                (0, cs)
            } else {
                let o = rng.below(cs / 512) * 512;
                (o, (1 + rng.below((cs - o) / 512)) * 512)
            };
            let offset = base + in_off;
            let op = match rng.below(10) {
                0 => Op::WriteZeroes {
                    offset,
                    len,
                    unmap: true,
                },
                1 => Op::Discard {
                    offset: base,
                    len: cs,
                },
                2 | 3 => Op::Read { offset, len },
                _ => Op::Write {
                    offset,
                    data: (0..len)
                        .map(|i| (i as u8) ^ (t as u8 * 61) ^ (c as u8))
                        .collect(),
                    fua: rng.below(8) == 0,
                },
            };
            batch.push(op);
        }
        let outcomes: Vec<Outcome> = match queue.as_mut() {
            Some(q) => run_queue(q.as_mut(), &arena, &batch),
            None => batch.iter().map(|op| engine.run(op)).collect(),
        };
        for (op, (bytes, result)) in batch.iter().zip(outcomes) {
            result.unwrap_or_else(|e| panic!("thread {t}: {op:?}: {e}"));
            match op {
                Op::Read { offset, len } => assert_same(
                    &bytes,
                    &model[*offset as usize..(*offset + *len) as usize],
                    &format!("thread {t}: read at {offset}"),
                ),
                Op::Write { offset, data, .. } => {
                    model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
                }
                Op::WriteZeroes { offset, len, .. } | Op::Discard { offset, len } => {
                    model[*offset as usize..(*offset + *len) as usize].fill(0)
                }
                Op::Flush => {}
            }
        }
    }
    model
}
