//! `commit -b BASE` into an image deeper in the backing chain than the backing file, against `qemu-img
//! commit -b` on twin chains `base <- mid <- top` (made alike by QEMU): BASE receives what `mid` and `top`
//! store (as `top` shows it, zeros included) and grows to `top`'s size; `top` and `mid` keep what they
//! store; a BASE not in the chain is QEMU's error.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stderr, Scratch};

/// `DIR/base.FMT` <- `DIR/mid.qcow2` <- `DIR/top.qcow2` for DIR in `q` and `b`, the same in both.
fn twin_chains(s: &Scratch, base_format: &str) {
    for dir in ["q", "b"] {
        std::fs::create_dir_all(s.path(dir)).unwrap();
        let base = format!("{dir}/base.{base_format}");
        ok(&s.qemu_img(&["create", "-q", "-f", base_format, &base, "2M"]));
        ok(&s.qemu_io(&["-f", base_format, "-c", "write -P 0x11 0 2M", &base]));
        let layers = [
            (
                "mid.qcow2",
                format!("base.{base_format}"),
                base_format,
                "3M",
            ),
            ("top.qcow2", "mid.qcow2".to_string(), "qcow2", "4M"),
        ];
        for (name, backing, backing_format, size) in &layers {
            ok(&s.qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                backing,
                "-F",
                backing_format,
                &format!("{dir}/{name}"),
                size,
            ]));
        }
        ok(&s.qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x22 0 64k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "write -P 0x23 2560k 8k",
            &format!("{dir}/mid.qcow2"),
        ]));
        ok(&s.qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x33 32k 64k",
            "-c",
            "write -P 0x44 3M 4k",
            "-c",
            "discard 1M 64k",
            "-c",
            "write -z 256k 128k",
            &format!("{dir}/top.qcow2"),
        ]));
    }
}

#[test]
fn commit_into_a_deeper_base_matches_qemu_img() {
    for base_format in ["raw", "qcow2"] {
        let s = Scratch::new();
        twin_chains(&s, base_format);
        ok(&s.qemu_img(&["convert", "-O", "raw", "q/top.qcow2", "top-before.raw"]));
        let base = format!("base.{base_format}");
        for (dir, blk) in [("q", false), ("b", true)] {
            // As QEMU: relative to the image's directory.
            let args = ["commit", "-b", &base, &format!("{dir}/top.qcow2")];
            let out = if blk { s.blk(&args) } else { s.qemu_img(&args) };
            assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        }
        let (q_base, b_base) = (format!("q/{base}"), format!("b/{base}"));
        if base_format == "raw" {
            assert!(
                s.read(&q_base) == s.read(&b_base),
                "committed raw bases differ"
            );
        } else {
            ok(&s.qemu_img(&["check", "-q", &b_base]));
        }
        ok(&s.qemu_img(&["compare", "-q", &q_base, &b_base]));
        // The base now shows what the top showed; the images above it keep what they store (the top shows
        // the same disk; `mid` shows the new base where it stores nothing, in both chains alike).
        ok(&s.qemu_img(&["compare", "-q", "top-before.raw", &b_base]));
        ok(&s.qemu_img(&["compare", "-q", "q/mid.qcow2", "b/mid.qcow2"]));
        for dir in ["q", "b"] {
            ok(&s.qemu_img(&[
                "compare",
                "-q",
                "top-before.raw",
                &format!("{dir}/top.qcow2"),
            ]));
            for image in ["top", "mid"] {
                ok(&s.qemu_img(&["check", "-q", &format!("{dir}/{image}.qcow2")]));
            }
        }
        for image in ["top", "mid"] {
            assert_eq!(
                ok(&s.qemu_img(&["map", "--output=json", &format!("q/{image}.qcow2")])),
                ok(&s.qemu_img(&["map", "--output=json", &format!("b/{image}.qcow2")])),
                "{image} kept its allocation"
            );
        }
    }
}

#[test]
fn a_base_outside_the_chain_is_refused_like_qemu_img() {
    let s = Scratch::new();
    twin_chains(&s, "raw");
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "other.raw", "1M"]));
    for args in [
        ["commit", "-b", "other.raw", "q/top.qcow2"],
        ["commit", "-b", "nothere.raw", "q/top.qcow2"],
        // Relative to the image's directory, this names q/q/base.raw.
        ["commit", "-b", "q/base.raw", "q/top.qcow2"],
    ] {
        let theirs = s.qemu_img(&args);
        let ours = s.blk(&args);
        assert_eq!(code(&theirs), 1);
        assert_eq!(code(&ours), 1, "{}", stderr(&ours));
        assert_eq!(
            stderr(&ours).trim_start_matches("blk: "),
            stderr(&theirs).trim_start_matches("qemu-img: "),
            "{args:?}"
        );
    }
}
