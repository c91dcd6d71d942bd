//! `blk` on VHD (vpc) images against qemu-img and qemu-io: create, info, map, convert, compare, check, io,
//! and differencing disks made with `-b`.

mod common;

use common::{code, ok, qemu_io_args, reference_script, stderr, stdout, Scratch};

/// The standard script plus writes across the 2 MiB block boundary, an unaligned write and the last sector.
fn script() -> Vec<String> {
    let mut s = reference_script();
    s.extend(
        [
            "write -P 0x5d 2096640 1024",
            "write -P 0x11 3000001 777",
            "write -z 4096 8192",
            "write -P 0x0f 16776704 512",
        ]
        .map(String::from),
    );
    s
}

/// `blk io` with qemu-io's arguments.
fn blk_io<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["io"];
    v.extend_from_slice(args);
    v
}

const KINDS: &[&str] = &[
    "subformat=dynamic",
    "subformat=fixed",
    "force_size=on",
    "subformat=fixed,force_size=on",
];

#[test]
fn create_and_info_match_qemu_img() {
    let s = Scratch::new();
    for o in KINDS {
        for size in ["16M", "5000000", "1G"] {
            ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "-o", o, "q.vhd", size]));
            let out = s.blk(&["create", "-f", "vpc", "-o", o, "b.vhd", size]);
            ok(&out);
            for image in ["q.vhd", "b.vhd"] {
                let theirs: serde_json::Value = serde_json::from_str(&ok(&s.qemu_img(&[
                    "info",
                    "-f",
                    "vpc",
                    "--output=json",
                    image,
                ])))
                .unwrap();
                let ours: serde_json::Value = serde_json::from_str(&ok(&s.blk(&[
                    "info",
                    "-f",
                    "vpc",
                    "--output=json",
                    image,
                ])))
                .unwrap();
                for key in [
                    "virtual-size",
                    "cluster-size",
                    "format",
                    "format-specific",
                    "dirty-flag",
                ] {
                    assert_eq!(ours.get(key), theirs.get(key), "{o} {size} {image} {key}");
                }
            }
            assert_eq!(
                std::fs::metadata(s.path("q.vhd")).unwrap().len(),
                std::fs::metadata(s.path("b.vhd")).unwrap().len(),
                "{o} {size}"
            );
        }
    }
    // Dynamic images: the human-readable info is qemu-img's, line for line.
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "q.vhd", "16M"]));
    assert_eq!(
        ok(&s.blk(&["info", "q.vhd"])),
        ok(&s.qemu_img(&["info", "q.vhd"]))
    );
    // Too large.
    let out = s.blk(&[
        "create",
        "-f",
        "vpc",
        "-o",
        "force_size=on",
        "big.vhd",
        "2041G",
    ]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("too large"), "{}", stderr(&out));
}

#[test]
fn qemu_written_images_convert_and_map_like_qemu() {
    let s = Scratch::new();
    let script = script();
    for o in KINDS {
        ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "-o", o, "q.vhd", "16M"]));
        ok(&s.qemu_io(&qemu_io_args("vpc", "q.vhd", &script)));
        ok(&s.qemu_img(&["convert", "-f", "vpc", "-O", "raw", "q.vhd", "qemu.raw"]));
        ok(&s.blk(&["convert", "-f", "vpc", "-O", "raw", "q.vhd", "blk.raw"]));
        assert!(s.read("blk.raw") == s.read("qemu.raw"), "{o}");
        let out = s.blk(&["compare", "-f", "vpc", "-F", "raw", "q.vhd", "qemu.raw"]);
        assert_eq!(code(&out), 0, "{o}: {}", stdout(&out));
        if o.contains("dynamic") || *o == "force_size=on" {
            assert_eq!(
                ok(&s.blk(&["map", "-f", "vpc", "--output=json", "q.vhd"])),
                ok(&s.qemu_img(&["map", "-f", "vpc", "--output=json", "q.vhd"])),
                "{o}"
            );
        }
    }
}

#[test]
fn blk_written_images_read_back_through_qemu() {
    let s = Scratch::new();
    let script = script();
    for o in KINDS {
        for size in ["16M", "16777000"] {
            ok(&s.blk(&["create", "-f", "vpc", "-o", o, "b.vhd", size]));
            ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "-o", o, "q.vhd", size]));
            ok(&s.blk(&blk_io(&qemu_io_args("vpc", "b.vhd", &script))));
            ok(&s.qemu_io(&qemu_io_args("vpc", "q.vhd", &script)));
            let out = s.qemu_img(&["compare", "-f", "vpc", "-F", "vpc", "b.vhd", "q.vhd"]);
            assert_eq!(
                code(&out),
                0,
                "{o} {size}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            // blk convert into a new VHD, read by qemu.
            ok(&s.blk(&["convert", "-f", "vpc", "-O", "vpc", "q.vhd", "c.vhd"]));
            let out = s.qemu_img(&["compare", "-f", "vpc", "-F", "vpc", "c.vhd", "q.vhd"]);
            assert_eq!(code(&out), 0, "{o} {size}: {}", stdout(&out));
        }
    }
}

#[test]
fn check_reports_and_repairs() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "q.vhd", "16M"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write -P 1 0 64k", "q.vhd"]));
    let out = s.blk(&["check", "q.vhd"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("No errors were found on the image."));
    // qemu-img has no check for vpc.
    assert_eq!(code(&s.qemu_img(&["check", "q.vhd"])), 63);
    // A damaged end footer: a corruption, repaired by -r all.
    let mut bytes = s.read("q.vhd");
    let n = bytes.len();
    bytes[n - 500] ^= 0xff;
    s.write("q.vhd", &bytes);
    let out = s.blk(&["check", "q.vhd"]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let out = s.blk(&["check", "-r", "all", "q.vhd"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(code(&s.blk(&["check", "q.vhd"])), 0);
    // A BAT entry past the end of the file: a one-line open error, no panic.
    let mut bytes = s.read("q.vhd");
    bytes[1536..1540].copy_from_slice(&0x00ff_0000u32.to_be_bytes());
    s.write("bad.vhd", &bytes);
    let out = s.blk(&["check", "bad.vhd"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("past the end of the file"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn differencing_disks_with_backing_file() {
    let s = Scratch::new();
    ok(&s.blk(&["create", "-f", "vpc", "base.vhd", "16M"]));
    ok(&s.blk(&blk_io(&qemu_io_args(
        "vpc",
        "base.vhd",
        &reference_script(),
    ))));
    ok(&s.blk(&[
        "create",
        "-f",
        "vpc",
        "-b",
        "base.vhd",
        "-F",
        "vpc",
        "child.vhd",
    ]));
    let info = ok(&s.blk(&["info", "child.vhd"]));
    assert!(info.contains("backing file"), "{info}");
    ok(&s.blk(&["convert", "-O", "raw", "base.vhd", "base.raw"]));
    ok(&s.blk(&["convert", "-O", "raw", "child.vhd", "child.raw"]));
    assert!(s.read("child.raw") == s.read("base.raw"));
    ok(&s.blk(&["io", "-c", "write -P 0x99 1000 5000", "child.vhd"]));
    ok(&s.blk(&["convert", "-O", "raw", "child.vhd", "child.raw"]));
    let mut expected = s.read("base.raw");
    expected[1000..6000].fill(0x99);
    assert!(s.read("child.raw") == expected);
    // The parent is untouched.
    ok(&s.blk(&["convert", "-O", "raw", "base.vhd", "base2.raw"]));
    assert!(s.read("base2.raw") == s.read("base.raw"));
    let out = s.blk(&["check", "child.vhd"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A parent of another format is refused.
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "raw.img", "16M"]));
    let out = s.blk(&[
        "create", "-f", "vpc", "-b", "raw.img", "-F", "raw", "bad.vhd",
    ]);
    assert_ne!(code(&out), 0);
}
