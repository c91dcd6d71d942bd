//! QEMU's overlap check through the CLI (issue 15, faults 1 and 5): on images already inconsistent (a
//! metadata cluster with refcount 0, a snapshot table declared over guest data) `blk resize`, `blk io` and
//! `blk snapshot -c` refuse the write over metadata and mark the image corrupt as qemu-img / qemu-io do on a
//! copy, leaving the same bytes (so `qemu-img check` finds no more corruptions after blk than after QEMU);
//! and a snapshot table QEMU refuses to open is refused by every command that opens the image.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stderr, Scratch};

/// Writes `bytes` at `at` in the file `name`.
fn patch(s: &Scratch, name: &str, at: usize, bytes: &[u8]) {
    let mut image = s.read(name);
    image[at..at + bytes.len()].copy_from_slice(bytes);
    s.write(name, &image);
}

fn be64(image: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(image[at..at + 8].try_into().unwrap())
}

/// The 16-bit refcount of host cluster `cluster` set to 0 (in the first refcount block).
fn drop_refcount(s: &Scratch, name: &str, cluster: usize) {
    let image = s.read(name);
    let block = be64(&image, be64(&image, 48) as usize) as usize;
    patch(s, name, block + 2 * cluster, &[0, 0]);
}

/// The corruptions `qemu-img check` counts.
fn corruptions(s: &Scratch, name: &str) -> u64 {
    let out = s.qemu_img(&["check", "--output=json", name]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("qemu-img check {name}: {e}: {}", stderr(&out)));
    json["corruptions"].as_u64().unwrap_or(0)
}

/// Whether the header's corrupt bit (incompatible bit 1) is set.
fn marked_corrupt(s: &Scratch, name: &str) -> bool {
    be64(&s.read(name), 72) & 2 != 0
}

/// Runs `qemu` on `q-NAME` and `blk` on `b-NAME` (copies of `name`): both fail, blk naming the metadata
/// QEMU names, both mark the image corrupt, `qemu-img check` finds no more corruptions in blk's copy than in
/// QEMU's (or than before), and, when `same_bytes`, the two copies end byte for byte equal.
fn same_refusal(
    s: &Scratch,
    name: &str,
    qemu: &[&str],
    blk: &[&str],
    overlaps: &str,
    same_bytes: bool,
) {
    let (q, b) = (format!("q-{name}"), format!("b-{name}"));
    s.write(&q, &s.read(name));
    s.write(&b, &s.read(name));
    let before = corruptions(s, name);
    let qemu_args: Vec<&str> = qemu
        .iter()
        .map(|&a| if a == "IMG" { &q[..] } else { a })
        .collect();
    let blk_args: Vec<&str> = blk
        .iter()
        .map(|&a| if a == "IMG" { &b[..] } else { a })
        .collect();
    let theirs = if qemu_args[0] == "qemu-io" {
        s.qemu_io(&qemu_args[1..])
    } else {
        s.qemu_img(&qemu_args)
    };
    let ours = s.blk(&blk_args);
    let expected = format!("Preventing invalid write on metadata (overlaps with {overlaps})");
    assert!(
        stderr(&theirs).contains(&expected),
        "qemu: {}",
        stderr(&theirs)
    );
    assert_ne!(code(&ours), 0, "blk {blk_args:?} succeeded");
    assert!(stderr(&ours).contains(&expected), "blk: {}", stderr(&ours));
    assert!(marked_corrupt(s, &q), "qemu did not mark its copy corrupt");
    assert!(marked_corrupt(s, &b), "blk did not mark the image corrupt");
    assert!(corruptions(s, &b) <= corruptions(s, &q).max(before));
    assert!(
        !same_bytes || s.read(&b) == s.read(&q),
        "blk left other bytes than QEMU"
    );
    // The image marked corrupt is refused for writing, as qemu-img refuses it.
    let again = s.blk(&["io", "-c", "write -P 7 0 4k", &b]);
    assert_ne!(code(&again), 0);
    assert!(stderr(&again).contains("corrupt"), "{}", stderr(&again));
}

/// `resize` on an image whose L2 table has refcount 0: the new L1 table would land on the L2 table.
#[test]
fn resize_does_not_put_the_l1_table_on_an_l2_table() {
    let s = Scratch::new();
    ok(&s.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "r.qcow2",
        "2M",
    ]));
    ok(&s.qemu_io(&["-c", "write -P 1 0 4k", "r.qcow2"]));
    // 4 KiB clusters: header, refcount table, refcount block, L1 table, L2 table (cluster 4), data.
    drop_refcount(&s, "r.qcow2", 4);
    same_refusal(
        &s,
        "r.qcow2",
        &["resize", "IMG", "+1M"],
        &["resize", "IMG", "+1M"],
        "active L2 table",
        true,
    );
}

/// A guest write on an image whose refcount block has refcount 0: the new L2 table would be the block.
/// (QEMU then frees and discards the cluster it allocated, which zeroes its own refcount block: blk leaves
/// the block, so the bytes differ and blk's copy has fewer corruptions.)
#[test]
fn a_guest_write_does_not_allocate_a_live_refcount_block() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "w.qcow2", "64M"]));
    // 64 KiB clusters: the refcount block is cluster 2.
    drop_refcount(&s, "w.qcow2", 2);
    same_refusal(
        &s,
        "w.qcow2",
        &["qemu-io", "-c", "write -P 0x5a 0 64k", "IMG"],
        &["io", "-c", "write -P 0x5a 0 64k", "IMG"],
        "refcount block",
        false,
    );
}

/// `snapshot -c` on an image whose L2 table has refcount 0: the snapshot's L1 table would land on it.
#[test]
fn snapshot_create_does_not_write_its_l1_table_over_an_l2_table() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "s.qcow2", "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 1 0 64k", "s.qcow2"]));
    // The L2 table is cluster 4.
    drop_refcount(&s, "s.qcow2", 4);
    same_refusal(
        &s,
        "s.qcow2",
        &["snapshot", "-c", "s1", "IMG"],
        &["snapshot", "-c", "s1", "IMG"],
        "active L2 table",
        true,
    );
}

/// A snapshot table declared over guest data (one all-zero entry, valid as such): a guest write there is a
/// write over the snapshot table.
#[test]
fn a_guest_write_does_not_land_in_the_declared_snapshot_table() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "t.qcow2", "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 0 0 64k", "t.qcow2"]));
    let image = s.read("t.qcow2");
    let l2 = (be64(&image, be64(&image, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = be64(&image, l2) & 0x00ff_ffff_ffff_fe00;
    // nb_snapshots = 1, snapshots_offset = the data cluster of guest offset 0.
    let mut field = 1u32.to_be_bytes().to_vec();
    field.extend_from_slice(&data.to_be_bytes());
    patch(&s, "t.qcow2", 60, &field);
    same_refusal(
        &s,
        "t.qcow2",
        &["qemu-io", "-c", "write -P 0x5a 0 4k", "IMG"],
        &["io", "-c", "write -P 0x5a 0 4k", "IMG"],
        "snapshot table",
        true,
    );
}

/// A snapshot whose extra_data_size QEMU refuses (0xffffffff): every command that opens the image refuses it
/// and leaves it as it was, as qemu-img and qemu-io do.
#[test]
fn a_snapshot_table_qemu_refuses_is_refused_by_every_command() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "x.qcow2", "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 1 0 64k", "x.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "s1", "x.qcow2"]));
    let table = be64(&s.read("x.qcow2"), 64) as usize;
    patch(&s, "x.qcow2", table + 36, &[0xff; 4]);
    let original = s.read("x.qcow2");
    let commands: [&[&str]; 6] = [
        &["io", "-c", "write -P 2 0 4k", "x.qcow2"],
        &["resize", "x.qcow2", "+1M"],
        &["amend", "-o", "lazy_refcounts=on", "x.qcow2"],
        &["convert", "-O", "raw", "x.qcow2", "out.raw"],
        &["info", "x.qcow2"],
        &["snapshot", "-c", "s2", "x.qcow2"],
    ];
    for args in commands {
        let theirs = if args[0] == "io" {
            s.qemu_io(&args[1..])
        } else {
            s.qemu_img(args)
        };
        assert!(
            stderr(&theirs).contains("Too much extra metadata in snapshot table entry 0"),
            "qemu {args:?}: {}",
            stderr(&theirs)
        );
        let ours = s.blk(args);
        assert_ne!(code(&ours), 0, "blk {args:?} succeeded");
        assert!(
            stderr(&ours)
                .to_lowercase()
                .contains("too much extra metadata in snapshot table entry 0"),
            "blk {args:?}: {}",
            stderr(&ours)
        );
        assert!(
            s.read("x.qcow2") == original,
            "blk {args:?} changed the image"
        );
        assert!(!s.path("out.raw").exists(), "blk {args:?} wrote an output");
    }
}

/// `check -r all` on that image repairs what qemu-img's repairs (the extra data cut, the overhanging
/// snapshot dropped, its clusters' leaks and the OFLAG_COPIED flags): the same JSON report, an image
/// `qemu-img check` calls clean, the same guest contents.
#[test]
fn check_repairs_a_snapshot_table_qemu_refuses_like_qemu_img() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "x.qcow2", "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 1 0 64k", "x.qcow2"]));
    ok(&s.qemu_img(&["snapshot", "-c", "s1", "x.qcow2"]));
    let table = be64(&s.read("x.qcow2"), 64) as usize;
    patch(&s, "x.qcow2", table + 36, &[0xff; 4]);
    s.write("q.qcow2", &s.read("x.qcow2"));
    let ours = s.blk(&["check", "-r", "all", "--output=json", "x.qcow2"]);
    let theirs = s.qemu_img(&["check", "-r", "all", "--output=json", "q.qcow2"]);
    assert_eq!(code(&ours), code(&theirs), "{}", stderr(&ours));
    let mut a: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let mut b: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    a.as_object_mut().unwrap().remove("filename");
    b.as_object_mut().unwrap().remove("filename");
    assert_eq!(a, b, "repair JSON differs");
    assert!(
        stderr(&ours).contains(
            "Discarding too much extra metadata in snapshot table entry 0 (4294967295 > 1024)"
        ),
        "{}",
        stderr(&ours)
    );
    assert_eq!(code(&s.qemu_img(&["check", "x.qcow2"])), 0);
    ok(&s.qemu_img(&["compare", "x.qcow2", "q.qcow2"]));
    // Opens again everywhere.
    ok(&s.blk(&["io", "-c", "write -P 2 0 4k", "x.qcow2"]));
}
