//! `blk snapshot -c` on QCOW2 images whose active L1 or L2 tables are corrupt (the cases the mutation
//! campaign found): where `qemu-img snapshot -c` refuses or aborts, blk refuses and leaves the file as it was;
//! where qemu-img succeeds, blk leaves no more errors than qemu-img does.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stderr, Scratch};

/// An image (`options`, 2 GiB: four L1 entries) with 64 KiB written at 0, and its L1 table offset.
fn written(s: &Scratch, name: &str, options: &str) -> u64 {
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, name, "2G"]));
    ok(&s.qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 64k", name]));
    let image = s.read(name);
    u64::from_be_bytes(image[40..48].try_into().unwrap())
}

fn get(image: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(image[at..at + 8].try_into().unwrap())
}

fn set(image: &mut [u8], at: u64, value: u64) {
    let at = at as usize;
    image[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// `qemu-img check`'s corruptions + check errors for `name` (exit codes 0, 2 and 3 carry counts).
fn errors(s: &Scratch, name: &str) -> u64 {
    let out = s.qemu_img(&["check", "--output=json", name]);
    assert!(
        matches!(code(&out), 0 | 2 | 3),
        "qemu-img check {name}: {}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["corruptions"].as_u64().unwrap_or(0) + v["check-errors"].as_u64().unwrap_or(0)
}

/// Writes `image` as `q.qcow2` and `b.qcow2`, runs `snapshot -c` with qemu-img on the first and blk on the
/// second; returns both outputs.
fn twins(s: &Scratch, image: &[u8]) -> (std::process::Output, std::process::Output) {
    s.write("q.qcow2", image);
    s.write("b.qcow2", image);
    let theirs = s.qemu_img(&["snapshot", "-c", "snap", "q.qcow2"]);
    let ours = s.blk(&["snapshot", "-c", "snap", "b.qcow2"]);
    (theirs, ours)
}

/// blk refused with one line naming the problem, and `b.qcow2` is byte for byte what it was.
fn assert_refused_unchanged(s: &Scratch, ours: &std::process::Output, image: &[u8], says: &str) {
    assert_eq!(code(ours), 1, "blk: {}", stderr(ours));
    assert!(!stderr(ours).contains("panicked"), "{}", stderr(ours));
    assert!(stderr(ours).contains(says), "blk says: {}", stderr(ours));
    assert!(
        s.read("b.qcow2") == image,
        "blk changed the file it refused"
    );
}

/// An L1 entry holding only the COPIED flag: QEMU's walk passes offset 0 to its cache and aborts
/// (`qcow2_cache_do_get: Assertion 'offset != 0' failed`); blk refuses before writing anything.
#[test]
fn l1_entry_without_offset_is_refused_where_qemu_aborts() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=1.1");
    let mut image = s.read("base.qcow2");
    set(&mut image, l1 + 8, 1 << 63);
    let (theirs, ours) = twins(&s, &image);
    assert!(!theirs.status.success(), "qemu-img succeeded");
    assert_refused_unchanged(&s, &ours, &image, "names no L2 table");
}

/// Whether the header of `name` has the corrupt bit (incompatible feature bit 1) set.
fn marked_corrupt(s: &Scratch, name: &str) -> bool {
    let image = s.read(name);
    u64::from_be_bytes(image[72..80].try_into().unwrap()) & 2 != 0
}

/// An L2 entry whose data cluster offset is not cluster-aligned: QEMU refuses ("Cluster allocation offset
/// ... unaligned") and marks the image corrupt; blk does both, with nothing else written (QEMU's refusal
/// also leaves the clusters of the snapshot's L1 copy behind).
#[test]
fn unaligned_data_cluster_is_refused_and_marked_as_qemu() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=1.1");
    let mut image = s.read("base.qcow2");
    let l2 = get(&image, l1) & 0x00ff_ffff_ffff_fe00;
    let entry = get(&image, l2);
    set(&mut image, l2, entry + 512);
    let (theirs, ours) = twins(&s, &image);
    assert_eq!(code(&theirs), 1, "qemu-img: {}", stderr(&theirs));
    assert!(
        stderr(&theirs).contains("Cluster allocation offset"),
        "qemu-img: {}",
        stderr(&theirs)
    );
    assert!(marked_corrupt(&s, "q.qcow2") && marked_corrupt(&s, "b.qcow2"));
    // Apart from the corrupt bit, the file is as it was.
    let mut expected = image.clone();
    expected[72..80].copy_from_slice(&s.read("b.qcow2")[72..80]);
    assert_refused_unchanged(&s, &ours, &expected, "Cluster allocation offset");
    // And the next writable open is refused, as QEMU's.
    assert_eq!(code(&s.blk(&["snapshot", "-c", "again", "b.qcow2"])), 1);
}

/// A v2 image whose L1 entry points to an unaligned L2 table: QEMU refuses ("L2 table offset ...
/// unaligned"; a v2 header has no corrupt bit); blk refuses and writes nothing.
#[test]
fn unaligned_l2_table_is_refused_as_qemu() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=0.10");
    let mut image = s.read("base.qcow2");
    let entry = get(&image, l1);
    set(&mut image, l1, entry + 512);
    let (theirs, ours) = twins(&s, &image);
    assert_eq!(code(&theirs), 1, "qemu-img: {}", stderr(&theirs));
    assert!(
        stderr(&theirs).contains("L2 table offset"),
        "qemu-img: {}",
        stderr(&theirs)
    );
    assert_eq!(code(&ours), 1, "blk: {}", stderr(&ours));
    assert!(
        s.read("b.qcow2") == image,
        "blk changed the file it refused"
    );
}

/// An L2 table past the end of the file (QEMU reads zeros there and hands the new snapshot a table it then
/// counts as corrupt twice): blk refuses.
#[test]
fn l2_table_past_the_end_is_refused() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=1.1");
    let mut image = s.read("base.qcow2");
    set(&mut image, l1 + 8, (1 << 63) | (1 << 30));
    let before = {
        s.write("c.qcow2", &image);
        errors(&s, "c.qcow2")
    };
    let (theirs, ours) = twins(&s, &image);
    assert_refused_unchanged(&s, &ours, &image, "past the end");
    if theirs.status.success() {
        assert!(errors(&s, "q.qcow2") >= before);
    }
}

/// 1-bit refcounts: nothing can take a second reference. QEMU fails ("Invalid argument") after raising
/// some refcounts (a leak); blk refuses with QEMU's words before writing anything.
#[test]
fn refcount_overflow_is_refused_before_writing() {
    let s = Scratch::new();
    written(&s, "base.qcow2", "compat=1.1,refcount_bits=1");
    let image = s.read("base.qcow2");
    let (theirs, ours) = twins(&s, &image);
    assert_eq!(code(&theirs), 1, "qemu-img: {}", stderr(&theirs));
    assert!(
        stderr(&theirs).contains("Invalid argument"),
        "qemu-img: {}",
        stderr(&theirs)
    );
    assert_refused_unchanged(&s, &ours, &image, "Invalid argument");
}

/// An L1 entry with a reserved bit set: QEMU's walk rewrites the active entry from its offset (the bit goes)
/// while the snapshot's copy keeps it, so the error count stays; blk leaves the same count.
#[test]
fn l1_reserved_bits_leave_no_more_errors_than_qemu() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=1.1");
    let mut image = s.read("base.qcow2");
    let entry = get(&image, l1);
    set(&mut image, l1, entry | (1 << 57));
    s.write("c.qcow2", &image);
    let before = errors(&s, "c.qcow2");
    assert!(before > 0);
    let (theirs, ours) = twins(&s, &image);
    ok(&theirs);
    ok(&ours);
    let qemu_after = errors(&s, "q.qcow2");
    let blk_after = errors(&s, "b.qcow2");
    assert!(
        blk_after <= qemu_after,
        "blk leaves {blk_after} errors, qemu-img {qemu_after} (before: {before})"
    );
    assert_eq!(
        get(&s.read("b.qcow2"), l1),
        get(&s.read("q.qcow2"), l1),
        "active L1 entry"
    );
    // Both read the same.
    ok(&s.qemu_img(&[
        "compare", "-f", "qcow2", "-F", "qcow2", "q.qcow2", "b.qcow2",
    ]));
}

/// A refcount table entry naming an unaligned refcount block whose cluster-sized span reaches into the
/// active L1 table (mutant 216 of seed 93328811231606): the L1 table's rewrite at the end of the walk would
/// be refused by the overlap check, after the refcounts were raised. blk refuses before writing anything
/// (QEMU writes the L1 table without the check and succeeds), so the image is not made worse.
#[test]
fn l1_rewrite_the_overlap_check_would_refuse_is_refused_first() {
    let s = Scratch::new();
    let l1 = written(&s, "base.qcow2", "compat=1.1");
    let mut image = s.read("base.qcow2");
    let reftable = get(&image, 48);
    set(&mut image, reftable + 8 * 100, l1 - 0x200);
    s.write("c.qcow2", &image);
    let before = errors(&s, "c.qcow2");
    let (_theirs, ours) = twins(&s, &image);
    assert_refused_unchanged(&s, &ours, &image, "overlaps the refcount block");
    assert_eq!(errors(&s, "b.qcow2"), before);
}
