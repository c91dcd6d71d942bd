//! `blk snapshot -l` prints what `qemu-img snapshot -l` prints; changing snapshots is refused.

mod common;

use common::{code, ok, stderr, stdout, Scratch};

#[cfg(feature = "qcow2")]
#[test]
fn list_matches_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "1M"]));
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "none.qcow2", "1M"]));
    ok(&s.qemu_img(&["snapshot", "-c", "one", "s.qcow2"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write 0 64k", "s.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "two", "s.qcow2"]));
    for args in [
        &["-l", "s.qcow2"][..],
        &["s.qcow2"][..],
        &["-l", "-q", "-U", "-f", "qcow2", "s.qcow2"][..],
        &["-l", "none.qcow2"][..],
    ] {
        let mut full = vec!["snapshot"];
        full.extend_from_slice(args);
        let theirs = ok(&s.qemu_img(&full));
        let ours = ok(&s.blk(&full));
        assert_eq!(ours, theirs, "snapshot {args:?}");
    }
    assert!(ok(&s.blk(&["snapshot", "-l", "s.qcow2"])).contains("two"));
    let refused = s.blk(&["snapshot", "-c", "three", "s.qcow2"]);
    assert_eq!(code(&refused), 1);
    assert!(
        stderr(&refused).contains("does not create"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stdout(&refused), "");
}

#[test]
fn raw_has_no_snapshots() {
    let s = Scratch::new();
    s.reference_image("r.raw");
    let theirs = ok(&s.qemu_img(&["snapshot", "-l", "-f", "raw", "r.raw"]));
    let ours = ok(&s.blk(&["snapshot", "-l", "-f", "raw", "r.raw"]));
    assert_eq!(ours, theirs);
    assert_eq!(ours, "");
}
