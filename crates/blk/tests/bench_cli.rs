//! `blk bench` against `qemu-img bench`: the same output lines for the same arguments (the time aside), the
//! same bytes written at the same offsets (twin images compared with `qemu-img compare`), the blk extras
//! (`--queues`, `--random`), and bad arguments failing as qemu-img's do (exit code 1, one `blk:` line).

mod common;

use common::{code, ok, stderr, stdout, Scratch};

/// stdout with the run's duration blanked out.
fn without_time(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("Run completed in ") {
            Some(_) => "Run completed in X seconds.",
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Run completed in` line is there, with three decimals as qemu's `%3.3f` prints.
fn assert_completed(out: &str) {
    let line = out
        .lines()
        .find(|l| l.starts_with("Run completed in "))
        .unwrap_or_else(|| panic!("no result line in {out:?}"));
    let number = line
        .strip_prefix("Run completed in ")
        .and_then(|l| l.strip_suffix(" seconds."))
        .unwrap_or_else(|| panic!("bad result line {line:?}"));
    let (_, decimals) = number.split_once('.').expect("a decimal point");
    assert_eq!(decimals.len(), 3, "{line}");
    assert!(number.parse::<f64>().is_ok(), "{line}");
}

/// Runs `bench ARGS IMAGE` with both tools (qemu-img gets `qemu_aio` where blk gets `blk_aio`) and checks the
/// outputs are the same lines.
fn same_output(s: &Scratch, image: &str, args: &[&str], qemu_aio: &[&str], blk_aio: &[&str]) {
    let run = |blk: bool| {
        let mut full = vec!["bench"];
        full.extend_from_slice(args);
        full.extend_from_slice(if blk { blk_aio } else { qemu_aio });
        full.push(image);
        if blk {
            s.blk(&full)
        } else {
            s.qemu_img(&full)
        }
    };
    let theirs = run(false);
    let ours = run(true);
    let (theirs_out, ours_out) = (ok(&theirs), ok(&ours));
    assert_completed(&ours_out);
    assert_eq!(
        without_time(&ours_out),
        without_time(&theirs_out),
        "bench {args:?} {blk_aio:?} on {image}; blk stderr: {}",
        stderr(&ours)
    );
    // As qemu-img, nothing on stderr, unless the backend asked for is not available (a warning says why).
    assert!(
        stderr(&ours)
            .lines()
            .all(|l| l.starts_with("blk: warning: ")),
        "{}",
        stderr(&ours)
    );
}

fn images(s: &Scratch) {
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "d.raw", "2M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "d.qcow2", "2M"]));
    // Data to read: every cluster allocated.
    for image in [("raw", "d.raw"), ("qcow2", "d.qcow2")] {
        ok(&s.qemu_io(&["-f", image.0, "-c", "write -P 0x5a 0 2M", image.1]));
    }
}

#[test]
fn output_lines_match_qemu_img_with_every_aio() {
    let s = Scratch::new();
    images(&s);
    let workloads: &[&[&str]] = &[
        &["-c", "300", "-d", "8"],
        &[
            "-c", "100", "-d", "4", "-s", "8k", "-S", "12288", "-o", "4096", "-q",
        ],
        &[
            "-w",
            "-c",
            "64",
            "-d",
            "8",
            "--flush-interval=16",
            "--pattern=5",
        ],
        &[
            "-w",
            "-c",
            "40",
            "-d",
            "4",
            "--flush-interval=4",
            "--no-drain",
            "-S",
            "0x3000",
        ],
    ];
    // (qemu's -i, blk's -i): blk's own names map to qemu's.
    let aios: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        (&["-i", "threads"], &["-i", "threads"]),
        (&["-i", "threads"], &["-i", "sync"]),
        (&["-i", "native"], &["-i", "native"]),
        (&["-i", "native"], &["-i", "aio"]),
        (&["-n"], &["-n"]),
        (&["-i", "io_uring"], &["-i", "io_uring"]),
    ];
    // A sandbox may forbid io_uring or native AIO to qemu-img (blk then falls back and says so): compare what
    // qemu-img can run here.
    let aios: Vec<_> = aios
        .iter()
        .filter(|(qemu_aio, _)| {
            let mut probe = vec!["bench", "-f", "raw", "-t", "none", "-c", "1"];
            probe.extend_from_slice(qemu_aio);
            probe.push("d.raw");
            let works = s.qemu_img(&probe).status.success();
            if !works {
                eprintln!("qemu-img bench {qemu_aio:?} does not work here: not compared");
            }
            works
        })
        .collect();
    for (format, image) in [("raw", "d.raw"), ("qcow2", "d.qcow2")] {
        for args in workloads {
            for (qemu_aio, blk_aio) in &aios {
                let mut full = vec!["-f", format, "-t", "none"];
                full.extend_from_slice(args);
                same_output(&s, image, &full, qemu_aio, blk_aio);
            }
            // The page cache and the other cache modes, with the default backend.
            for cache in ["writeback", "writethrough", "directsync", "unsafe"] {
                let mut full = vec!["-f", format, "-t", cache];
                full.extend_from_slice(args);
                same_output(&s, image, &full, &[], &[]);
            }
        }
    }
}

/// Twin images written by `qemu-img bench -w` and `blk bench -w` with the same arguments compare equal.
#[test]
fn writes_land_where_qemu_img_writes_them() {
    let s = Scratch::new();
    let workloads: &[&[&str]] = &[
        &["-w", "--pattern=0xa5", "-c", "37", "-d", "4", "-S", "12288"],
        // Unaligned start, a step that wraps several times, requests of 3 KiB.
        &[
            "-w",
            "--pattern=7",
            "-c",
            "500",
            "-d",
            "16",
            "-s",
            "3k",
            "-S",
            "77824",
            "-o",
            "512",
        ],
        &[
            "-w",
            "--pattern=200",
            "-c",
            "90",
            "-d",
            "8",
            "--flush-interval=8",
            "-S",
            "1M",
        ],
        &[
            "-w",
            "--pattern=1",
            "-c",
            "90",
            "-d",
            "8",
            "--flush-interval=9",
            "--no-drain",
        ],
    ];
    for (format, create) in [("raw", &["-f", "raw"]), ("qcow2", &["-f", "qcow2"])] {
        for (i, args) in workloads.iter().enumerate() {
            let (theirs, ours) = (format!("q{i}.{format}"), format!("b{i}.{format}"));
            for name in [&theirs, &ours] {
                let mut c = vec!["create", "-q"];
                c.extend_from_slice(create);
                c.extend([name.as_str(), "4M"]);
                ok(&s.qemu_img(&c));
            }
            let mut q = vec!["bench", "-f", format];
            q.extend_from_slice(args);
            let mut b = q.clone();
            q.push(&theirs);
            b.push(&ours);
            ok(&s.qemu_img(&q));
            ok(&s.blk(&b));
            let cmp = s.qemu_img(&["compare", "-f", format, "-F", format, &theirs, &ours]);
            assert_eq!(code(&cmp), 0, "{args:?} on {format}: {}", stdout(&cmp));
            if format == "qcow2" {
                ok(&s.qemu_img(&["check", "-f", "qcow2", &ours]));
            } else {
                assert!(
                    s.read(&theirs) == s.read(&ours),
                    "{args:?}: raw files differ"
                );
            }
        }
    }
}

#[test]
fn queues_split_the_same_offsets() {
    let s = Scratch::new();
    for name in ["q.qcow2", "b.qcow2"] {
        ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", name, "1M"]));
    }
    // 300 requests with a scattering step, split over 2 and 3 queues: the same clusters as one qemu-img run.
    let args = [
        "bench",
        "-f",
        "qcow2",
        "-w",
        "--pattern=0x33",
        "-c",
        "300",
        "-d",
        "4",
        "-S",
        "36864",
    ];
    let mut q = args.to_vec();
    q.push("q.qcow2");
    ok(&s.qemu_img(&q));
    for queues in ["2", "3"] {
        let mut b = args.to_vec();
        b.extend(["--queues", queues, "b.qcow2"]);
        let out = ok(&s.blk(&b));
        assert_completed(&out);
        assert_eq!(out.lines().count(), 2, "one result line for the run: {out}");
        let cmp = s.qemu_img(&["compare", "q.qcow2", "b.qcow2"]);
        assert_eq!(code(&cmp), 0, "--queues {queues}: {}", stdout(&cmp));
        ok(&s.qemu_img(&["check", "b.qcow2"]));
    }
    // Reads on several queues, more queues than requests.
    ok(&s.blk(&[
        "bench", "-c", "1000", "--queues", "4", "-t", "none", "b.qcow2",
    ]));
    ok(&s.blk(&["bench", "-c", "2", "--queues", "4", "b.qcow2"]));
}

#[test]
fn random_offsets_are_aligned_reproducible_and_inside() {
    let s = Scratch::new();
    for name in ["r1.raw", "r2.raw", "r3.raw"] {
        ok(&s.qemu_img(&["create", "-q", "-f", "raw", name, "1M"]));
    }
    let run = |name: &str, seed: &str| {
        ok(&s.blk(&[
            "bench",
            "-f",
            "raw",
            "-w",
            "--pattern=9",
            "-c",
            "100",
            "-d",
            "8",
            "-s",
            "8k",
            "--random",
            seed,
            "--queues",
            "2",
            name,
        ]))
    };
    run("r1.raw", "1");
    run("r2.raw", "1");
    run("r3.raw", "2");
    let (one, again, other) = (s.read("r1.raw"), s.read("r2.raw"), s.read("r3.raw"));
    assert!(one == again, "the same seed writes the same blocks");
    assert!(one != other, "another seed writes other blocks");
    let written = one
        .chunks(8192)
        .filter(|c| c.iter().all(|&b| b == 9))
        .count();
    let untouched = one
        .chunks(8192)
        .filter(|c| c.iter().all(|&b| b == 0))
        .count();
    assert_eq!(written + untouched, 128, "whole aligned 8 KiB blocks");
    assert!(
        written > 30 && written < 128,
        "scattered: {written} blocks written"
    );
    assert_eq!(one.len(), 1 << 20, "nothing written past the end");
    // Reads at random offsets of an image whose size is not a multiple of the buffer size stay inside.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "odd.raw", "100000"]));
    ok(&s.blk(&[
        "bench", "-f", "raw", "-c", "500", "--random", "7", "odd.raw",
    ]));
}

/// Both tools fail with exit code 1; blk prints as many lines as qemu-img (one, or a usage error and its `Try
/// ... --help` line), the first starting `blk` and holding qemu-img's message.
fn same_failure(s: &Scratch, args: &[&str], compare_message: bool) {
    let theirs = s.qemu_img(args);
    let ours = s.blk(args);
    assert_eq!(code(&theirs), 1, "qemu-img {args:?}: {}", stderr(&theirs));
    assert_eq!(code(&ours), 1, "blk {args:?}: {}", stderr(&ours));
    let err = stderr(&ours);
    let blk_lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("blk: warning: "))
        .collect();
    assert_eq!(
        blk_lines.len(),
        stderr(&theirs).lines().count(),
        "{args:?}: as many error lines as qemu-img, got {err:?}"
    );
    assert!(blk_lines[0].starts_with("blk"), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    if compare_message {
        let message = stderr(&theirs);
        let first = message
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("qemu-img: ");
        assert!(
            err.contains(first),
            "{args:?}: blk says {err} where qemu-img says {first}"
        );
    }
}

#[test]
fn bad_arguments_fail_like_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "a.raw", "20480"]));
    let cases: &[&[&str]] = &[
        &["-c", "0"],
        &["-c", "abc"],
        &["-c", "-1"],
        &["-c", "1.5"],
        &["-c", "2147483648"],
        &["-d", "0"],
        &["-d", "1k"],
        &["-s", "0"],
        &["-s", "1x"],
        &["-s", "2G"],
        &["-S", "-1"],
        &["-S", "3G"],
        &["-o", "-1"],
        &["-o", "zz"],
        &["--pattern=256"],
        &["--pattern=abc"],
        &["--pattern=-1"],
        &["--flush-interval=abc"],
        &["--flush-interval=2"],
        &["-w", "--flush-interval=2"],
        &["-w", "--flush-interval=-1"],
        &["-t", "bogus"],
        &["-i", "bogus"],
        &["-n"],
        &["-i", "native", "-t", "writeback"],
    ];
    for case in cases {
        let mut args = vec!["bench", "-f", "raw"];
        args.extend_from_slice(case);
        args.push("a.raw");
        same_failure(&s, &args, true);
    }
    // No file, two files.
    same_failure(&s, &["bench", "-c", "1"], true);
    same_failure(&s, &["bench", "a.raw", "a.raw"], true);
    // Options the parser refuses: the wording is the parser's, the contract the same.
    same_failure(&s, &["bench", "-x", "a.raw"], false);
    same_failure(&s, &["bench", "--foo", "a.raw"], false);
    // Open errors and failed requests.
    same_failure(&s, &["bench", "missing.raw"], false);
    same_failure(&s, &["bench", "-f", "qcow2", "a.raw"], false);
    for case in [
        &["-o", "30000"][..],
        &["-c", "5", "-d", "1", "-S", "6144"],
        &["-s", "1M", "-c", "1"],
    ] {
        let mut args = vec!["bench", "-f", "raw"];
        args.extend_from_slice(case);
        args.push("a.raw");
        same_failure(&s, &args, false);
        let err = stderr(&s.blk(&args));
        assert!(err.contains("blk: Failed request: "), "{case:?}: {err}");
        // The request line came out before the failure, as qemu-img prints it.
        assert!(stdout(&s.blk(&args)).starts_with("Sending "), "{case:?}");
    }
}
