//! `snapshot -a` of a snapshot whose L1 table is larger than the active one: QEMU grows the active table to
//! the snapshot's size first (`qcow2_grow_l1_table` with the exact size). qemu-img never makes such an image
//! at one disk size, so twins made by QEMU get their snapshot entry's L1 size raised from 1 to 2 (the second
//! entry is the zero padding of the snapshot's L1 cluster: a valid image); then one is applied by qemu-img,
//! the other by blk, and both are written on by qemu-io.

mod common;

use std::os::unix::fs::FileExt;

use common::{ok, qemu_info_without_names, qemu_io_args, Scratch};

/// Reads `N` bytes at `offset` of the file `name`.
fn read_at<const N: usize>(s: &Scratch, name: &str, offset: u64) -> [u8; N] {
    let mut buf = [0u8; N];
    std::fs::File::open(s.path(name))
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// `qemu-img info` of `name` without what differs between twins (names, sizes on disk, the snapshots'
/// dates: each twin's snapshot was taken by its own qemu-img run).
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

/// Raises the L1 size of the first snapshot entry of `name` to `entries`.
fn raise_snapshot_l1_size(s: &Scratch, name: &str, entries: u32) {
    let table = u64::from_be_bytes(read_at::<8>(s, name, 64));
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.path(name))
        .unwrap()
        .write_all_at(&entries.to_be_bytes(), table + 8)
        .unwrap();
}

#[cfg(feature = "qcow2")]
#[test]
fn apply_grows_the_active_l1_table_like_qemu() {
    for options in ["compat=1.1", "compat=0.10"] {
        let s = Scratch::new();
        for name in ["q.qcow2", "b.qcow2"] {
            ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, name, "512M"]));
            ok(&s.qemu_io(&qemu_io_args(
                "qcow2",
                name,
                &["write -P 1 0 64k", "write -P 3 300M 128k"],
            )));
            ok(&s.qemu_img(&["snapshot", "-c", "one", name]));
            ok(&s.qemu_io(&qemu_io_args(
                "qcow2",
                name,
                &["write -P 2 0 128k", "write -z 300M 64k"],
            )));
            raise_snapshot_l1_size(&s, name, 2);
            ok(&s.qemu_img(&["check", "-q", name]));
        }
        // The active table has one entry, the snapshot's two.
        assert_eq!(read_at::<4>(&s, "q.qcow2", 36), 1u32.to_be_bytes());
        ok(&s.qemu_img(&["snapshot", "-a", "one", "q.qcow2"]));
        ok(&s.blk(&["snapshot", "-a", "one", "b.qcow2"]));
        let agree = |what: &str| {
            for name in ["b.qcow2", "q.qcow2"] {
                ok(&s.qemu_img(&["check", "-q", name]));
            }
            assert_eq!(
                read_at::<4>(&s, "b.qcow2", 36),
                read_at::<4>(&s, "q.qcow2", 36),
                "{options}: {what}: L1 sizes"
            );
            assert_eq!(
                info_without_dates(&s, "b.qcow2"),
                info_without_dates(&s, "q.qcow2"),
                "{options}: {what}: qemu-img info"
            );
            ok(&s.qemu_img(&["compare", "-q", "b.qcow2", "q.qcow2"]));
        };
        agree("after the apply");
        assert_eq!(read_at::<4>(&s, "b.qcow2", 36), 2u32.to_be_bytes());
        let read = s.qemu_io(&qemu_io_args(
            "qcow2",
            "b.qcow2",
            &[
                "read -P 1 0 64k",
                "read -P 0 64k 64k",
                "read -P 3 300M 128k",
            ],
        ));
        assert!(!ok(&read).contains("verification failed"));
        for name in ["q.qcow2", "b.qcow2"] {
            ok(&s.qemu_io(&qemu_io_args(
                "qcow2",
                name,
                &["write -P 4 32k 64k", "write -P 5 511M 4k"],
            )));
        }
        agree("after writes");
    }
}
