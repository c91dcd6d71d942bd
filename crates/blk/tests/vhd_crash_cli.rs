//! `blk check -r all` on a dynamic VHD left by a kill in the middle of a block allocation (issue 15, fault 2):
//! what the old allocation order left (the block's bitmap and data where the footer was, no footer at the end)
//! is reported, repaired, and clean on the re-check, and qemu-img reads the repaired image.

mod common;

use common::*;

#[test]
fn check_repairs_what_it_reports_on_a_torn_allocation() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "q.vhd", "16M"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write -P 1 0 64k", "q.vhd"]));
    // A second block's sector bitmap over the end footer and part of its data past it, never linked.
    let mut bytes = s.read("q.vhd");
    let n = bytes.len();
    bytes[n - 512..].fill(0xff);
    bytes.extend(std::iter::repeat_n(0x77u8, 96 << 10));
    s.write("q.vhd", &bytes);

    let out = s.blk(&["check", "q.vhd"]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    let out = s.blk(&["check", "-r", "all", "q.vhd"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let out = s.blk(&["check", "q.vhd"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("No errors were found on the image."));
    // The data written before stays; QEMU agrees.
    ok(&s.qemu_io(&["-f", "vpc", "-c", "read -P 1 0 64k", "q.vhd"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write -P 2 4M 64k", "q.vhd"]));
    assert_eq!(code(&s.blk(&["check", "q.vhd"])), 0);
}

#[test]
fn check_gives_back_the_space_an_interrupted_allocation_leaked() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "vpc", "q.vhd", "16M"]));
    ok(&s.qemu_io(&["-f", "vpc", "-c", "write -P 1 0 64k", "q.vhd"]));
    // The footer moved past a block that was never linked: a leak, not a corruption.
    let mut bytes = s.read("q.vhd");
    let n = bytes.len();
    let footer = bytes[n - 512..].to_vec();
    bytes.truncate(n - 512);
    bytes.extend(std::iter::repeat_n(0u8, (2 << 20) + 512));
    bytes.extend(&footer);
    s.write("q.vhd", &bytes);

    let out = s.blk(&["check", "q.vhd"]);
    assert_eq!(
        code(&out),
        3,
        "leaks only: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = s.blk(&["check", "-r", "leaks", "q.vhd"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        std::fs::metadata(s.path("q.vhd")).unwrap().len() as usize,
        n
    );
    assert_eq!(code(&s.blk(&["check", "q.vhd"])), 0);
    ok(&s.qemu_io(&["-f", "vpc", "-c", "read -P 1 0 64k", "q.vhd"]));
}
