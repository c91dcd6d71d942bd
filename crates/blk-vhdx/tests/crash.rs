//! A writer process killed at random points, 60 times: after each kill the image replays to a consistent
//! state (blk's replay and `qemu-img check -r all` on a copy) and every acknowledged, flushed write is there.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use blk_core::{DiskFile, ImageAdmin, RepairMode};
use common::*;

const ENV_IMAGE: &str = "BLK_VHDX_CRASH_WRITER_IMAGE";
const ENV_START: &str = "BLK_VHDX_CRASH_WRITER_START";
const SLOTS: u64 = 16384;
const SLOT: u64 = 4096;

/// Slot `n`'s offset: a permutation spreading consecutive writes over the disk's blocks.
fn slot_offset(n: u64) -> u64 {
    (n * 7919 % SLOTS) * SLOT
}

fn slot_byte(n: u64) -> u8 {
    (n % 251) as u8 + 1
}

/// The writer mode: writes slots from START on, flushing each and printing its number once durable.
fn writer(image: &str, start: u64) {
    let disk = open(std::path::Path::new(image), false).unwrap();
    let mut out = std::io::stdout();
    for n in start.. {
        disk.write_all_at(slot_offset(n), &vec![slot_byte(n); SLOT as usize])
            .unwrap();
        disk.flush().unwrap();
        writeln!(out, "{n}").unwrap();
        out.flush().unwrap();
    }
}

/// A small deterministic generator for the kill delays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn killed_writer_loses_no_flushed_write() {
    if let (Ok(image), Ok(start)) = (std::env::var(ENV_IMAGE), std::env::var(ENV_START)) {
        writer(&image, start.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("crash.vhdx");
    create(&image, SLOTS * SLOT, &[("block_size", "1M")]);
    let exe = std::env::current_exe().unwrap();
    let mut acked = 0u64;
    let mut skipped = std::collections::HashSet::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..60 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "killed_writer_loses_no_flushed_write",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_IMAGE, &image)
            .env(ENV_START, acked.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Ok(n) = line.trim().parse::<u64>() {
                    last = Some(n);
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(20 + next(&mut seed) % 120));
        child.kill().unwrap();
        child.wait().unwrap();
        let last = reader.join().unwrap();
        // Slots up to `last` were acknowledged; the next one may be torn, so it is skipped for good.
        let durable_end = last.map_or(acked, |n| n + 1);
        // qemu-img check -r all on a copy replays whatever log is left and finds no corruption.
        let copy = dir.path().join("copy.vhdx");
        std::fs::copy(&image, &copy).unwrap();
        let (code, out) = run_status(
            "qemu-img",
            &["check", "-r", "all", "-f", "vhdx", path_str(&copy)],
        );
        assert_eq!(code, 0, "round {round}: {out}");
        // blk replays (writable open), finds no corruption, and every acknowledged write is there.
        let disk = open(&image, false).unwrap();
        let report = disk.check(RepairMode::All).unwrap();
        assert_eq!(
            report.corruptions, 0,
            "round {round}: {:?}",
            report.messages
        );
        let mut buf = vec![0u8; SLOT as usize];
        for n in 0..durable_end {
            if !skipped.contains(&n) && (n >= acked || n % 7 == 0 || n + 20 >= durable_end) {
                disk.read_exact_at(slot_offset(n), &mut buf).unwrap();
                if buf.iter().any(|&b| b != slot_byte(n)) {
                    panic!("round {round}: acknowledged write {n} lost");
                }
            }
        }
        drop(disk);
        skipped.insert(durable_end);
        acked = durable_end + 1;
        if acked + 2000 > SLOTS {
            break;
        }
    }
    assert!(acked > 60, "the writer made too little progress: {acked}");
}
