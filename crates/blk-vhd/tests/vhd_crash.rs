//! A dynamic VHD killed at every step of a block allocation (every write, flush and allocation of the host
//! file failing from the nth modifying call on, as a process killed there leaves its file): the image opens,
//! checks clean (leaks allowed), `check -r all` repairs what it reports, and a check after the repair is clean
//! with no leak; data written before stays, and the interrupted write reads as zeros or as written.

mod common;

use std::sync::Arc;

use blk_core::{DiskFile, ImageAdmin, RepairMode};
use common::*;

const BLOCK: u64 = 2 << 20;

/// Opens `path`, writes `data` at `offset` and flushes: the outcome (ok or not), and the image still open
/// (closing it takes steps of its own: a file grown ahead is cut back).
fn write_once(
    path: &std::path::Path,
    offset: u64,
    data: &[u8],
) -> (bool, Option<blk_core::MappedDisk<blk_vhd::Vhd>>) {
    let disk = match blk_vhd::Vhd::open(path, &blk_vhd::VhdOpenOptions::new(rw(), VhdOpener::new()))
    {
        Ok(vhd) => blk_core::MappedDisk::new(vhd),
        Err(_) => return (false, None),
    };
    let ok = disk.write_all_at(offset, data).is_ok();
    (ok && disk.flush().is_ok(), Some(disk))
}

#[test]
fn a_kill_at_any_step_of_an_allocation_leaves_an_image_that_opens_checks_and_repairs() {
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    create(&base, Some(8 * BLOCK), &[("subformat", "dynamic")]);
    let first = pattern(0x5a, 64 << 10);
    open_rw(&base).write_all_at(0, &first).unwrap();

    // The number of modifying calls of one allocating write (and its flush), counted on a copy.
    let counting = dir.path().join("counting.vhd");
    std::fs::copy(&base, &counting).unwrap();
    let counter = Arc::new(FaultInjector::new(Vec::new()));
    let registration = counter.register(&counting).unwrap();
    let second = pattern(0xc3, 12 << 10);
    let at = 3 * BLOCK + 4096;
    let (written, disk) = write_once(&counting, at, &second);
    assert!(written);
    let steps = counter.modifications();
    assert!(steps >= 4, "an allocation takes several steps, saw {steps}");
    drop(disk);
    drop(registration);
    // With the close (the file grown ahead cut back).
    let all_steps = counter.modifications();

    let mut kills = 0;
    for kill_at in 1..=all_steps + 1 {
        let path = dir.path().join(format!("kill-{kill_at}.vhd"));
        std::fs::copy(&base, &path).unwrap();
        let injector = Arc::new(FaultInjector::new(vec![FaultRule::kill(kill_at)]));
        let registration = injector.register(&path).unwrap();
        let (written, disk) = write_once(&path, at, &second);
        drop(disk);
        drop(registration);
        assert_eq!(
            written,
            kill_at > steps,
            "kill at step {kill_at} of {steps}"
        );
        kills += injector.injected().min(1);

        // Opens, reads what was there before, and the new range reads as zeros or as written.
        let disk = open_rw(&path);
        let mut back = vec![0u8; first.len()];
        disk.read_exact_at(0, &mut back).unwrap();
        assert_eq!(back, first, "kill at step {kill_at}: earlier data");
        let mut back = vec![0u8; second.len()];
        disk.read_exact_at(at, &mut back).unwrap();
        assert!(
            back == second || back.iter().all(|&b| b == 0),
            "kill at step {kill_at}: the interrupted write reads as neither zeros nor the data"
        );
        let report = disk.image().check(RepairMode::None).unwrap();
        assert_eq!(
            report.corruptions, 0,
            "kill at step {kill_at}: {:?}",
            report.messages
        );
        let repaired = disk.image().check(RepairMode::All).unwrap();
        assert_eq!(repaired.corruptions, 0, "{:?}", repaired.messages);
        assert_eq!(repaired.leaks, 0, "{:?}", repaired.messages);
        drop(disk);

        let disk = open_rw(&path);
        let after = disk.image().check(RepairMode::None).unwrap();
        assert_eq!(
            (after.corruptions, after.leaks),
            (0, 0),
            "kill at step {kill_at}, after repair: {:?}",
            after.messages
        );
        // Still writable: the next allocation goes where the interrupted one would have.
        disk.write_all_at(5 * BLOCK, &second).unwrap();
        drop(disk);
        let disk = open_rw(&path);
        let mut back = vec![0u8; second.len()];
        disk.read_exact_at(5 * BLOCK, &mut back).unwrap();
        assert_eq!(back, second);
        let report = disk.image().check(RepairMode::None).unwrap();
        assert_eq!(
            (report.corruptions, report.leaks),
            (0, 0),
            "{:?}",
            report.messages
        );
        drop(disk);
        if have_qemu() {
            let out = std::process::Command::new("qemu-img")
                .args(["compare", "-f", "vpc", "-F", "vpc"])
                .arg(&path)
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "qemu-img reads the image back: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(
        kills, all_steps,
        "every kill before the end injected a fault"
    );
}

#[test]
fn check_repairs_a_file_that_ends_without_a_footer() {
    // What an allocation killed between its data and its footer left before the footer moved first: the block's
    // bitmap and data where the footer was, no footer at the end. `check -r all` must repair what it reports.
    let dir = tempdir();
    let path = dir.path().join("torn.vhd");
    create(&path, Some(8 * BLOCK), &[("subformat", "dynamic")]);
    open_rw(&path)
        .write_all_at(0, &pattern(0x11, 4096))
        .unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    // An unlinked block's bitmap and part of its data over the footer, and past it.
    file.write_all_at(&vec![0xffu8; 512], len - 512).unwrap();
    file.write_all_at(&pattern(0x77, 64 << 10), len).unwrap();
    drop(file);

    let disk = open_rw(&path);
    let report = disk.image().check(RepairMode::None).unwrap();
    assert!(report.corruptions > 0, "the missing footer is reported");
    let repaired = disk.image().check(RepairMode::All).unwrap();
    assert_eq!(repaired.corruptions, 0, "{:?}", repaired.messages);
    assert!(repaired.corruptions_fixed > 0);
    drop(disk);
    let disk = open_rw(&path);
    let after = disk.image().check(RepairMode::None).unwrap();
    assert_eq!(
        (after.corruptions, after.leaks),
        (0, 0),
        "{:?}",
        after.messages
    );
    let mut back = vec![0u8; 4096];
    disk.read_exact_at(0, &mut back).unwrap();
    assert_eq!(back, pattern(0x11, 4096));
}
