//! Issue 14: `blk io` against qemu-io 10.0.2. Each case runs the same command line with qemu-io and `blk io` on
//! twin copies of an image (qcow2, raw, vpc, vhdx) and compares the exit code, stdout (statistics timings
//! masked) and the resulting images (`qemu-img compare`).

mod common;

use blk_test_support::have_qemu;
use common::{code, ok, stderr, stdout, Scratch};

/// qemu-io's output with the timing numbers of statistics lines masked: `64 KiB, 1 ops; <t>` and `-C`'s
/// `bytes,ops,<t>`.
fn masked(text: &str) -> String {
    text.lines()
        .map(|line| {
            if let Some(at) = line.find(" ops; ") {
                if line.ends_with(" ops/sec)") {
                    return format!("{} ops; <t>", &line[..at]);
                }
            }
            let fields: Vec<&str> = line.split(',').collect();
            let numeric = |f: &str| {
                !f.is_empty()
                    && f.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b':')
            };
            if fields.len() == 5 && fields.iter().all(|f| numeric(f)) {
                return format!("{},{},<t>", fields[0], fields[1]);
            }
            line.to_string()
        })
        .map(|line| line + "\n")
        .collect()
}

/// Twin images `q.img` (for qemu-io) and `b.img` (for blk) of `format`, 4 MiB, with `setup` commands run on
/// both by qemu-io.
fn twins(format: &str, setup: &[&str]) -> Scratch {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", format, "q.img", "4M"]));
    if !setup.is_empty() {
        let mut args = vec!["-f", format];
        for command in setup {
            args.extend(["-c", command]);
        }
        args.push("q.img");
        ok(&s.qemu_io(&args));
    }
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    s
}

/// Runs `args` (with `IMG` standing for the image) through qemu-io on `q.img` and `blk io` on `b.img` and
/// compares them; returns blk's stderr.
fn same(s: &Scratch, format: &str, args: &[&str]) -> String {
    let theirs: Vec<String> = args.iter().map(|a| a.replace("IMG", "q.img")).collect();
    let ours: Vec<String> = std::iter::once("io".to_string())
        .chain(args.iter().map(|a| a.replace("IMG", "b.img")))
        .collect();
    let theirs_ref: Vec<&str> = theirs.iter().map(String::as_str).collect();
    let ours_ref: Vec<&str> = ours.iter().map(String::as_str).collect();
    let q = s.qemu_io(&theirs_ref);
    let b = s.blk(&ours_ref);
    assert!(!stderr(&b).contains("panicked"), "{args:?}: {}", stderr(&b));
    assert_eq!(
        masked(&stdout(&b)),
        masked(&stdout(&q)),
        "stdout of {format} {args:?}; blk stderr: {}; qemu-io stderr: {}",
        stderr(&b),
        stderr(&q)
    );
    assert_eq!(code(&b), code(&q), "exit code of {format} {args:?}");
    if s.path("q.img").exists() {
        let cmp = s.qemu_img(&[
            "compare", "-q", "-f", format, "-F", format, "q.img", "b.img",
        ]);
        assert_eq!(code(&cmp), 0, "images differ after {format} {args:?}");
    }
    stderr(&b)
}

/// `-c` arguments for `commands` on `IMG` with `-f format`.
fn script<'a>(format: &'a str, commands: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-f", format];
    for command in commands {
        args.extend(["-c", *command]);
    }
    args.push("IMG");
    args
}

const FORMATS: &[&str] = &["qcow2", "raw", "vpc", "vhdx"];

#[test]
fn data_commands_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    let cases: &[&[&str]] = &[
        &[
            "write -P 0xa7 0 64k",
            "read -P 0xa7 0 64k",
            "read -C 0 512",
            "read -v 0 40",
        ],
        &[
            "readv 0 512 512",
            "writev -P 1 64k 512 1k",
            "readv -P 1 64k 1536",
            "readv -v -q 0 512",
        ],
        &[
            "aio_write -P 2 128k 4k",
            "aio_flush",
            "aio_read -P 2 128k 4k",
            "aio_flush",
        ],
        &[
            "aio_read -P 3 128k 4k",
            "aio_flush",
            "aio_read -q 0 4k 4k",
            "aio_flush",
        ],
        &[
            "aio_write -C 0 4k",
            "aio_flush",
            "aio_read -v 0 16",
            "aio_flush",
        ],
        &[
            "aio_read -i 0 1",
            "aio_write -i 0 1",
            "aio_write -u 0 1",
            "aio_write -z -P 1 0 1",
            "aio_flush",
        ],
        &[
            "aio_write -z 0 64k 64k",
            "aio_write -z -u 64k 64k",
            "aio_flush",
            "aio_write -f 1k 1k",
            "aio_flush",
        ],
        &[
            "write -z 64k 64k",
            "write -z -u 128k 64k",
            "read -P 0 64k 128k",
        ],
        &[
            "write 1 1",
            "read 0 513",
            "read 1 512",
            "read -P 0xcd 1 1",
            "read -l 1 -s 1 -P 0 0 2",
        ],
        &[
            "write -s pattern.bin 0 10k",
            "read -v 0 48",
            "write -s missing.bin 0 1",
        ],
        &[
            "write -f 0 512",
            "write -C 0 512",
            "write -q 4k 4k",
            "read 0 512 -P 0xcd",
            "flush",
        ],
        &[
            "write -c 0 64k",
            "write -c 0 4k",
            "write -z -c 0 1",
            "write -c -f 0 512",
        ],
        &[
            "write -u 0 1",
            "write -z -P 1 0 1",
            "write -n 0 512",
            "write -z -n 0 64k",
        ],
        &[
            "read 0 3G",
            "write 0 3G",
            "readv 0 3G",
            "read 0 -1",
            "read x 1",
            "read 0 1x",
        ],
        &[
            "read -P 300 0 1",
            "read -s 1 0 10",
            "read -P 1 -s 20 0 10",
            "read -x 0 1",
            "read -P",
        ],
        &[
            "read", "write 0", "readv 0", "flush x", "bogus", "length 1", "map 1", "alloc",
        ],
    ];
    for format in FORMATS {
        for commands in cases {
            let s = twins(format, &[]);
            s.write("pattern.bin", b"abc");
            same(&s, format, &script(format, commands));
        }
    }
}

#[test]
fn discard_matches_qemu_io() {
    if !have_qemu() {
        return;
    }
    // qemu's VHDX driver ignores discards (blk's frees the blocks), so VHDX discards where nothing is written.
    for format in FORMATS {
        let setup: &[&str] = if *format == "vhdx" {
            &[]
        } else {
            &["write -P 0x11 0 1M"]
        };
        let s = twins(format, setup);
        let commands = &[
            "discard 0 64k",
            "discard -q 64k 64k",
            "discard -C 128k 512",
            "discard 0 3G",
        ];
        same(&s, format, &script(format, commands));
    }
}

#[test]
fn image_commands_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    for format in FORMATS {
        let s = twins(
            format,
            &["write -P 1 0 64k", "write -z 1M 64k", "write -P 2 2M 4k"],
        );
        let commands = &[
            "length",
            "info",
            "map",
            "alloc 0",
            "alloc 0 128k",
            "alloc 64k 2M",
            "alloc 1 1",
            "alloc 8M",
            "alloc 3M 8M",
            "a 0",
            "l",
            "i",
        ];
        same(&s, format, &script(format, commands));
    }
}

#[test]
fn truncate_matches_qemu_io() {
    if !have_qemu() {
        return;
    }
    for format in ["qcow2", "raw"] {
        let s = twins(format, &["write -P 5 0 2M"]);
        let commands = &[
            "truncate 1M",
            "length",
            "map",
            "read -P 5 0 1M",
            "truncate 3M",
            "read -P 0 1M 2M",
            "t -m bogus 3M",
            "truncate x",
            "length",
        ];
        same(&s, format, &script(format, commands));
    }
    for format in ["vpc", "vhdx"] {
        let s = twins(format, &[]);
        same(&s, format, &script(format, &["truncate 8M", "length"]));
    }
}

#[test]
fn session_commands_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    let s = twins("qcow2", &[]);
    let cases: &[&[&str]] = &[
        &[
            "-c",
            "sleep 10",
            "-c",
            "sleep x",
            "-c",
            "close",
            "-c",
            "length",
            "-c",
            "open -r IMG",
            "-c",
            "length",
            "-c",
            "quit",
            "-c",
            "length",
            "IMG",
        ],
        &[
            "-c",
            "open IMG",
            "-c",
            "length",
            "-c",
            "open IMG",
            "-c",
            "write -q 0 512",
            "-c",
            "c",
            "-c",
            "o -r IMG",
            "-c",
            "w 0 512",
            "IMG",
        ],
        &["-c", "open missing.img", "-c", "length"],
        &["-c", "length"],
        &[
            "-c",
            "help",
            "-c",
            "help read",
            "-c",
            "help r",
            "-c",
            "help map",
            "-c",
            "help bogus",
            "-c",
            "help a b",
        ],
        &[
            "-c",
            "help write",
            "-c",
            "help writev",
            "-c",
            "help aio_read",
            "-c",
            "help aio_write",
            "-c",
            "help open",
        ],
        &[
            "-c",
            "help readv",
            "-c",
            "help discard",
            "-c",
            "help reopen",
            "-c",
            "help sigraise",
            "-c",
            "help ?",
        ],
        &[
            "-c",
            "reopen -r",
            "-c",
            "write 0 1",
            "-c",
            "reopen -w",
            "-c",
            "write -q 0 1",
            "-c",
            "reopen a",
            "IMG",
        ],
        &[
            "-c",
            "break a b",
            "-c",
            "resume a",
            "-c",
            "remove_break a",
            "-c",
            "zone_report 0 1",
            "IMG",
        ],
        &[
            "-c",
            "sigraise 0",
            "-c",
            "sigraise x",
            "-c",
            "abort 1",
            "-c",
            "q",
            "-c",
            "abort",
            "IMG",
        ],
        &[
            "-r",
            "-c",
            "write 0 512",
            "-c",
            "discard 0 512",
            "-c",
            "truncate 1M",
            "-c",
            "read 0 512",
            "IMG",
        ],
    ];
    for args in cases {
        same(&s, "qcow2", args);
    }
}

#[test]
fn command_line_options_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    let s = Scratch {
        dir: blk_test_support::target_tempdir!("io-options"),
    };
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q.img", "1M"]));
    std::fs::copy(s.path("q.img"), s.path("b.img")).expect("copy twin");
    let cases: &[&[&str]] = &[
        &["IMG", "-c", "write -P 3 0 4k", "-f", "qcow2"],
        &["-U", "-r", "IMG", "-c", "read -P 3 0 4k"],
        &["-n", "-i", "io_uring", "-c", "read 0 4k", "IMG"],
        &["-t", "none", "-i", "native", "-c", "read 0 4k", "IMG"],
        &["-k", "-n", "-c", "read 0 4k", "IMG"],
        &["-i", "threads", "-c", "read 0 4k", "IMG"],
        &["-t", "writethrough", "-c", "write 0 4k", "IMG"],
        &["-C", "-c", "read 0 4k", "IMG"],
        &["-d", "unmap", "-c", "discard 0 64k", "IMG"],
        &[
            "--image-opts",
            "-c",
            "length",
            "driver=qcow2,file.filename=IMG",
        ],
        &[
            "-s",
            "-c",
            "write -P 9 0 64k",
            "-c",
            "read -P 9 0 64k",
            "-c",
            "map",
            "-c",
            "info",
            "IMG",
        ],
        &[
            "-c",
            "open -s IMG",
            "-c",
            "write -P 8 0 64k",
            "-c",
            "read -P 8 0 64k",
        ],
        &[
            "-d",
            "ignore",
            "-c",
            "write -P 1 0 1M",
            "-c",
            "discard 0 512k",
            "-c",
            "write -z -u 512k 512k",
            "-c",
            "map",
            "IMG",
        ],
        &[
            "-c",
            "open -d off IMG",
            "-c",
            "discard 0 64k",
            "-c",
            "read -P 1 0 64k",
            "-c",
            "map",
        ],
    ];
    for args in cases {
        same(&s, "qcow2", args);
    }
    // Options refused before any open: exit code 1 and qemu-io's message.
    for (args, message) in [
        (
            &["-U", "-c", "read 0 1", "IMG"][..],
            "force-share=on can only be used with read-only images",
        ),
        (
            &["-i", "native", "-c", "read 0 1", "IMG"],
            "aio=native was specified, but it requires cache.direct=on",
        ),
        (
            &["-i", "bogus", "-c", "read 0 1", "IMG"],
            "Invalid aio option: bogus",
        ),
        (
            &["-t", "bogus", "-c", "read 0 1", "IMG"],
            "Invalid cache option: bogus",
        ),
        (
            &["-c", "read 0 1", "missing.img"],
            "No such file or directory",
        ),
    ] {
        let err = same(&s, "qcow2", args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn stdin_commands_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = twins("qcow2", &[]);
    for input in [
        "write 0 512\nbogus\nread -P 0xcd 0 512\nlength\n",
        "write -P 7 0 4k\nquit\nlength\n",
        "",
        "read  0   512\n\nmap",
    ] {
        let run = |program: &str, args: &[&str]| {
            let mut child = Command::new(program)
                .args(args)
                .current_dir(s.dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
            child.wait_with_output().expect("wait")
        };
        let q = run("qemu-io", &["-f", "qcow2", "q.img"]);
        let b = run(env!("CARGO_BIN_EXE_blk"), &["io", "-f", "qcow2", "b.img"]);
        let unmask =
            |out: &std::process::Output| masked(&stdout(out).replace("qemu-io> ", "qemu-io> \n"));
        assert_eq!(unmask(&b), unmask(&q), "stdin {input:?}");
        assert_eq!(code(&b), code(&q), "exit code, stdin {input:?}");
    }
    let cmp = s.qemu_img(&["compare", "-q", "q.img", "b.img"]);
    assert_eq!(code(&cmp), 0);
}

#[test]
fn copy_on_read_matches_qemu_io() {
    if !have_qemu() {
        return;
    }
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 1M", "base.qcow2"]));
    for name in ["q.img", "b.img"] {
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            name,
        ]));
    }
    let args = &[
        "-C",
        "-c",
        "read -P 7 4k 8k",
        "-c",
        "read 2M 4k",
        "-c",
        "readv 960k 128k",
        "-c",
        "map",
        "IMG",
    ];
    same(&s, "qcow2", args);
    let map = |name: &str| ok(&s.qemu_img(&["map", "--output=json", name]));
    assert_eq!(map("b.img"), map("q.img"));
}

#[test]
fn probed_raw_writes_keep_the_format() {
    if !have_qemu() {
        return;
    }
    let s = twins("raw", &[]);
    s.write("qcow2-magic.bin", b"QFI\xfb\0\0\0\x03");
    let args = &[
        "-c",
        "write 1 1",
        "-c",
        "write 510 4",
        "-c",
        "write -s qcow2-magic.bin 0 512",
        "-c",
        "write -s qcow2-magic.bin 0 8",
        "-c",
        "writev -P 0x51 0 512",
        "-c",
        "aio_write -P 0x51 0 1",
        "-c",
        "aio_flush",
        "-c",
        "write -P 0x51 512 512",
        "IMG",
    ];
    let err = same(&s, "raw", args);
    assert!(err.contains("probing guessed raw"), "{err}");
}
