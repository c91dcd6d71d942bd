//! Creating, deleting and applying internal snapshots (`qemu-img snapshot -c / -d / -a`) through blk, checked
//! against QEMU: `qemu-img check`, `qemu-img snapshot -l`, `qemu-img convert -l` of each snapshot, and twins
//! (the same sequence done by qemu-img + qemu-io on one copy and by blk on the other).

mod support;

use std::path::{Path, PathBuf};

use blk_core::ImageAdmin;
use blk_core::{DiskFile, ErrorKind, SnapshotSelector};
use support::*;

const SIZE: u64 = 2 << 20;

/// (compat, cluster size, extended L2)
const LAYOUTS: [(&str, u64, bool); 5] = [
    ("0.10", 512, false),
    ("0.10", 65536, false),
    ("1.1", 512, false),
    ("1.1", 65536, false),
    ("1.1", 65536, true),
];

fn create_image(dir: &Path, name: &str, compat: &str, cs: u64, extended: bool) -> PathBuf {
    let path = file(dir, name);
    let options = format!(
        "compat={compat},cluster_size={cs}{}",
        if extended { ",extended_l2=on" } else { "" }
    );
    qemu_create(&path, &options, &SIZE.to_string());
    path
}

fn open_rw(path: &Path) -> support::Disk {
    support::open_disk(path, &rw()).unwrap()
}

/// A cluster-sized buffer that compresses well but is not uniform.
fn compressible(cs: u64, seed: u8) -> Vec<u8> {
    (0..cs).map(|i| seed.wrapping_add((i / 64) as u8)).collect()
}

/// Writes through `disk` and records the write in `model`.
fn write(disk: &support::Disk, model: &mut [u8], offset: u64, data: &[u8]) {
    disk.write_all_at(offset, data).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

fn zeroes(disk: &support::Disk, model: &mut [u8], offset: u64, len: u64, unmap: bool) {
    disk.write_zeroes(offset, len, unmap).unwrap();
    model[offset as usize..(offset + len) as usize].fill(0);
}

fn compressed(disk: &support::Disk, model: &mut [u8], offset: u64, data: &[u8]) {
    disk.write_compressed(offset, data).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// The guest contents of snapshot `name` as qemu-img converts it.
fn snapshot_contents(image: &Path, name: &str) -> Vec<u8> {
    let dir = tempdir();
    let out = dir.path().join("snap.raw");
    let selector = format!("snapshot.name={name}");
    qemu_img(&[
        "convert",
        "-U",
        "-l",
        &selector,
        "-f",
        "qcow2",
        "-O",
        "raw",
        path_str(image),
        path_str(&out),
    ]);
    std::fs::read(&out).unwrap()
}

/// (ID, name, VM size column) of each snapshot `qemu-img snapshot -l` lists.
fn qemu_snapshot_list(image: &Path) -> Vec<(String, String, String)> {
    let out = qemu_img(&["snapshot", "-U", "-l", path_str(image)]);
    out.lines()
        .skip(2)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 4).then(|| {
                (
                    cols[0].to_string(),
                    cols[1].to_string(),
                    format!("{} {}", cols[2], cols[3]),
                )
            })
        })
        .collect()
}

fn by_name(name: &str) -> SnapshotSelector {
    SnapshotSelector::Name(name.to_string())
}

/// Data, compressed, zero (with and without an offset) clusters, writes across an L2 boundary and, with
/// extended L2 entries, partial subclusters.
fn populate(disk: &support::Disk, model: &mut [u8], cs: u64) {
    write(disk, model, 0, &vec![0x11; 3 * cs as usize]);
    compressed(disk, model, 4 * cs, &compressible(cs, 0x22));
    write(disk, model, 6 * cs, &vec![0x33; cs as usize]);
    zeroes(disk, model, 6 * cs, cs, false);
    write(disk, model, 8 * cs, &vec![0x34; 2 * cs as usize]);
    zeroes(disk, model, 8 * cs, 2 * cs, true);
    let l2_coverage = (cs * cs / 8).min(SIZE / 2);
    write(disk, model, l2_coverage - cs / 2, &vec![0x35; cs as usize]);
    write(disk, model, 11 * cs + 100, &[0x36; 300]);
}

/// Writes after a snapshot: copy-on-write of shared data, compressed and zero clusters.
fn overwrite(disk: &support::Disk, model: &mut [u8], cs: u64, seed: u8) {
    write(disk, model, cs + 7, &[seed; 100]);
    write(disk, model, 4 * cs + 1, &vec![seed ^ 1; cs as usize / 2]);
    zeroes(disk, model, 0, cs, false);
    compressed(disk, model, 12 * cs, &compressible(cs, seed));
    write(disk, model, SIZE - cs, &vec![seed ^ 2; cs as usize]);
    zeroes(disk, model, 6 * cs, cs, true);
    write(disk, model, 8 * cs + 5, &[seed ^ 3; 10]);
}

fn assert_current(image: &Path, model: &[u8], what: &str) {
    assert_same(&qemu_contents(image, "qcow2"), model, what);
    let disk = support::open_disk(image, &ro()).unwrap();
    assert_same(&read_all(&disk), model, what);
}

#[test]
fn create_then_write_then_create_reads_right_in_qemu() {
    let _serial = serial();
    for (compat, cs, extended) in LAYOUTS {
        let what = format!("compat={compat} cluster_size={cs} extended_l2={extended}");
        let dir = tempdir();
        let path = create_image(dir.path(), "s.qcow2", compat, cs, extended);
        let mut model = vec![0u8; SIZE as usize];
        let disk = open_rw(&path);
        populate(&disk, &mut model, cs);
        disk.create_snapshot("first").unwrap();
        let first = model.clone();
        overwrite(&disk, &mut model, cs, 0x40);
        disk.create_snapshot("second").unwrap();
        let second = model.clone();
        overwrite(&disk, &mut model, cs, 0x50);
        let listed: Vec<_> = disk
            .image_info()
            .unwrap()
            .snapshots
            .iter()
            .map(|s| (s.id.clone(), s.name.clone(), s.vm_state_size, s.icount))
            .collect();
        assert_eq!(
            listed,
            [
                ("1".to_string(), "first".to_string(), 0, Some(0)),
                ("2".to_string(), "second".to_string(), 0, Some(0))
            ],
            "{what}"
        );
        drop(disk);
        assert_qemu_check_clean(&path);
        assert_eq!(
            qemu_snapshot_list(&path),
            [
                ("1".into(), "first".into(), "0 B".into()),
                ("2".into(), "second".into(), "0 B".into())
            ],
            "{what}"
        );
        assert_same(&snapshot_contents(&path, "first"), &first, &what);
        assert_same(&snapshot_contents(&path, "second"), &second, &what);
        assert_current(&path, &model, &what);

        // Delete the first: its clusters are freed (no leaks), the rest reads as before.
        open_rw(&path).delete_snapshot(&by_name("first")).unwrap();
        assert_qemu_check_clean(&path);
        assert_eq!(qemu_snapshot_list(&path).len(), 1, "{what}");
        assert_same(&snapshot_contents(&path, "second"), &second, &what);
        assert_current(&path, &model, &what);

        // Apply the second: the disk reads as it; later writes leave the snapshot alone.
        let disk = open_rw(&path);
        disk.apply_snapshot(&SnapshotSelector::parse("second"))
            .unwrap();
        assert_same(&read_all(&disk), &second, &what);
        let mut model = second.clone();
        overwrite(&disk, &mut model, cs, 0x60);
        drop(disk);
        assert_qemu_check_clean(&path);
        assert_same(&snapshot_contents(&path, "second"), &second, &what);
        assert_current(&path, &model, &what);

        // Deleting the last snapshot frees everything that was shared.
        open_rw(&path)
            .delete_snapshot(&SnapshotSelector::Id("2".into()))
            .unwrap();
        assert_qemu_check_clean(&path);
        assert!(qemu_snapshot_list(&path).is_empty(), "{what}");
        assert_current(&path, &model, &what);
    }
}

/// One step of a twin sequence.
enum Step {
    Create(&'static str),
    Delete(&'static str),
    Apply(&'static str),
    /// qemu-io command, and what blk does for it.
    Io(String),
}

/// Does `cmd` (a qemu-io `write [-P n] [-z] [-c] OFFSET LEN` command) through blk.
fn blk_io(disk: &support::Disk, cmd: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut pattern = 0xcdu8;
    let (mut zero, mut comp) = (false, false);
    let mut numbers = Vec::new();
    let mut i = 1;
    while i < words.len() {
        match words[i] {
            "-P" => {
                pattern = words[i + 1].parse().unwrap();
                i += 1;
            }
            "-z" => zero = true,
            "-c" => comp = true,
            n => numbers.push(n.parse::<u64>().unwrap()),
        }
        i += 1;
    }
    let (offset, len) = (numbers[0], numbers[1]);
    if zero {
        disk.write_zeroes(offset, len, false).unwrap();
    } else if comp {
        disk.write_compressed(offset, &vec![pattern; len as usize])
            .unwrap();
    } else {
        disk.write_all_at(offset, &vec![pattern; len as usize])
            .unwrap();
    }
}

fn run_twins(compat: &str, cs: u64, extended: bool, steps: &[Step]) {
    let what = format!("compat={compat} cluster_size={cs} extended_l2={extended}");
    let dir = tempdir();
    let theirs = create_image(dir.path(), "qemu.qcow2", compat, cs, extended);
    let ours = file(dir.path(), "blk.qcow2");
    std::fs::copy(&theirs, &ours).unwrap();
    for step in steps {
        match step {
            Step::Create(name) => {
                qemu_img(&["snapshot", "-c", name, path_str(&theirs)]);
                open_rw(&ours).create_snapshot(name).unwrap();
            }
            Step::Delete(name) => {
                qemu_img(&["snapshot", "-d", name, path_str(&theirs)]);
                open_rw(&ours)
                    .delete_snapshot(&SnapshotSelector::parse(name))
                    .unwrap();
            }
            Step::Apply(name) => {
                qemu_img(&["snapshot", "-a", name, path_str(&theirs)]);
                open_rw(&ours)
                    .apply_snapshot(&SnapshotSelector::parse(name))
                    .unwrap();
            }
            Step::Io(cmd) => {
                qemu_io("qcow2", &theirs, &[cmd.as_str()]);
                blk_io(&open_rw(&ours), cmd);
            }
        }
        assert_qemu_check_clean(&ours);
    }
    assert_qemu_check_clean(&theirs);
    let list = qemu_snapshot_list(&theirs);
    assert_eq!(qemu_snapshot_list(&ours), list, "{what}");
    qemu_img(&["compare", "-q", path_str(&theirs), path_str(&ours)]);
    for (_, name, _) in &list {
        assert_same(
            &snapshot_contents(&ours, name),
            &snapshot_contents(&theirs, name),
            &format!("{what}: snapshot {name}"),
        );
    }
}

#[test]
fn twins_with_qemu_img_snapshot() {
    let _serial = serial();
    use Step::*;
    for (compat, cs, extended) in LAYOUTS {
        let c = |n: u64| (n * cs).to_string();
        let w = |p: u8, off: u64, len: u64, flag: &str| {
            let pattern = if flag == "-z" {
                String::new()
            } else {
                format!("-P {p}")
            };
            format!("write {flag} {pattern} {} {}", c(off), c(len))
        };
        let steps = [
            Io(w(1, 0, 3, "")),
            Io(w(2, 4, 1, "-c")),
            Create("a"),
            Io(w(3, 1, 1, "")),
            Io(w(0, 2, 1, "-z")),
            Io(w(4, 4, 1, "")),
            Create("b"),
            Io(w(5, 0, 6, "")),
            Apply("a"),
            Io(w(6, 5, 2, "")),
            Delete("b"),
            Create("c"),
            Io(w(7, 2, 4, "")),
            Delete("a"),
            Apply("c"),
            Io(w(8, 3, 1, "")),
            Delete("c"),
            Io(w(9, 12, 1, "-c")),
            Create("d"),
            Io(w(10, 1, 2, "")),
        ];
        run_twins(compat, cs, extended, &steps);
    }
}

#[test]
fn lookups_follow_qemu_img() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "l.qcow2", "1.1", 65536, false);
    qemu_io("qcow2", &path, &["write -P 1 0 4k"]);
    // Snapshot "2" has ID 1; "x" has ID 2. Names may repeat, as with qemu-img.
    let disk = open_rw(&path);
    disk.create_snapshot("2").unwrap();
    disk.write_all_at(0, &[2; 4096]).unwrap();
    disk.create_snapshot("x").unwrap();
    disk.create_snapshot("x").unwrap();
    disk.write_all_at(0, &[3; 4096]).unwrap();
    // Apply looks up IDs first: "2" is snapshot "x" (ID 2).
    disk.apply_snapshot(&SnapshotSelector::parse("2")).unwrap();
    let mut buf = [0u8; 4096];
    disk.read_exact_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 2));
    // Delete looks up names only (as qemu-img 10): "3" names nothing, "2" is the snapshot named "2" (ID 1).
    let e = disk
        .delete_snapshot(&SnapshotSelector::parse("3"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    disk.delete_snapshot(&SnapshotSelector::parse("2")).unwrap();
    let ids: Vec<_> = disk
        .image_info()
        .unwrap()
        .snapshots
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ids, ["2", "3"]);
    // IDs continue from the largest; an exact ID selector deletes by ID.
    disk.create_snapshot("y").unwrap();
    disk.create_snapshot("z").unwrap();
    disk.delete_snapshot(&SnapshotSelector::Id("5".into()))
        .unwrap();
    let e = disk.delete_snapshot(&by_name("nosuch")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = disk.apply_snapshot(&by_name("nosuch")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let long = "n".repeat(300);
    disk.create_snapshot(&long).unwrap();
    drop(disk);
    let list = qemu_snapshot_list(&path);
    let ids: Vec<_> = list.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(ids, ["2", "3", "4", "5"]);
    assert_eq!(list[2].1, "y");
    assert_eq!(list[3].1.len(), 255);
    assert_qemu_check_clean(&path);
}

#[test]
fn read_only_and_data_file_images_are_refused() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "r.qcow2", "1.1", 65536, false);
    let disk = support::open_disk(&path, &ro()).unwrap();
    assert!(disk.create_snapshot("a").is_err());
    drop(disk);
    let data = file(dir.path(), "d.qcow2");
    let data_option = format!("data_file={}", path_str(&file(dir.path(), "d.raw")));
    qemu_create(&data, &data_option, "1M");
    let disk = support::open_disk(&data, &rw_data()).unwrap();
    let e = disk.create_snapshot("a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

/// The first snapshot table entry's offset in `image`.
fn first_entry(image: &[u8]) -> usize {
    u64::from_be_bytes(image[64..72].try_into().unwrap()) as usize
}

#[test]
fn broken_snapshot_l1_tables_fail_apply_and_delete() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "b.qcow2", "1.1", 65536, false);
    qemu_io("qcow2", &path, &["write -P 7 0 128k"]);
    qemu_img(&["snapshot", "-c", "snap", path_str(&path)]);
    let image = std::fs::read(&path).unwrap();
    let table = first_entry(&image);
    // (field offset in the entry, bytes): an unaligned L1 offset, one past the end of the file, one over the
    // header, an L1 table larger than QEMU's 32 MiB cap, one running past the end of the file.
    let cases: [(usize, Vec<u8>); 5] = [
        (0, 0x10200u64.to_be_bytes().to_vec()),
        (0, (1u64 << 40).to_be_bytes().to_vec()),
        (0, 0u64.to_be_bytes().to_vec()),
        (8, (5u32 << 20).to_be_bytes().to_vec()),
        (8, (1u32 << 20).to_be_bytes().to_vec()),
    ];
    for (field, bytes) in cases {
        let mut broken = image.clone();
        broken[table + field..table + field + bytes.len()].copy_from_slice(&bytes);
        std::fs::write(&path, &broken).unwrap();
        let disk = open_rw(&path);
        let e = disk.apply_snapshot(&by_name("snap")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
        let e = disk.delete_snapshot(&by_name("snap")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
        drop(disk);
        // Nothing changed.
        assert_eq!(std::fs::read(&path).unwrap(), broken);
    }
}

#[test]
fn unknown_extra_data_is_kept_and_v2_entries_are_upgraded() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "e.qcow2", "1.1", 65536, false);
    qemu_io("qcow2", &path, &["write -P 7 0 64k"]);
    qemu_img(&["snapshot", "-c", "old", path_str(&path)]);
    // Rewrite the entry in place with 8 more bytes of extra data (the table's cluster has room).
    let mut image = std::fs::read(&path).unwrap();
    image.resize(image.len().next_multiple_of(65536), 0);
    let at = first_entry(&image);
    let entry = image[at..at + 40 + 24 + 1 + 3].to_vec();
    let mut grown = entry[..40].to_vec();
    grown[36..40].copy_from_slice(&32u32.to_be_bytes());
    grown.extend_from_slice(&entry[40..64]);
    grown.extend_from_slice(b"UNKNOWN!");
    grown.extend_from_slice(&entry[64..]);
    image[at..at + grown.len()].copy_from_slice(&grown);
    std::fs::write(&path, &image).unwrap();
    assert_qemu_check_clean(&path);

    open_rw(&path).create_snapshot("new").unwrap();
    assert_qemu_check_clean(&path);
    let image = std::fs::read(&path).unwrap();
    let at = first_entry(&image);
    assert_eq!(&image[at..at + grown.len()], &grown[..]);
    let names: Vec<_> = qemu_snapshot_list(&path).into_iter().map(|s| s.1).collect();
    assert_eq!(names, ["old", "new"]);
    // The new entry: 24 bytes of extra data with the disk size, icount 0, ID 2.
    let second = (at + grown.len()).next_multiple_of(8);
    let e = &image[second..];
    assert_eq!(u32::from_be_bytes(e[36..40].try_into().unwrap()), 24);
    assert_eq!(u64::from_be_bytes(e[48..56].try_into().unwrap()), SIZE);
    assert_eq!(u64::from_be_bytes(e[56..64].try_into().unwrap()), 0);
    assert_eq!(&e[64..68], b"2new");
}

#[test]
fn one_bit_refcounts_refuse_a_second_reference_without_corrupting() {
    let _serial = serial();
    let dir = tempdir();
    let path = file(dir.path(), "r1.qcow2");
    qemu_create(&path, "refcount_bits=1", "1M");
    qemu_io("qcow2", &path, &["write -P 7 0 64k"]);
    let disk = open_rw(&path);
    assert!(disk.create_snapshot("s").is_err());
    drop(disk);
    // At most leaks (qemu-img check exit code 3), no corruption (2).
    let (code, out) = qemu_img_status(&["check", path_str(&path)]);
    assert!(code == 0 || code == 3, "{code}: {out}");
    assert_same(
        &qemu_contents(&path, "qcow2")[..65536],
        &[7u8; 65536],
        "data",
    );
}

#[test]
fn broken_l2_table_offsets_in_a_snapshot_fail_without_panic() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "l2.qcow2", "1.1", 65536, false);
    qemu_io("qcow2", &path, &["write -P 7 0 128k"]);
    qemu_img(&["snapshot", "-c", "snap", path_str(&path)]);
    let mut image = std::fs::read(&path).unwrap();
    let table = first_entry(&image);
    let l1 = u64::from_be_bytes(image[table..table + 8].try_into().unwrap()) as usize;
    // The snapshot's first L2 table: past the end of the file.
    image[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | (1 << 40)).to_be_bytes());
    std::fs::write(&path, &image).unwrap();
    let disk = open_rw(&path);
    let e = disk.apply_snapshot(&by_name("snap")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
    // The current disk is untouched.
    let mut buf = vec![0u8; 128 << 10];
    disk.read_exact_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    // Delete drops the entry first (as QEMU): what the broken table reached leaks.
    let e = disk.delete_snapshot(&by_name("snap")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CorruptImage, "{e}");
    drop(disk);
    assert!(qemu_snapshot_list(&path).is_empty());
    let (code, out) = qemu_img_status(&["check", path_str(&path)]);
    assert!(code == 0 || code == 3, "{code}: {out}");
    assert_same(
        &qemu_contents(&path, "qcow2")[..128 << 10],
        &buf,
        "current disk",
    );
}

#[test]
fn snapshots_of_another_disk_size_are_refused() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "z.qcow2", "1.1", 65536, false);
    qemu_io("qcow2", &path, &["write -P 7 0 64k"]);
    open_rw(&path).create_snapshot("small").unwrap();
    qemu_img(&["resize", "-q", path_str(&path), "4M"]);
    let before = std::fs::read(&path).unwrap();
    let e = open_rw(&path)
        .apply_snapshot(&by_name("small"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedFeature, "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_qemu_check_clean(&path);
}

/// QEMU resizes a v3 image to the snapshot's size before applying it; blk callers do it with `resize`, as
/// `snapshot_disk_size` tells. Both ways give the same disk.
#[test]
fn apply_after_resizing_to_the_snapshot_size_matches_qemu() {
    let _serial = serial();
    for (grow_to, shrink_to) in [("4M", None), ("1M", Some("512k"))] {
        let dir = tempdir();
        let theirs = create_image(dir.path(), "q.qcow2", "1.1", 65536, false);
        qemu_io(
            "qcow2",
            &theirs,
            &["write -P 7 0 192k", "write -P 8 1984k 64k"],
        );
        qemu_img(&["snapshot", "-c", "snap", path_str(&theirs)]);
        let mut resize_args = vec!["resize", "-q"];
        if shrink_to.is_some() {
            resize_args.push("--shrink");
        }
        resize_args.push(path_str(&theirs));
        resize_args.push(shrink_to.unwrap_or(grow_to));
        qemu_img(&resize_args);
        qemu_io("qcow2", &theirs, &["write -P 9 64k 64k"]);
        let ours = file(dir.path(), "b.qcow2");
        std::fs::copy(&theirs, &ours).unwrap();
        qemu_img(&["snapshot", "-a", "snap", path_str(&theirs)]);

        let disk = open_rw(&ours);
        let size = disk.snapshot_disk_size(&by_name("snap")).unwrap();
        assert_eq!(size, SIZE);
        assert_ne!(disk.logical_size(), size);
        drop(disk);
        let options = blk_qcow::Qcow2ResizeOptions {
            shrink: true,
            ..Default::default()
        };
        blk_qcow::resize(&ours, size, &options).unwrap();
        open_rw(&ours).apply_snapshot(&by_name("snap")).unwrap();
        assert_qemu_check_clean(&ours);
        assert_qemu_check_clean(&theirs);
        qemu_img(&["compare", "-q", path_str(&theirs), path_str(&ours)]);
        assert_same(
            &snapshot_contents(&ours, "snap"),
            &snapshot_contents(&theirs, "snap"),
            "snapshot",
        );
    }
}

#[test]
fn the_65537th_snapshot_is_refused() {
    let _serial = serial();
    let dir = tempdir();
    let path = create_image(dir.path(), "m.qcow2", "1.1", 65536, false);
    // 65536 minimal entries (40-byte header, 24 bytes of extra data, no ID, no name) in a new cluster range
    // at the end of the file.
    let mut image = std::fs::read(&path).unwrap();
    image.resize(image.len().next_multiple_of(65536), 0);
    let table = image.len();
    let mut entry = vec![0u8; 64];
    entry[36..40].copy_from_slice(&24u32.to_be_bytes());
    for _ in 0..65536 {
        image.extend_from_slice(&entry);
    }
    image[60..64].copy_from_slice(&65536u32.to_be_bytes());
    image[64..72].copy_from_slice(&(table as u64).to_be_bytes());
    std::fs::write(&path, &image).unwrap();
    let disk = open_rw(&path);
    let e = disk.create_snapshot("one-too-many").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("File too large"), "{e}");
    drop(disk);
    assert_eq!(std::fs::read(&path).unwrap(), image);
}
