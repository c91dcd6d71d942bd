//! Issue 17: persistent dirty bitmaps kept by blk's writes as QEMU keeps them. qemu-img-made images with
//! bitmaps of two granularities (one disabled) are written by `blk io` (synchronous and io_uring queues, both
//! through blk-factory opens) and their twins by qemu-io; `qemu-img info` then lists the bitmaps consistent,
//! `qemu-img check` is clean and each bitmap's dirty map (an NBD export with `qemu-nbd -B`, read by
//! `qemu-img map`) equals QEMU's. A killed writer leaves `in_use` set, which QEMU reads as it would its own.

mod bitmap_support;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitmap_support::{assert_check_clean, dirty_map, info_bitmaps};
use blk_test_support::have_qemu;
use common::{ok, Scratch};

/// The bitmaps of the test images: (name, granularity option, enabled).
const BITMAPS: [(&str, &str, bool); 3] = [
    ("b64", "64k", true),
    ("b512", "512k", true),
    ("off", "64k", false),
];

/// Twin 64 MiB images `q.img` and `b.img` with [`BITMAPS`], and 4 KiB written at 0 by qemu-io before the
/// disabled one is disabled and the copy (so every bitmap starts with a dirty granule).
fn twins() -> Scratch {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q.img", "64M"]));
    for (name, granularity, _) in BITMAPS {
        ok(&s.qemu_img(&["bitmap", "--add", "-g", granularity, "q.img", name]));
    }
    ok(&s.qemu_io(&["-c", "write -P 1 0 4k", "q.img"]));
    for (name, _, enabled) in BITMAPS {
        if !enabled {
            ok(&s.qemu_img(&["bitmap", "--disable", "q.img", name]));
        }
    }
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    s
}

/// Writes, zero writes (unmapping and not), discards and flushes over granule edges of both granularities.
const COMMANDS: [&str; 10] = [
    "write -P 2 1M 64k",
    "write -P 3 3000k 100",
    "flush",
    "write -z 8M 1M",
    "write -z -u 12M 192k",
    "discard 16M 128k",
    "write -P 4 33M 100",
    "flush",
    "write -P 5 1M 4k",
    "write -P 6 67108352 512",
];

fn qemu_io_args<'a>(commands: &[&'a str], image: &'a str) -> Vec<&'a str> {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", *c]);
    }
    args.push(image);
    args
}

#[test]
fn writes_keep_bitmaps_as_qemu_does() {
    if !have_qemu() {
        return;
    }
    for aio in ["threads", "io_uring"] {
        let s = twins();
        ok(&s.qemu_io(&qemu_io_args(&COMMANDS, "q.img")));
        let mut args = vec!["io", "-i", aio];
        args.extend(qemu_io_args(&COMMANDS, "b.img").into_iter().skip(2));
        ok(&s.blk(&args));
        let listed = info_bitmaps(&s, "b.img");
        assert_eq!(listed, info_bitmaps(&s, "q.img"), "{aio}");
        assert_eq!(
            listed
                .iter()
                .map(|(n, _, f)| (n.as_str(), f.clone()))
                .collect::<Vec<_>>(),
            vec![
                ("b64", vec!["auto".to_string()]),
                ("b512", vec!["auto".to_string()]),
                ("off", vec![]),
            ],
            "{aio}"
        );
        assert_check_clean(&s, "b.img");
        for (name, _, _) in BITMAPS {
            let theirs = dirty_map(&s, "q.img", name);
            assert!(!theirs.is_empty(), "{name}");
            assert_eq!(dirty_map(&s, "b.img", name), theirs, "{aio} {name}");
        }
        ok(&s.qemu_img(&["compare", "q.img", "b.img"]));
    }
}

/// Runs `blk io` with `commands` then a long sleep, and kills it once the writes are done.
fn killed_writer(s: &Scratch, image: &str, commands: &[&str]) {
    let mut args = vec!["io".to_string()];
    for c in commands.iter().chain(&["sleep 100000"]) {
        args.extend(["-c".to_string(), c.to_string()]);
    }
    args.push(image.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_blk"))
        .current_dir(s.dir.path())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("blk runs");
    // Each write's statistics line says it is done.
    let mut out = child.stdout.take().expect("piped");
    let mut seen = String::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let writes = commands.iter().filter(|c| c.starts_with("write")).count();
    while seen.matches(" ops; ").count() < writes && start.elapsed() < Duration::from_secs(30) {
        use std::io::Read;
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn a_killed_writer_leaves_in_use_as_qemu_reads_it() {
    if !have_qemu() {
        return;
    }
    let s = twins();
    killed_writer(&s, "b.img", &["write -P 7 40M 64k"]);
    let flags: Vec<Vec<String>> = info_bitmaps(&s, "b.img")
        .into_iter()
        .map(|(_, _, f)| f)
        .collect();
    let in_use_auto = vec!["in-use".to_string(), "auto".to_string()];
    assert_eq!(
        flags,
        vec![in_use_auto.clone(), in_use_auto.clone(), vec![]],
        "the enabled bitmaps are in use, the disabled one untouched"
    );
    // As QEMU: `check` does not count an inconsistent bitmap as an error; its clusters are referenced.
    assert_check_clean(&s, "b.img");
    ok(&s.blk(&["check", "b.img"]));
    // A writable open keeps the inconsistent bitmaps as they are (QEMU's qemu-io does the same).
    ok(&s.blk(&["io", "-c", "write 0 4k", "b.img"]));
    let after: Vec<Vec<String>> = info_bitmaps(&s, "b.img")
        .into_iter()
        .map(|(_, _, f)| f)
        .collect();
    assert_eq!(after, vec![in_use_auto.clone(), in_use_auto, vec![]]);
    assert_check_clean(&s, "b.img");
    // QEMU refuses to export an inconsistent bitmap; the disabled one still exports.
    assert_eq!(dirty_map(&s, "b.img", "off"), dirty_map(&s, "q.img", "off"));
}

#[test]
fn a_flush_stores_the_bitmaps_and_the_next_new_bit_marks_them_in_use_again() {
    if !have_qemu() {
        return;
    }
    // After a flush, a write inside granules already dirty changes no bit: the stored bitmaps stay
    // consistent and are not marked in use.
    let s = twins();
    killed_writer(&s, "b.img", &["write 1M 4k", "flush", "write 1056768 4k"]);
    let flags: Vec<Vec<String>> = info_bitmaps(&s, "b.img")
        .into_iter()
        .map(|(_, _, f)| f)
        .collect();
    assert_eq!(
        flags,
        vec![vec!["auto".to_string()], vec!["auto".to_string()], vec![]]
    );
    assert_check_clean(&s, "b.img");
    ok(&s.qemu_io(&["-c", "write 1M 4k", "q.img"]));
    for (name, _, _) in BITMAPS {
        assert_eq!(
            dirty_map(&s, "b.img", name),
            dirty_map(&s, "q.img", name),
            "{name}"
        );
    }
    // A write to a clean granule after the flush marks them in use before it lands.
    let s = twins();
    killed_writer(&s, "b.img", &["write 1M 4k", "flush", "write 20M 4k"]);
    let flags: Vec<Vec<String>> = info_bitmaps(&s, "b.img")
        .into_iter()
        .map(|(_, _, f)| f)
        .collect();
    assert_eq!(flags[0], vec!["in-use".to_string(), "auto".to_string()]);
    assert_check_clean(&s, "b.img");
}
