//! `blk amend` against `qemu-img amend`: twins amended by both tools have the same header cluster and
//! `qemu-img info`, stay clean and show the same guest data; errors as qemu-img's.
#![cfg(feature = "qcow2")]

mod common;

use common::{assert_same_failure, code, ok, qemu_info_without_names, stderr, Scratch};

/// Creates `x.qcow2` with `create_options` and some data, amends twins with both tools; both succeed and
/// agree.
fn amend_both(create_options: &str, amend_options: &str) {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "b2.raw", "4M"]));
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        create_options,
        "x.qcow2",
        "4M",
    ]));
    ok(&s.qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 0 128k",
        "-c",
        "write -c -P 0x6b 1M 64k",
        "x.qcow2",
    ]));
    for (twin, blk) in [("q.qcow2", false), ("b.qcow2", true)] {
        std::fs::copy(s.path("x.qcow2"), s.path(twin)).unwrap();
        let args = ["amend", "-o", amend_options, twin];
        let out = if blk { s.blk(&args) } else { s.qemu_img(&args) };
        assert_eq!(
            code(&out),
            0,
            "{create_options} -> {amend_options}: {}",
            stderr(&out)
        );
    }
    for twin in ["q.qcow2", "b.qcow2"] {
        assert_eq!(
            code(&s.qemu_img(&["check", twin])),
            0,
            "{create_options} -> {amend_options}: {twin}"
        );
    }
    assert_eq!(
        qemu_info_without_names(&s, "q.qcow2"),
        qemu_info_without_names(&s, "b.qcow2"),
        "{create_options} -> {amend_options}"
    );
    let cluster = qemu_info_without_names(&s, "q.qcow2")["cluster-size"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        s.read("q.qcow2")[..cluster] == s.read("b.qcow2")[..cluster],
        "{create_options} -> {amend_options}: header clusters differ"
    );
    assert_eq!(code(&s.qemu_img(&["compare", "x.qcow2", "b.qcow2"])), 0);
}

#[test]
fn amend_matches_qemu_img() {
    for (create, amend) in [
        ("compat=0.10", "compat=1.1"),
        ("compat=0.10,cluster_size=4k", "compat=1.1"),
        ("compat=0.10", "compat=1.1,lazy_refcounts=on"),
        ("compat=1.1", "lazy_refcounts=on"),
        ("compat=1.1,lazy_refcounts=on", "lazy_refcounts=off"),
        ("compat=1.1", "compat=0.10"),
        ("compat=1.1,lazy_refcounts=on", "compat=0.10"),
        ("compat=1.1", "refcount_bits=16"),
        ("compat=1.1", "size=8M"),
    ] {
        amend_both(create, amend);
    }
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "v2.qcow2",
        "1M",
    ]));
    s.reference_image("r.raw");
    for args in [
        &["amend", "v2.qcow2"][..],
        &["amend", "-o", "bogus=1", "v2.qcow2"][..],
        &["amend", "-o", "compat=2", "v2.qcow2"][..],
        &["amend", "-o", "compression_type=zstd", "v2.qcow2"][..],
        &["amend", "-o", "lazy_refcounts=on", "v2.qcow2"][..],
        &["amend", "-o", "refcount_bits=8", "v2.qcow2"][..],
        &["amend", "-f", "raw", "-o", "size=1", "r.raw"][..],
        &[
            "amend",
            "-o",
            "backing_file=r.raw,backing_fmt=raw",
            "v2.qcow2",
        ][..],
    ] {
        let before = s.read("v2.qcow2");
        assert_same_failure(&s, args);
        assert!(s.read("v2.qcow2") == before, "{args:?} changed the image");
    }
}

/// A downgrade expands zero clusters as QEMU does: an allocated one is zeroed, an unallocated one becomes
/// unallocated (no backing file) or a new cluster of zeros (over a backing file, which must not show through).
#[test]
fn downgrade_expands_zero_clusters() {
    for backed in [false, true] {
        let s = Scratch::new();
        let mut create = vec!["create", "-q", "-f", "qcow2"];
        if backed {
            ok(&s.qemu_img(&["create", "-q", "-f", "raw", "b.raw", "1M"]));
            ok(&s.qemu_io(&["-f", "raw", "-c", "write -P 0x77 0 1M", "b.raw"]));
            create.extend(["-b", "b.raw", "-F", "raw"]);
        }
        create.extend(["z.qcow2", "1M"]);
        ok(&s.qemu_img(&create));
        ok(&s.qemu_io(&[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 128k",
            "-c",
            "write -z 64k 64k",
            "-c",
            "write -z 256k 64k",
            "z.qcow2",
        ]));
        std::fs::copy(s.path("z.qcow2"), s.path("q.qcow2")).unwrap();
        ok(&s.qemu_img(&["amend", "-o", "compat=0.10", "q.qcow2"]));
        ok(&s.blk(&["amend", "-o", "compat=0.10", "z.qcow2"]));
        assert_eq!(
            qemu_info_without_names(&s, "z.qcow2"),
            qemu_info_without_names(&s, "q.qcow2"),
            "backed: {backed}"
        );
        let cmp = s.qemu_img(&["compare", "q.qcow2", "z.qcow2"]);
        assert_eq!(code(&cmp), 0, "backed: {backed}: {}", stderr(&cmp));
        ok(&s.qemu_img(&["check", "z.qcow2"]));
    }
}
