//! The `blk` CLI on VHDX images against qemu-img: create, info, map, check, convert.

use std::path::Path;
use std::process::Command;

fn blk(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blk"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn qemu_img(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn create_info_map_check_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.vhdx");
    let theirs = dir.path().join("theirs.vhdx");
    assert_eq!(
        blk(&[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            s(&ours),
            "64M"
        ])
        .0,
        0
    );
    assert_eq!(
        qemu_img(&[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            s(&theirs),
            "64M"
        ])
        .0,
        0
    );
    for args in [
        ["info", "--output=json"],
        ["map", "--output=json"],
        ["check", "--output=json"],
    ] {
        let (a, ours_out) = blk(&[args[0], args[1], "-f", "vhdx", s(&ours)]);
        let (b, theirs_out) = qemu_img(&[args[0], args[1], "-f", "vhdx", s(&theirs)]);
        assert_eq!(a, b, "{args:?}");
        let ours_json: serde_json::Value = serde_json::from_str(&ours_out).unwrap();
        let theirs_json: serde_json::Value = serde_json::from_str(&theirs_out).unwrap();
        if args[0] == "map" {
            assert_eq!(ours_json, theirs_json);
        } else {
            assert_eq!(ours_json["virtual-size"], theirs_json["virtual-size"]);
            assert_eq!(ours_json["cluster-size"], theirs_json["cluster-size"]);
        }
    }
    assert_eq!(
        blk(&["io", "-f", "vhdx", "-c", "write -P 0xab 0 1M", s(&ours)]).0,
        0
    );
    assert_eq!(qemu_img(&["check", "-f", "vhdx", s(&ours)]).0, 0);
}
