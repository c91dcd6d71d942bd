//! The same qemu-io scripts run by qemu-io on qemu-made images and by blk on blk-made images give the same
//! contents and the same `qemu-img map`; blk's own `map` runs, merged as the CLI merges them, equal
//! `qemu-img map --output=json` on the same image.

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

/// qemu-img map's JSON without host offsets (layouts legitimately differ).
fn qemu_map_without_offsets(img: &Path) -> Vec<Value> {
    without_host_offsets(qemu_map(img))
}

const SCRIPT: &[&str] = &[
    "write -P 1 0 100k",
    "write -z 200k 136k",
    "write -P 2 400k 300k",
    "write -z -u 448k 192k",
    "write -z 640k 64k",
    "discard 64k 64k",
    "discard 10k 20k",
    "write -c -P 3 1M 128k",
    "discard 1M 64k",
    "write -P 4 1028k 4k",
    "write -P 5 1100k 1k",
    "write -z -u 1500k 100k",
    "discard 1700k 300k",
];

#[test]
fn qemu_io_scripts_replay_equal() {
    let _g = serial();
    let dir = tempdir();
    for (opts, backing) in [
        ("compat=1.1", false),
        ("compat=0.10", false),
        ("compat=1.1", true),
        ("compat=1.1,cluster_size=4k", true),
    ] {
        let theirs = dir.path().join("theirs.qcow2");
        let ours = dir.path().join("ours.qcow2");
        let mut qopts = opts.to_string();
        if backing {
            let base = dir.path().join("base.raw");
            std::fs::write(&base, vec![0x77u8; 1800 << 10]).unwrap();
            qopts.push_str(",backing_file=base.raw,backing_fmt=raw");
        }
        qemu_create(&theirs, &qopts, "2M");
        qemu_io("qcow2", &theirs, SCRIPT);
        blk_create(&ours, 2 << 20, &option_pairs(&qopts));
        {
            let disk = support::open_disk(&ours, &rw()).unwrap();
            for cmd in SCRIPT {
                run_blk(&disk, cmd);
            }
        }
        assert_qemu_check_clean(&ours);
        assert_same(
            &qemu_contents(&ours, "qcow2"),
            &qemu_contents(&theirs, "qcow2"),
            opts,
        );
        assert_eq!(
            qemu_map_without_offsets(&ours),
            qemu_map_without_offsets(&theirs),
            "{opts} backing={backing}"
        );
        let disk = support::open_disk(&theirs, &ro()).unwrap();
        assert_eq!(
            without_host_offsets(blk_map(&disk)),
            qemu_map_without_offsets(&theirs),
            "blk map of qemu's image, {opts} backing={backing}"
        );
    }
}
