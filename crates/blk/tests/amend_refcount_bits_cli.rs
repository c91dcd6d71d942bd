//! `amend -o refcount_bits=N` against `qemu-img amend` on twins made alike by QEMU (data, a snapshot sharing
//! clusters, compressed clusters sharing host clusters): each width change rebuilds the refcount structure,
//! after which both check clean (same counts), `qemu-img info` agrees (the width included) and the disks and
//! the snapshot compare equal; a width too narrow for a refcount, a width that is no power of two and a
//! width other than 16 on a v2 image are refused with QEMU's messages and change nothing.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, qemu_info_without_names, qemu_io_args, stderr, Scratch};

/// Makes the twins `q.qcow2` and `b.qcow2` with `options`: data, a snapshot, overwrites, compressed data.
fn twins(s: &Scratch, options: &str) {
    ok(&s.qemu_img(&["create", "-q", "-f", "raw", "c.raw", "256k"]));
    ok(&s.qemu_io(&qemu_io_args("raw", "c.raw", &["write -P 0x5c 0 256k"])));
    for name in ["q.qcow2", "b.qcow2"] {
        ok(&s.qemu_img(&["convert", "-c", "-O", "qcow2", "-o", options, "c.raw", name]));
        ok(&s.qemu_img(&["resize", "-q", name, "8M"]));
        ok(&s.qemu_io(&qemu_io_args(
            "qcow2",
            name,
            &["write -P 0x11 1M 1M", "write -z 4M 64k"],
        )));
        ok(&s.qemu_img(&["snapshot", "-c", "snap", name]));
        ok(&s.qemu_io(&qemu_io_args("qcow2", name, &["write -P 0x22 1536k 64k"])));
    }
}

/// `qemu-img check --output=json` of `name` without the file name and end offset (layouts differ).
fn check_counts(s: &Scratch, name: &str) -> serde_json::Value {
    let out = s.qemu_img(&["check", "--output=json", name]);
    assert_eq!(code(&out), 0, "check {name}: {}", stderr(&out));
    let mut v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    for key in ["filename", "image-end-offset", "fragmented-clusters"] {
        v.as_object_mut().map(|m| m.remove(key));
    }
    v
}

fn info_without_dates(s: &Scratch, name: &str) -> serde_json::Value {
    let mut info = qemu_info_without_names(s, name);
    if let Some(snapshots) = info["snapshots"].as_array_mut() {
        for snapshot in snapshots.iter_mut().filter_map(|v| v.as_object_mut()) {
            snapshot.remove("date-sec");
            snapshot.remove("date-nsec");
        }
    }
    info
}

/// blk's error line holds qemu-img's message (blk adds the image and the operation around it).
fn assert_same_message(ours: &std::process::Output, theirs: &std::process::Output, what: &str) {
    let message = stderr(theirs);
    let message = message.trim().trim_start_matches("qemu-img: ");
    assert!(
        stderr(ours).contains(message),
        "{what}: blk says {} where qemu-img says {message}",
        stderr(ours)
    );
}

fn assert_twins_agree(s: &Scratch, what: &str) {
    assert_eq!(
        check_counts(s, "b.qcow2"),
        check_counts(s, "q.qcow2"),
        "{what}: check"
    );
    assert_eq!(
        info_without_dates(s, "b.qcow2"),
        info_without_dates(s, "q.qcow2"),
        "{what}: info"
    );
    ok(&s.qemu_img(&["compare", "-q", "b.qcow2", "q.qcow2"]));
    for name in ["q", "b"] {
        ok(&s.qemu_img(&[
            "convert",
            "-l",
            "snap",
            "-O",
            "raw",
            &format!("{name}.qcow2"),
            &format!("{name}-snap.raw"),
        ]));
    }
    assert!(
        s.read("q-snap.raw") == s.read("b-snap.raw"),
        "{what}: snapshot"
    );
}

#[test]
fn refcount_widths_change_like_qemu_img() {
    for options in ["compat=1.1", "compat=1.1,lazy_refcounts=on,cluster_size=4k"] {
        let s = Scratch::new();
        twins(&s, options);
        for bits in ["2", "64", "4", "8", "1"] {
            let args = ["amend", "-o", &format!("refcount_bits={bits}")];
            let theirs = s.qemu_img(&[&args[..], &["q.qcow2"]].concat());
            let ours = s.blk(&[&args[..], &["b.qcow2"]].concat());
            assert_eq!(
                code(&ours),
                code(&theirs),
                "{options}: {bits}: {}",
                stderr(&ours)
            );
            assert_same_message(&ours, &theirs, &format!("{options}: {bits}"));
            assert_twins_agree(&s, &format!("{options}: refcount_bits={bits}"));
        }
        // Back to 16.
        ok(&s.qemu_img(&["amend", "-o", "refcount_bits=16", "q.qcow2"]));
        ok(&s.blk(&["amend", "-o", "refcount_bits=16", "b.qcow2"]));
        assert_twins_agree(&s, &format!("{options}: refcount_bits=16"));
    }
}

#[test]
fn a_downgrade_changes_the_width_first() {
    let s = Scratch::new();
    for name in ["q.qcow2", "b.qcow2"] {
        ok(&s.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=8",
            name,
            "1M",
        ]));
        ok(&s.qemu_io(&qemu_io_args("qcow2", name, &["write -P 1 0 64k"])));
    }
    // Without the width: QEMU's refusal.
    let args = ["amend", "-o", "compat=0.10"];
    let theirs = s.qemu_img(&[&args[..], &["q.qcow2"]].concat());
    let ours = s.blk(&[&args[..], &["b.qcow2"]].concat());
    assert_eq!((code(&ours), code(&theirs)), (1, 1));
    assert_same_message(&ours, &theirs, "compat=0.10");
    ok(&s.qemu_img(&["amend", "-o", "compat=0.10,refcount_bits=16", "q.qcow2"]));
    ok(&s.blk(&["amend", "-o", "compat=0.10,refcount_bits=16", "b.qcow2"]));
    for name in ["q.qcow2", "b.qcow2"] {
        ok(&s.qemu_img(&["check", "-q", name]));
    }
    assert_eq!(
        qemu_info_without_names(&s, "b.qcow2"),
        qemu_info_without_names(&s, "q.qcow2")
    );
    ok(&s.qemu_img(&["compare", "-q", "b.qcow2", "q.qcow2"]));
}
