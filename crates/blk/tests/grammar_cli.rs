//! The command-line grammar against qemu-img 10.0.2 (issue 14): options anywhere, `--`, repeated options,
//! qemu-img's messages, line counts and exit codes for what it refuses, `--object` / `--image-opts`,
//! `convert -r`, `-p` without a terminal, and the size checks of `create` (issue 15, item 7).

mod common;

use common::{code, ok, stderr, stdout, Scratch};

/// A 4 MiB QCOW2 image with data in its first MiB, made by qemu-img and qemu-io.
fn source(s: &Scratch) {
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "in.qcow2", "4M"]));
    ok(&s.qemu_io(&["-c", "write -P 7 0 1M", "in.qcow2"]));
}

/// qemu-img's stderr as blk says it: `qemu-img` becomes `blk`.
fn as_blk(text: &str) -> String {
    text.replace("qemu-img", "blk")
}

/// Runs `args` with both tools: same exit code, same stdout, and the same stderr once `qemu-img` reads `blk`
/// (or, when `same_text` is false, the same number of lines).
fn same_result(s: &Scratch, args: &[&str], same_text: bool) {
    let theirs = s.qemu_img(args);
    let ours = s.blk(args);
    assert_eq!(code(&ours), code(&theirs), "{args:?}: {}", stderr(&ours));
    assert_eq!(stdout(&ours), stdout(&theirs), "{args:?}");
    let (ours, theirs) = (stderr(&ours), as_blk(&stderr(&theirs)));
    assert!(!ours.contains("panicked"), "{args:?}: {ours}");
    if same_text {
        assert_eq!(ours, theirs, "{args:?}");
    } else {
        assert_eq!(
            ours.lines().count(),
            theirs.lines().count(),
            "{args:?}: blk says {ours:?} where qemu-img says {theirs:?}"
        );
    }
}

/// Both tools make `ours` and `theirs` from the same command line (the target named last, `{}` in `args`);
/// the results compare equal.
fn same_conversion(s: &Scratch, args: &[&str]) {
    let with = |name: &str| -> Vec<String> {
        args.iter()
            .map(|a| a.replace("{}", name))
            .collect::<Vec<_>>()
    };
    let theirs_args = with("theirs.img");
    let ours_args = with("ours.img");
    let theirs_args: Vec<&str> = theirs_args.iter().map(String::as_str).collect();
    let ours_args: Vec<&str> = ours_args.iter().map(String::as_str).collect();
    let theirs = s.qemu_img(&theirs_args);
    let ours = s.blk(&ours_args);
    assert_eq!(code(&theirs), 0, "qemu-img {args:?}: {}", stderr(&theirs));
    assert_eq!(code(&ours), 0, "blk {args:?}: {}", stderr(&ours));
    assert_eq!(
        stdout(&ours).replace("ours.img", "theirs.img"),
        stdout(&theirs),
        "{args:?}"
    );
    ok(&s.qemu_img(&["compare", "ours.img", "theirs.img"]));
    let _ = std::fs::remove_file(s.path("ours.img"));
    let _ = std::fs::remove_file(s.path("theirs.img"));
}

#[test]
fn options_go_anywhere_as_with_getopt() {
    let s = Scratch::new();
    source(&s);
    for args in [
        &["convert", "-f", "qcow2", "in.qcow2", "-O", "raw", "{}"][..],
        &["convert", "in.qcow2", "-O", "vhdx", "{}"],
        &["convert", "-p", "in.qcow2", "-O", "raw", "{}"],
        &["convert", "in.qcow2", "{}", "-O", "qcow2", "-c"],
        &["convert", "-fqcow2", "-Oqcow2", "in.qcow2", "{}"],
        &["convert", "-qO", "vpc", "in.qcow2", "{}"],
        &[
            "convert",
            "--source-format=qcow2",
            "in.qcow2",
            "{}",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
        ],
        &[
            "convert",
            "--source-f",
            "qcow2",
            "in.qcow2",
            "{}",
            "--sparse-size=8k",
        ],
        &["convert", "-O", "raw", "-O", "qcow2", "in.qcow2", "{}"],
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "-o",
            "lazy_refcounts=on",
            "in.qcow2",
            "{}",
        ],
        &["convert", "-O", "raw", "--", "in.qcow2", "{}"],
        &["convert", "-r", "64M", "in.qcow2", "{}"],
        &["create", "-q", "{}", "-f", "qcow2", "1M"],
        &["create", "{}", "2M", "-f", "qcow2", "-o", "cluster_size=4k"],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=off",
            "-o",
            "preallocation=full",
            "{}",
            "1M",
        ],
        &[
            "create", "-f", "raw", "-o", "size=1M", "-o", "size=2M", "{}",
        ],
        &["create", "-f", "qcow2", "--", "{}", "1M"],
    ] {
        same_conversion(&s, args);
    }
    for args in [
        &["info", "in.qcow2", "-f", "qcow2"][..],
        &["info", "--out=json", "in.qcow2"],
        &["info", "-f", "raw", "-f", "qcow2", "in.qcow2"],
        &["info", "--", "in.qcow2"],
        &["map", "in.qcow2", "--output", "json"],
        &["check", "in.qcow2", "-q"],
        &[
            "compare", "in.qcow2", "-f", "qcow2", "in.qcow2", "-F", "qcow2",
        ],
        &["measure", "-O", "qcow2", "in.qcow2"],
        &["measure", "--size", "1G", "-O", "qcow2"],
        &["snapshot", "in.qcow2", "-l"],
        &["create", "-f", "qcow2", "-o", "help"],
        &["create", "-o", "help"],
        &["convert", "-O", "vpc", "-o", "?"],
        &["create", "-f", "vhdx", "-o", "cluster_size=4k,help"],
        &["amend", "-o", "help"],
        &["resize", "-f", "raw", "r.raw", "bogus"],
    ] {
        same_result(&s, args, true);
    }
    // The file does not exist: the open error's wording is blk's.
    same_result(&s, &["resize", "-f", "raw", "r.raw", "-1M"], false);
    // A negative size change needs `--`, as in qemu-img.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "r.raw", "2M"]));
    ok(&s.blk(&[
        "resize", "-f", "raw", "--shrink", "-q", "r.raw", "--", "-1M",
    ]));
    assert_eq!(std::fs::metadata(s.path("r.raw")).unwrap().len(), 1 << 20);
}

#[test]
fn refusals_are_qemu_img_messages() {
    let s = Scratch::new();
    source(&s);
    // The same text (with `blk` for `qemu-img`), line count and exit code.
    for args in [
        &["convert", "-z", "in.qcow2", "x.raw"][..],
        &["convert", "--bogus", "in.qcow2", "x.raw"],
        &["convert", "--bogus=1", "in.qcow2", "x.raw"],
        &["convert", "in.qcow2", "x.raw", "-O"],
        &["convert", "in.qcow2"],
        &["convert"],
        &["info"],
        &["info", "a", "b"],
        &["info", "in.qcow2", "--output"],
        &["info", "--force-share=1", "in.qcow2"],
        &["info", "--output=xml", "in.qcow2"],
        &["check", "-r", "bogus", "in.qcow2"],
        &["compare", "in.qcow2"],
        &["create"],
        &["create", "x"],
        &["create", "-f", "raw", "y", "1M", "2M"],
        &["create", "a", "b", "c"],
        &["create", "-f", "raw", "y", "-o", ",", "1M"],
        &["create", "-f", "raw", "y", "-o", "a=1,", "1M"],
        &["amend", "-o", ",", "in.qcow2"],
        &["amend", "in.qcow2"],
        &["resize", "a"],
        &["resize", "a", "b", "c"],
        &["measure"],
        &["measure", "a", "b"],
        &["rebase", "in.qcow2"],
        &["dd", "a"],
        &["bogus"],
        &["-z"],
        &[],
        &["convert", "-r", "1X", "in.qcow2", "r.raw"],
        &["convert", "-r", "-5", "in.qcow2", "r.raw"],
        &["create", "--image-opts", "x", "1M"],
        &["bench", "--object", "secret,id=x,data=y", "in.qcow2"],
        &["info", "--object", "secret,id=s0", "in.qcow2"],
        &["info", "--object", "secret,data=x", "in.qcow2"],
        &["info", "--object", "bogus,id=x", "in.qcow2"],
        &[
            "info",
            "--object",
            "secret,id=s0,data=a,format=hex",
            "in.qcow2",
        ],
        &["info", "--object", "secret,id=s0,data=a,file=b", "in.qcow2"],
        &["info", "--object", "secret,id=s0,data=a,zz=1", "in.qcow2"],
        &["info", "--object", ",", "in.qcow2"],
        &["info", "--object", "secret,id=1s,data=x", "in.qcow2"],
        &[
            "info",
            "--object",
            "secret,id=s0,file=/nonexistent/pw",
            "in.qcow2",
        ],
        &[
            "info",
            "--object",
            "secret,id=s0,data=a",
            "--object",
            "secret,id=s0,data=b",
            "in.qcow2",
        ],
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2,bogus=1",
        ],
        &[
            "info",
            "--image-opts",
            "driver=bogus,file.filename=in.qcow2",
        ],
        &["info", "--image-opts", "in.qcow2"],
        &["info", "--image-opts", "driver=qcow2"],
        &["info", "--image-opts", ""],
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2,file.bogus=1",
        ],
        &[
            "convert",
            "--image-opts",
            "-f",
            "qcow2",
            "in.qcow2",
            "x.raw",
        ],
    ] {
        same_result(&s, args, true);
    }
    // The same line count and exit code; the wording is blk's.
    for args in [
        &["snapshot", "-d", "nope", "in.qcow2"][..],
        &["convert", "--t", "in.qcow2", "x.raw"],
    ] {
        same_result(&s, args, false);
    }
}

#[test]
fn image_opts_and_objects_open_what_qemu_img_opens() {
    let s = Scratch::new();
    source(&s);
    ok(&s.qemu_img(&["convert", "-O", "raw", "in.qcow2", "in.raw"]));
    s.write("pw.txt", b"secret");
    for args in [
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2",
        ][..],
        &["info", "--image-opts", "file.filename=in.qcow2"],
        &[
            "info",
            "--image-opts",
            "driver=qcow2,file.driver=file,file.filename=in.qcow2,force-share=on",
        ],
        &["info", "--image-opts", "driver=raw,file.filename=in.qcow2"],
        &["info", "--object", "secret,id=s0,data=abc", "in.qcow2"],
        &["info", "--object", "secret,id=s0,file=pw.txt", "in.qcow2"],
        &[
            "info",
            "--object",
            "secret,id=s0,data=cHc=,format=base64",
            "in.qcow2",
        ],
        &["info", "--object", "secret,id=s,data=p,,w", "in.qcow2"],
        &["map", "--image-opts", "driver=qcow2,file.filename=in.qcow2"],
        &[
            "check",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2",
        ],
        &[
            "compare",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2",
            "driver=raw,file.filename=in.raw",
        ],
    ] {
        same_result(&s, args, true);
    }
    same_conversion(
        &s,
        &[
            "convert",
            "--image-opts",
            "driver=qcow2,file.filename=in.qcow2",
            "-O",
            "raw",
            "{}",
        ],
    );
    same_conversion(
        &s,
        &[
            "dd",
            "--image-opts",
            "if=driver=qcow2,file.filename=in.qcow2",
            "of={}",
        ],
    );
    // A secret that is referenced but not defined, and one that is.
    let opts = "driver=qcow2,file.filename=in.qcow2,encrypt.key-secret=s0";
    let out = s.blk(&["info", "--image-opts", opts]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!("blk: Could not open '{opts}': No secret with id 's0'\n")
    );
    ok(&s.blk(&[
        "info",
        "--object",
        "secret,id=s0,data=x",
        "--image-opts",
        opts,
    ]));
    // No secret is ever printed.
    let out = s.blk(&[
        "info",
        "--object",
        "secret,id=s0,data=hunter2,zz=1",
        "in.qcow2",
    ]);
    assert!(!stderr(&out).contains("hunter2"));
}

#[test]
fn progress_without_a_terminal_is_qemu_img_lines() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "big.raw", "64M"]));
    ok(&s.qemu_io(&["-f", "raw", "-c", "write -P 3 0 64M", "big.raw"]));
    for args in [
        &["convert", "-p", "-O", "raw", "big.raw", "{}"][..],
        &["convert", "-p", "-q", "-O", "raw", "big.raw", "{}"],
    ] {
        same_conversion(&s, args);
    }
    // amend: 0% before, 100% after.
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q1.qcow2", "1M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "q2.qcow2", "1M"]));
    let theirs = ok(&s.qemu_img(&["amend", "-p", "-o", "lazy_refcounts=on", "q1.qcow2"]));
    let ours = ok(&s.blk(&["amend", "-p", "-o", "lazy_refcounts=on", "q2.qcow2"]));
    assert_eq!(ours, theirs);
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "zero.raw", "64M"]));
    for args in [
        &["compare", "-p", "big.raw", "big.raw"][..],
        &["compare", "-p", "big.raw", "zero.raw"],
    ] {
        same_result(&s, args, true);
    }
}

#[test]
fn rate_limit_paces_the_data() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "data.raw", "8M"]));
    ok(&s.qemu_io(&["-f", "raw", "-c", "write -P 1 0 8M", "data.raw"]));
    let start = std::time::Instant::now();
    ok(&s.blk(&["convert", "-r", "16M", "data.raw", "out.raw"]));
    let took = start.elapsed();
    // 8 MiB at 16 MiB/s: half a second, less the first 100 ms slice.
    assert!(took.as_millis() >= 350, "took {took:?}");
    ok(&s.qemu_img(&["compare", "data.raw", "out.raw"]));
}

/// Issue 15, item 7: sizes are parsed and range-checked, and `-o` lists checked, before any file is made.
#[test]
fn bad_sizes_and_option_lists_are_refused_up_front() {
    let s = Scratch::new();
    for (args, message) in [
        (
            &["create", "-f", "qcow2", "x", "18446744073709551615"][..],
            "blk: Invalid image size specified. Must be between 0 and 9223372036854775807.\n",
        ),
        (
            &["create", "-f", "raw", "x", "8E"],
            "blk: Invalid image size specified. Must be between 0 and 9223372036854775807.\n",
        ),
        (
            &["create", "-f", "raw", "x", "-o", ",", "1M"],
            "blk: Invalid option list: ,\n",
        ),
    ] {
        let out = s.blk(args);
        assert_eq!(
            (code(&out), stderr(&out).as_str()),
            (1, message),
            "{args:?}"
        );
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(!s.path("x").exists(), "{args:?} left a file");
        same_result(&s, args, true);
    }
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]));
    let before = s.read("a.qcow2");
    let out = s.blk(&["amend", "-o", ",", "a.qcow2"]);
    assert_eq!(
        (code(&out), stderr(&out).as_str()),
        (1, "blk: Invalid option list: ,\n")
    );
    assert!(s.read("a.qcow2") == before);
}

#[test]
fn messages_are_said_once_and_nothing_before_a_failure() {
    let s = Scratch::new();
    source(&s);
    let out = s.blk(&["snapshot", "-d", "nope", "in.qcow2"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out).matches("Could not delete snapshot").count(), 1);
    let out = s.blk(&["rebase", "-b", "x", "in.qcow2"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out)
            .matches("backing format must be specified")
            .count(),
        1,
        "{}",
        stderr(&out)
    );
    // A bad creation option: qemu-img prints no `Formatting` line.
    same_result(
        &s,
        &["create", "-f", "qcow2", "-o", "bogus=1", "c.qcow2", "1M"],
        false,
    );
}

#[test]
fn vhd_check_speaks_of_blocks() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "v.vhd", "10M"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write 0 3M", "v.vhd"]));
    let text = ok(&s.blk(&["check", "v.vhd"]));
    assert!(
        text.starts_with("No errors were found on the image.\n"),
        "{text}"
    );
    assert!(text.contains("allocated blocks"), "{text}");
    assert!(!text.contains("clusters"), "{text}");
    let json = ok(&s.blk(&["check", "--output=json", "v.vhd"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "vpc");
    assert!(v.get("allocated-blocks").is_some(), "{json}");
    assert!(v.get("total-clusters").is_none(), "{json}");
}

#[test]
fn help_completions_and_man_page() {
    let s = Scratch::new();
    let help = ok(&s.blk(&["--help"]));
    for sub in [
        "amend",
        "bench",
        "check",
        "commit",
        "compare",
        "convert",
        "create",
        "dd",
        "info",
        "map",
        "measure",
        "rebase",
        "resize",
        "snapshot",
        "io",
        "completions",
    ] {
        assert!(help.contains(&format!("\n  {sub} ")), "{sub} in {help}");
    }
    assert!(!help.contains("snapshot -l"), "{help}");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&s.blk(&["completions", shell]));
        assert!(script.contains("convert"), "{shell}");
        assert!(script.contains("image-opts"), "{shell}");
    }
    let page = ok(&s.blk(&["man"]));
    assert!(page.contains(".TH blk 1"), "{page}");
    ok(&s.blk(&["man", "pages"]));
    let convert = std::fs::read_to_string(s.path("pages/blk-convert.1")).unwrap();
    assert!(convert.contains("rate"), "{convert}");
}
