//! The same qemu-io scripts run by qemu-io on qemu-made images and by blk on blk-made images give the same
//! contents and the same `qemu-img map`; blk's own `map` runs, merged as the CLI merges them, equal
//! `qemu-img map --output=json` on the same image.

mod support;

use std::path::Path;

use blk_core::ImageAdmin;
use blk_core::{DiskFile, ExtentKind};
use blk_qcow::{Qcow2, Qcow2CreateOptions};
use serde_json::Value;
use support::*;

fn size_arg(s: &str) -> u64 {
    match s.strip_suffix('k') {
        Some(n) => n.parse::<u64>().unwrap() << 10,
        None => match s.strip_suffix('M') {
            Some(n) => n.parse::<u64>().unwrap() << 20,
            None => s.parse().unwrap(),
        },
    }
}

/// Runs one qemu-io command through blk.
fn run_blk(disk: &support::Disk, cmd: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (off, len) = (
        size_arg(words[words.len() - 2]),
        size_arg(words[words.len() - 1]),
    );
    match words[..words.len() - 2] {
        ["write", "-P", v] => disk
            .write_all_at(off, &vec![v.parse::<u8>().unwrap(); len as usize])
            .unwrap(),
        ["write", "-c", "-P", v] => {
            let cs = disk.compressed_write_size().unwrap();
            let buf = vec![v.parse::<u8>().unwrap(); cs as usize];
            let mut o = off;
            while o < off + len {
                disk.write_compressed(o, &buf).unwrap();
                o += cs;
            }
        }
        ["write", "-z"] => disk.write_zeroes(off, len, false).unwrap(),
        ["write", "-z", "-u"] => disk.write_zeroes(off, len, true).unwrap(),
        ["discard"] => disk.discard(off, len).unwrap(),
        _ => panic!("unknown command {cmd}"),
    }
}

/// qemu-img map's JSON without host offsets (layouts legitimately differ).
fn qemu_map(img: &Path) -> Vec<Value> {
    let out = qemu_img(&["map", "--output=json", "-U", path_str(img)]);
    let mut v: Vec<Value> = serde_json::from_str(&out).unwrap();
    for e in &mut v {
        e.as_object_mut().unwrap().remove("offset");
    }
    v
}

/// blk's map runs merged as the CLI merges them, in qemu-img's JSON shape (without offsets).
fn blk_map(disk: &support::Disk) -> Vec<Value> {
    let size = disk.logical_size();
    let mut runs: Vec<Value> = Vec::new();
    // Host offset where the previous run ends, to merge only runs that continue on the host (as qemu-img).
    let mut host_end: Option<u64> = None;
    let mut pos = 0;
    while pos < size {
        let e = disk.map(pos, size - pos).unwrap();
        let v = serde_json::json!({
            "start": e.offset, "length": e.length, "depth": e.depth,
            "present": e.kind != ExtentKind::Unallocated, "zero": e.kind != ExtentKind::Data,
            "data": e.kind == ExtentKind::Data, "compressed": e.compressed,
        });
        let merged = runs.last_mut().is_some_and(|last| {
            let same = ["depth", "present", "zero", "data", "compressed"]
                .iter()
                .all(|k| last[k] == v[k])
                && host_end == e.host_offset;
            if same {
                last["length"] = Value::from(last["length"].as_u64().unwrap() + e.length);
            }
            same
        });
        if !merged {
            runs.push(v);
        }
        pos += e.length;
        host_end = e.host_offset.map(|h| h + e.length);
    }
    runs
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
        let mut kv: Vec<(String, String)> = opts
            .split(',')
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .unwrap()
            })
            .collect();
        let mut qopts = opts.to_string();
        if backing {
            let base = dir.path().join("base.raw");
            std::fs::write(&base, vec![0x77u8; 1800 << 10]).unwrap();
            qopts.push_str(",backing_file=base.raw,backing_fmt=raw");
            kv.push(("backing_file".into(), "base.raw".into()));
            kv.push(("backing_fmt".into(), "raw".into()));
        }
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &qopts,
            path_str(&theirs),
            "2M",
        ]);
        qemu_io(&theirs, "qcow2", SCRIPT);
        let o = Qcow2CreateOptions::from_key_values(Some(2 << 20), &kv).unwrap();
        Qcow2::create(&ours, &o, &TestOpener).unwrap();
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
            qemu_map(&ours),
            qemu_map(&theirs),
            "{opts} backing={backing}"
        );
        let disk = support::open_disk(&theirs, &ro()).unwrap();
        assert_eq!(
            blk_map(&disk),
            qemu_map(&theirs),
            "blk map of qemu's image, {opts} backing={backing}"
        );
    }
}
