//! Raw over a real block device: a loop device over a temporary file. Needs root and loop devices; where
//! `losetup` cannot attach one (an unprivileged build, a container without /dev/loop*), the test says so and
//! passes without checking anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use blk_core::{DiskFile, ErrorKind, ExtentKind};
use common::*;

/// A loop device attached to a file, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(file: &Path, sector_size: u32) -> Option<LoopDevice> {
        let output = Command::new("losetup")
            .args(["-f", "--show", "-b", &sector_size.to_string()])
            .arg(file)
            .output()
            .ok()?;
        if !output.status.success() {
            eprintln!(
                "skipping: losetup cannot attach a loop device here: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        Some(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn backing_file(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("backing.img");
    std::fs::write(&path, pattern(3, size as usize)).unwrap();
    path
}

#[test]
fn raw_serves_a_block_device() {
    let _serial = serial();
    let dir = tempdir();
    let size = 8 << 20;
    let file = backing_file(dir.path(), size);
    let Some(device) = LoopDevice::attach(&file, 512) else {
        return;
    };
    let disk = open_disk(&device.0, rw()).unwrap();
    assert!(disk.host_file().is_block_device());
    assert_eq!(disk.logical_size(), size);
    assert_eq!(disk.physical_size().unwrap(), size);
    let topology = disk.topology();
    assert_eq!(topology.logical_block_size, 512);
    assert!(topology.physical_block_size >= 512);

    let mut head = vec![0u8; 4096];
    disk.read_exact_at(0, &mut head).unwrap();
    assert_eq!(head, pattern(3, 4096));
    disk.write_all_at(1000, b"through the device").unwrap();
    disk.write_zeroes(1 << 20, 1 << 20, false).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0xffu8; 1 << 20];
    disk.read_exact_at(1 << 20, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // Discard on a device is advisory: it must succeed (or be ignored), not fail the request.
    disk.discard(4 << 20, 1 << 20).unwrap();
    // A device has no holes to report: its map is one run of data (or whatever SEEK_DATA says), tiling it.
    let run = disk.map(0, size).unwrap();
    assert_eq!(run.offset, 0);
    assert!(run.length > 0 && run.length <= size);
    assert_ne!(run.kind, ExtentKind::Unallocated);
    let err = disk.write_all_at(size - 1, b"xy").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    drop(disk);

    let direct = open_disk(&device.0, direct()).unwrap();
    let mut odd = vec![0u8; 18];
    direct.read_exact_at(1000, &mut odd).unwrap();
    assert_eq!(&odd, b"through the device");
    drop(direct);
    drop(device);
    let contents = std::fs::read(&file).unwrap();
    assert_eq!(&contents[1000..1018], b"through the device");
    assert!(contents[1 << 20..2 << 20].iter().all(|&b| b == 0));
}

#[test]
fn a_4k_device_shows_4k_sectors() {
    let _serial = serial();
    let dir = tempdir();
    let file = backing_file(dir.path(), 4 << 20);
    let Some(device) = LoopDevice::attach(&file, 4096) else {
        return;
    };
    let disk = open_disk(&device.0, direct()).unwrap();
    let topology = disk.topology();
    assert_eq!(topology.logical_block_size, 4096);
    assert!(topology.physical_block_size >= 4096);
    // Unaligned requests are bounced to the device's 4 KiB alignment.
    let mut odd = vec![0u8; 700];
    disk.read_exact_at(4096 * 3 + 100, &mut odd).unwrap();
    assert_eq!(odd, pattern(3, 4 << 20)[4096 * 3 + 100..4096 * 3 + 800]);
    disk.write_all_at(5000, b"bounced").unwrap();
    let mut back = [0u8; 7];
    disk.read_exact_at(5000, &mut back).unwrap();
    assert_eq!(&back, b"bounced");
}
