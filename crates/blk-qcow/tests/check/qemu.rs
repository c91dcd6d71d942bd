//! Comparing blk's check and repair with `qemu-img check`: reports, problem lines, repair results.

use std::path::{Path, PathBuf};

use blk_core::{CheckReport, HostOpenOptions, ImageAdmin, RepairMode};
use blk_qcow::Qcow2OpenOptions;

use crate::support::{path_str, qemu_create, qemu_img_status, qemu_io, DataFileOpener};

/// qemu-img check's exit code and JSON report.
pub fn qemu_check(path: &Path, repair: Option<&str>) -> (i32, serde_json::Value) {
    let mut args = vec!["check", "--output=json"];
    if let Some(r) = repair {
        args.extend(["-r", r]);
    }
    args.push(path_str(path));
    let (code, out) = qemu_img_status(&args);
    let json =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qemu-img check output {out:?}: {e}"));
    (code, json)
}

/// blk's check through the library, opened as `qemu-img check` opens (check mode; writable to repair;
/// external data files opened through [`DataFileOpener`]).
pub fn blk_check(path: &Path, repair: RepairMode) -> CheckReport {
    let host = HostOpenOptions {
        read_only: repair == RepairMode::None,
        ..HostOpenOptions::default()
    };
    let mut options = Qcow2OpenOptions::new(host, std::sync::Arc::new(DataFileOpener));
    options.check_mode = true;
    let disk = crate::support::open_disk(path, &options).unwrap();
    disk.check(repair).unwrap()
}

/// qemu-img check's exit code for a report.
pub fn exit_class(r: &CheckReport) -> i32 {
    if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    }
}

/// A counter of qemu-img check's JSON report (0 when absent).
pub fn field(json: &serde_json::Value, key: &str) -> u64 {
    json.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// qemu-img check's problem lines (its stderr), in order.
pub fn qemu_messages(path: &Path) -> Vec<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["check", path_str(path)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts that blk's report has qemu-img's exit class, counters and problem lines.
pub fn assert_same_as_qemu(path: &Path) -> CheckReport {
    let (code, json) = qemu_check(path, None);
    let report = blk_check(path, RepairMode::None);
    let ours = [
        ("check-errors", report.check_errors),
        ("corruptions", report.corruptions),
        ("leaks", report.leaks),
        ("image-end-offset", report.image_end_offset.unwrap_or(0)),
        ("total-clusters", report.total_clusters.unwrap_or(0)),
        ("allocated-clusters", report.allocated_clusters.unwrap_or(0)),
        (
            "fragmented-clusters",
            report.fragmented_clusters.unwrap_or(0),
        ),
        (
            "compressed-clusters",
            report.compressed_clusters.unwrap_or(0),
        ),
    ];
    for (key, value) in ours {
        assert_eq!(
            value,
            field(&json, key),
            "{key}: blk {report:#?} qemu {json}"
        );
    }
    assert_eq!(report.messages, qemu_messages(path), "messages");
    assert_eq!(
        exit_class(&report),
        code,
        "exit class: blk {report:#?} qemu {json}"
    );
    report
}

/// Repairs a copy with qemu-img and `path` itself with blk; compares the fixed counters and asserts qemu-img
/// finds blk's result clean.
pub fn repair_like_qemu(path: &Path, mode: RepairMode) -> CheckReport {
    let copy = path.with_extension("qemu-repaired");
    std::fs::copy(path, &copy).unwrap();
    let flag = if mode == RepairMode::All {
        "all"
    } else {
        "leaks"
    };
    let (_, qemu) = qemu_check(&copy, Some(flag));
    let report = blk_check(path, mode);
    assert_eq!(
        report.leaks_fixed,
        field(&qemu, "leaks-fixed"),
        "leaks fixed: blk {report:#?} qemu {qemu}"
    );
    assert_eq!(
        report.corruptions_fixed,
        field(&qemu, "corruptions-fixed"),
        "corruptions fixed: blk {report:#?} qemu {qemu}"
    );
    assert_same_repair_result(path);
    report
}

/// Asserts that qemu-img check finds blk's repair of `path` as qemu's own repair of the copy
/// `repair_like_qemu` made.
pub fn assert_same_repair_result(path: &Path) {
    let (ours, ours_json) = qemu_check(path, None);
    let (theirs, theirs_json) = qemu_check(&path.with_extension("qemu-repaired"), None);
    assert_eq!(
        ours, theirs,
        "blk's repair {ours_json} qemu's {theirs_json}"
    );
    for key in ["corruptions", "leaks", "check-errors", "image-end-offset"] {
        assert_eq!(
            field(&ours_json, key),
            field(&theirs_json, key),
            "{key}: blk's repair {ours_json} qemu's {theirs_json}"
        );
    }
}

/// Asserts that qemu-img check finds `path` clean.
pub fn assert_clean_by_qemu(path: &Path) {
    let (code, json) = qemu_check(path, None);
    assert_eq!(code, 0, "qemu-img check after blk's repair: {json}");
}

/// A 4 MiB image with data in a few clusters, a compressed cluster and a zero cluster.
pub fn populated(dir: &Path, name: &str, options: &str) -> PathBuf {
    let path = dir.join(name);
    qemu_create(&path, options, "4M");
    qemu_io(
        "qcow2",
        &path,
        &[
            "write -P 0x11 0 128k",
            "write -P 0x22 1M 64k",
            "write -c -P 0x33 2M 64k",
            "write -z 3M 64k",
            "write -P 0x44 192k 4k",
        ],
    );
    path
}
