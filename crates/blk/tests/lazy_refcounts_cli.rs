//! Lazy refcounts through the CLI on both I/O paths, against QEMU on twins: allocating writes with flushes by
//! `blk bench` on io_uring (and the thread pool) and by `blk io` (the synchronous path) into images
//! `qemu-img create -o lazy_refcounts=on` made; the same commands by qemu-img / qemu-io on the twin. After
//! blk closes: `qemu-img check` clean, the dirty bit clear, `qemu-img info` as the twin's, `qemu-img compare`
//! equal, and qemu-io reads the data back.

mod common;

use common::*;

/// Whether the dirty bit (incompatible feature bit 0) is set in the image file.
fn dirty_on_disk(s: &Scratch, name: &str) -> bool {
    let head = s.read(name);
    head.get(79).is_some_and(|b| b & 1 != 0)
}

/// Makes the twins `b.qcow2` (for blk) and `q.qcow2` (for QEMU).
fn twins(s: &Scratch) {
    for name in ["b.qcow2", "q.qcow2"] {
        let _ = std::fs::remove_file(s.path(name));
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1,lazy_refcounts=on",
            name,
            "16M",
        ]));
    }
}

/// The checks after both tools wrote their twin.
fn assert_twins_agree(s: &Scratch, what: &str) {
    for name in ["b.qcow2", "q.qcow2"] {
        assert!(!dirty_on_disk(s, name), "{what}: {name} left dirty");
        let check = s.qemu_img(&["check", "--output=json", name]);
        assert_eq!(code(&check), 0, "{what}: {name}: {}", stdout(&check));
    }
    assert_eq!(
        qemu_info_without_names(s, "b.qcow2"),
        qemu_info_without_names(s, "q.qcow2"),
        "{what}: qemu-img info"
    );
    ok(&s.qemu_img(&["compare", "-q", "b.qcow2", "q.qcow2"]));
}

#[test]
fn bench_writes_with_flushes_on_io_uring_and_threads() {
    let s = Scratch::new();
    // A sandbox may forbid io_uring to qemu-img: then the thread pool only.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "probe.raw", "1M"]));
    let uring = s
        .qemu_img(&[
            "bench",
            "-f",
            "raw",
            "-t",
            "none",
            "-c",
            "1",
            "-i",
            "io_uring",
            "probe.raw",
        ])
        .status
        .success();
    let mut aios = vec!["threads"];
    if uring {
        aios.push("io_uring");
    } else {
        eprintln!("qemu-img bench -i io_uring does not work here: thread pool only");
    }
    for aio in aios {
        for (depth, interval) in [("1", "1"), ("4", "8")] {
            twins(&s);
            let args = |image: &'static str| {
                vec![
                    "bench",
                    "-w",
                    "-f",
                    "qcow2",
                    "-t",
                    "none",
                    "-i",
                    aio,
                    "-c",
                    "96",
                    "-d",
                    depth,
                    "-s",
                    "4096",
                    "-S",
                    "69632",
                    "--pattern=0x5a",
                    "--flush-interval",
                    interval,
                    image,
                ]
            };
            let out = s.blk(&args("b.qcow2"));
            ok(&out);
            assert!(stderr(&out).is_empty(), "{aio}: blk said: {}", stderr(&out));
            ok(&s.qemu_img(&args("q.qcow2")));
            assert_twins_agree(&s, &format!("{aio}, depth {depth}"));
            // The last request: 95 steps of 68 KiB in.
            let read = s.qemu_io(&qemu_io_args(
                "qcow2",
                "b.qcow2",
                &["read -P 0x5a 6460k 4k", "read -P 0 6464k 4k"],
            ));
            assert!(
                !stdout(&read).contains("verification failed"),
                "{}",
                stdout(&read)
            );
        }
    }
}

#[test]
fn io_writes_with_flushes_on_the_synchronous_path() {
    let s = Scratch::new();
    twins(&s);
    let commands = [
        "write -P 1 0 4k",
        "flush",
        "write -P 2 1M 64k",
        "write -P 3 2052k 8k",
        "flush",
        "write -z 1M 4k",
        "discard 2M 64k",
        "write -P 4 15M 4k",
        "flush",
        "write -P 5 8M 512",
    ];
    ok(&s.blk(&qemu_io_args_for_blk("b.qcow2", &commands)));
    ok(&s.qemu_io(&qemu_io_args("qcow2", "q.qcow2", &commands)));
    assert_twins_agree(&s, "blk io");
    let read = s.qemu_io(&qemu_io_args(
        "qcow2",
        "b.qcow2",
        &[
            "read -P 1 0 4k",
            "read -P 0 1M 4k",
            "read -P 2 1028k 60k",
            "read -P 4 15M 4k",
            "read -P 5 8M 512",
        ],
    ));
    assert!(
        !stdout(&read).contains("verification failed"),
        "{}",
        stdout(&read)
    );
}

/// `blk io -f qcow2 -c CMD ... IMAGE`.
fn qemu_io_args_for_blk<'a>(image: &'a str, commands: &'a [&'a str]) -> Vec<&'a str> {
    let mut args = vec!["io"];
    args.extend(qemu_io_args("qcow2", image, commands));
    args
}
