//! What the bitmap tests share: a bitmap's dirty map as QEMU exports it, the bitmaps `qemu-img info` lists,
//! `qemu-img check`.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{ok, Scratch};

/// Runs qemu-nbd exporting `image` with bitmap `name` (`-B`) on a socket in the scratch directory.
pub fn export(s: &Scratch, image: &str, name: &str) -> (Child, String) {
    // A fresh socket name each time: a killed qemu-nbd leaves its socket file behind.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let socket = s.path(&format!("nbd{n}.sock"));
    let child = Command::new("qemu-nbd")
        .current_dir(s.dir.path())
        .args(["-r", "-f", "qcow2", "-B", name, "-k"])
        .arg(&socket)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd runs");
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, socket.to_string_lossy().into_owned())
}

/// Bitmap `name` of `image` as dirty extents `(start, length)`: `qemu-img map` of an NBD export with
/// `x-dirty-bitmap`, where dirty ranges read as `"data": false`.
pub fn dirty_map(s: &Scratch, image: &str, name: &str) -> Vec<(u64, u64)> {
    let (mut child, socket) = export(s, image, name);
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={socket},x-dirty-bitmap=qemu:dirty-bitmap:{name}"
    );
    // The socket file appears at bind(), a moment before qemu-nbd listens: retry a refused connection.
    let mut out = s.qemu_img(&["map", "--output=json", "--image-opts", &opts]);
    for _ in 0..50 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        out = s.qemu_img(&["map", "--output=json", "--image-opts", &opts]);
    }
    let _ = child.kill();
    let _ = child.wait();
    let map: serde_json::Value = serde_json::from_str(&ok(&out)).expect("map JSON");
    map.as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| {
            (
                e["start"].as_u64().expect("start"),
                e["length"].as_u64().expect("length"),
            )
        })
        .collect()
}

/// The bitmaps `qemu-img info` lists: (name, granularity, flags).
pub fn info_bitmaps(s: &Scratch, image: &str) -> Vec<(String, u64, Vec<String>)> {
    let out = ok(&s.qemu_img(&["info", "--output=json", image]));
    let info: serde_json::Value = serde_json::from_str(&out).expect("info JSON");
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or_default().to_string(),
                        b["granularity"].as_u64().unwrap_or_default(),
                        b["flags"]
                            .as_array()
                            .map(|f| {
                                f.iter()
                                    .map(|x| x.as_str().unwrap_or_default().to_string())
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn assert_check_clean(s: &Scratch, image: &str) {
    let out = s.qemu_img(&["check", image]);
    assert!(
        out.status.success(),
        "qemu-img check {image}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `a` and `b` list the same bitmaps and that each consistent one has the same dirty map.
pub fn assert_same_bitmaps(s: &Scratch, a: &str, b: &str, context: &str) {
    let listed = info_bitmaps(s, a);
    assert_eq!(info_bitmaps(s, b), listed, "{context}: bitmaps listed");
    for (name, _, flags) in listed {
        if flags.iter().any(|f| f == "in-use") {
            continue;
        }
        assert_eq!(
            dirty_map(s, b, &name),
            dirty_map(s, a, &name),
            "{context}: dirty map of {name}"
        );
    }
}
