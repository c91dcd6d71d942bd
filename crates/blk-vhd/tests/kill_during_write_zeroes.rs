//! A process killed (SIGKILL) while it zeroes ranges of an allocated block of a dynamic VHD in tmpfs never
//! leaves a torn sector: every sector reads as all zeros or all data.
//!
//! tmpfs has no `FALLOC_FL_ZERO_RANGE`, so the zeros are written from a buffer; a `pwrite` the kernel stops
//! for a fatal signal ends where it stopped copying, which is at the *source* page boundary where the copy
//! faulted. From a zero buffer whose pages sit 16 bytes off the file's page boundaries (a heap or `calloc`
//! buffer), that was in the middle of a sector: 496 bytes of zeros followed by 16 bytes of the old data (the
//! crash campaign's "torn unflushed sectors").
//!
//! The test runs itself as the child: with `BLK_VHD_KILL_CHILD` set, it zeroes and rewrites ranges forever.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use blk_core::DiskFile;
use common::*;

const CHILD: &str = "BLK_VHD_KILL_CHILD";
const TEST: &str = "a_kill_during_write_zeroes_never_tears_a_sector";
const BLOCK: u64 = 2 << 20;
const DATA: u8 = 0xa5;

/// The child: zeroes a range of block 0, then writes data over it again, forever (until killed).
fn child(path: &Path) {
    let disk = open_rw(path);
    let data = vec![DATA; 1 << 20];
    let mut x = std::process::id() as u64 | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 512 * (512 + x % 1536);
        let offset = 512 * ((x >> 20) % ((BLOCK - len) / 512 + 1));
        disk.write_zeroes(offset, len, false).unwrap();
        disk.write_all_at(offset, &data[..len as usize]).unwrap();
    }
}

/// A directory in tmpfs, where zeroing falls back to writing zero buffers; `None` without `/dev/shm`.
fn tmpfs_dir() -> Option<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("blk-vhd-kill-")
        .tempdir_in("/dev/shm")
        .ok()
}

/// The sectors of block 0 that hold both zeros and data.
fn torn_sectors(path: &Path) -> Vec<u64> {
    let disk = open_ro(path);
    let mut block = vec![0u8; BLOCK as usize];
    disk.read_exact_at(0, &mut block).unwrap();
    block
        .chunks(512)
        .enumerate()
        .filter(|(_, s)| !(s.iter().all(|&b| b == 0) || s.iter().all(|&b| b == DATA)))
        .map(|(i, _)| i as u64 * 512)
        .collect()
}

#[test]
fn a_kill_during_write_zeroes_never_tears_a_sector() {
    if let Some(path) = std::env::var_os(CHILD) {
        child(Path::new(&path));
        return;
    }
    let Some(dir) = tmpfs_dir() else {
        eprintln!("no /dev/shm: skipped");
        return;
    };
    let path = dir.path().join("disk.vhd");
    create(&path, Some(4 * BLOCK), &[("subformat", "dynamic")]);
    {
        let disk = open_rw(&path);
        disk.write_all_at(0, &vec![DATA; BLOCK as usize]).unwrap();
        disk.flush().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    for kill in 0..40u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + kill * 7 % 40));
        // SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child stopped on its own: {status}");
        let torn = torn_sectors(&path);
        assert!(
            torn.is_empty(),
            "kill {kill}: {} torn sector(s), first at {:?}",
            torn.len(),
            torn.first()
        );
    }
}
