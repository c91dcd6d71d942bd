//! Clusters that `snapshot -d` and `snapshot -a` free are discarded from the image file (holes punched), as
//! QEMU does with its default `pass-discard-snapshot=on`: twins (made alike by QEMU) get the same snapshot
//! operations, one by qemu-img and one by blk; after each, both check clean, compare equal, and the image
//! files have the same holes (`qemu-img map -f raw` of the file).

mod common;

use common::{ok, qemu_io_args, Scratch};

/// The holes of the file `name` (from `qemu-img map -f raw` of it) that start before `limit`, cut there.
fn holes(s: &Scratch, name: &str, limit: u64) -> Vec<(u64, u64)> {
    let map: serde_json::Value = serde_json::from_str(&ok(&s.qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "raw",
        name,
    ])))
    .unwrap();
    let field = |e: &serde_json::Value, k: &str| e[k].as_u64().unwrap_or(0);
    map.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["data"] == false && field(e, "start") < limit)
        .map(|e| {
            let start = field(e, "start");
            (start, (start + field(e, "length")).min(limit) - start)
        })
        .collect()
}

fn assert_twins_agree(s: &Scratch, what: &str) {
    for name in ["b.qcow2", "q.qcow2"] {
        ok(&s.qemu_img(&["check", "-q", name]));
    }
    ok(&s.qemu_img(&["compare", "-q", "b.qcow2", "q.qcow2"]));
    // QEMU leaves the file ending where its snapshot table ends, blk at a cluster boundary (the tail is a
    // hole in both): the holes before the shorter file's last 4 KiB block are compared.
    let len = |name: &str| std::fs::metadata(s.path(name)).unwrap().len();
    let limit = len("b.qcow2").min(len("q.qcow2")) / 4096 * 4096;
    assert_eq!(
        holes(s, "b.qcow2", limit),
        holes(s, "q.qcow2", limit),
        "{what}: the holes of the image files"
    );
    // Not the allocated blocks (`stat`): ext4 counts its extent tree blocks there too, which differ by one
    // block between twins with the same holes.
}

#[cfg(feature = "qcow2")]
#[test]
fn freed_clusters_are_punched_like_qemu() {
    for options in ["compat=1.1", "compat=0.10,cluster_size=4k"] {
        let s = Scratch::new();
        // The same qemu-img and qemu-io commands on both make identical files, holes included.
        for name in ["q.qcow2", "b.qcow2"] {
            ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, name, "4M"]));
            ok(&s.qemu_io(&qemu_io_args("qcow2", name, &["write -P 0x11 0 1M"])));
            ok(&s.qemu_img(&["snapshot", "-c", "one", name]));
            // Overwritten after the snapshot: copied, the snapshot keeps the old clusters.
            ok(&s.qemu_io(&qemu_io_args(
                "qcow2",
                name,
                &["write -P 0x22 0 512k", "write -P 0x23 2M 256k"],
            )));
            ok(&s.qemu_img(&["snapshot", "-c", "two", name]));
            ok(&s.qemu_io(&qemu_io_args("qcow2", name, &["write -P 0x33 256k 512k"])));
        }
        assert_twins_agree(&s, &format!("{options}: the copies"));
        // Deleting `one` frees the clusters only it kept (the first 512 KiB before the overwrite).
        let steps: &[&[&str]] = &[
            &["snapshot", "-d", "one"],
            // Applying `two` frees the current disk's own copies (256k..768k).
            &["snapshot", "-a", "two"],
            &["snapshot", "-d", "two"],
        ];
        for step in steps {
            let mut theirs = step.to_vec();
            theirs.push("q.qcow2");
            ok(&s.qemu_img(&theirs));
            let mut ours = step.to_vec();
            ours.push("b.qcow2");
            ok(&s.blk(&ours));
            assert_twins_agree(&s, &format!("{options}: {step:?}"));
        }
    }
}
