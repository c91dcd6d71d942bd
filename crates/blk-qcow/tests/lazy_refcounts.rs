//! Lazy refcounts (compatible bit 0) as QEMU keeps them: the dirty bit set on disk before the first refcount
//! change of an open (not at open), refcount blocks left in their cache by a flush (a copy of the file taken
//! after a flush has every flushed write but refcounts `qemu-img check` calls wrong, which blk's repairing open
//! rebuilds), everything written and the dirty bit cleared on close; an image without the feature keeps its
//! refcounts exact at every flush.

mod support;

use blk_core::DiskFile;
use support::*;

/// Incompatible feature bit 0 (dirty) of the image file, as on disk.
fn dirty_on_disk(img: &std::path::Path) -> bool {
    read_be(img, 72, 8) & 1 != 0
}

/// `qemu-img check` of `img`: (exit code, corruptions, leaks).
fn qemu_check(img: &std::path::Path) -> (i32, u64, u64) {
    let (code, out) = qemu_img_status(&["check", "--output=json", path_str(img)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    (code, n("corruptions"), n("leaks"))
}

/// 4 KiB writes of byte `i + 1` into every other 64 KiB cluster (each allocates a cluster), `count` of them,
/// flushed after each; returns the expected contents of a `size`-byte disk.
fn allocating_writes(disk: &Disk, size: usize, count: usize) -> Vec<u8> {
    let mut model = vec![0u8; size];
    for i in 0..count {
        let at = i * 2 * 65536 + (i % 16) * 4096;
        let data = vec![(i + 1) as u8; 4096];
        disk.write_all_at(at as u64, &data).unwrap();
        model[at..at + 4096].copy_from_slice(&data);
        disk.flush().unwrap();
    }
    model
}

#[test]
fn dirty_bit_set_before_the_first_refcount_change_and_cleared_on_close() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("l.qcow2");
    qemu_create(&img, "compat=1.1,lazy_refcounts=on", "16M");
    qemu_io("qcow2", &img, &["write -P 7 0 64k"]);
    {
        let disk = open_disk(&img, &rw()).unwrap();
        // Opening and reading change no refcount: the image stays clean on disk.
        assert!(!dirty_on_disk(&img));
        let mut buf = vec![0u8; 65536];
        disk.read_exact_at(0, &mut buf).unwrap();
        // Overwriting an allocated cluster changes no refcount either.
        disk.write_all_at(0, &[9u8; 4096]).unwrap();
        disk.flush().unwrap();
        assert!(!dirty_on_disk(&img));
        // An allocating write does: the bit is on disk before its refcounts.
        disk.write_all_at(1 << 20, &[3u8; 4096]).unwrap();
        assert!(dirty_on_disk(&img));
        // The engine's own open hides it from `info`, as QEMU's does for the image it has open.
        assert!(!blk_core::ImageAdmin::image_info(&*disk).unwrap().dirty);
    }
    assert!(!dirty_on_disk(&img));
    assert_qemu_check_clean(&img);
    let out = qemu_io(
        "qcow2",
        &img,
        &[
            "read -P 9 0 4k",
            "read -P 7 4k 60k",
            "read -P 3 1M 4k",
            "read -P 0 1028k 60k",
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

/// QEMU's `lazy-refcounts` runtime option overrides the compatible bit for one open: `on` makes an image
/// without the feature defer its refcounts (dirty bit while open, cleared on close, image unchanged otherwise),
/// `off` makes a lazy image write them eagerly; `on` is refused for a version 2 image, with QEMU's messages.
#[test]
fn the_lazy_refcounts_runtime_option_overrides_the_compatible_bit() {
    let _g = serial();
    let dir = tempdir();
    let with = |on: &str| {
        let mut options = rw();
        options
            .apply_runtime_options(&key_values(&[("lazy-refcounts", on)]), Some(65536))
            .map(|()| options)
    };
    // An image without the feature, opened with lazy-refcounts=on.
    let img = dir.path().join("eager.qcow2");
    qemu_create(&img, "compat=1.1", "16M");
    {
        let disk = open_disk(&img, &with("on").unwrap()).unwrap();
        disk.write_all_at(1 << 20, &[3u8; 4096]).unwrap();
        disk.flush().unwrap();
        assert!(dirty_on_disk(&img), "refcounts deferred under the option");
    }
    assert!(!dirty_on_disk(&img));
    assert_qemu_check_clean(&img);
    let info = qemu_img(&["info", "--output=json", path_str(&img)]);
    assert!(info.contains("\"lazy-refcounts\": false"), "{info}");
    // A lazy image opened with lazy-refcounts=off keeps its refcounts exact at every flush.
    let lazy = dir.path().join("lazy.qcow2");
    qemu_create(&lazy, "compat=1.1,lazy_refcounts=on", "16M");
    {
        let disk = open_disk(&lazy, &with("off").unwrap()).unwrap();
        disk.write_all_at(1 << 20, &[3u8; 4096]).unwrap();
        disk.flush().unwrap();
        assert!(!dirty_on_disk(&lazy));
        // The file as a crash now leaves it: refcounts exact.
        let copy = dir.path().join("copy.qcow2");
        std::fs::copy(&lazy, &copy).unwrap();
        assert_eq!(qemu_check(&copy), (0, 0, 0));
    }
    // QEMU's refusals, word for word.
    let v2 = dir.path().join("v2.qcow2");
    qemu_create(&v2, "compat=0.10", "1M");
    let opts = format!(
        "driver=qcow2,file.filename={},lazy-refcounts=on",
        path_str(&v2)
    );
    let (_, qemu) =
        blk_test_support::qemu::run_status("qemu-io", &["--image-opts", &opts, "-c", "quit"]);
    let ours = open_disk(&v2, &with("on").unwrap())
        .unwrap_err()
        .to_string();
    let message = "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level";
    assert!(
        qemu.contains(message) && ours.contains(message),
        "{qemu} / {ours}"
    );
    let opts = format!(
        "driver=qcow2,file.filename={},lazy-refcounts=maybe",
        path_str(&v2)
    );
    let (_, qemu) =
        blk_test_support::qemu::run_status("qemu-io", &["--image-opts", &opts, "-c", "quit"]);
    let ours = with("maybe").unwrap_err().to_string();
    let message = "Parameter 'lazy-refcounts' expects 'on' or 'off'";
    assert!(
        qemu.contains(message) && ours.contains(message),
        "{qemu} / {ours}"
    );
}

#[test]
fn a_flush_leaves_refcounts_lazy_and_a_repairing_open_rebuilds_them() {
    let _g = serial();
    let dir = tempdir();
    let size = 16usize << 20;
    let img = dir.path().join("l.qcow2");
    qemu_create(&img, "compat=1.1,lazy_refcounts=on", "16M");
    let copy = dir.path().join("crashed.qcow2");
    let model;
    {
        let disk = open_disk(&img, &rw()).unwrap();
        model = allocating_writes(&disk, size, 40);
        // The file as a crash after the last flush leaves it.
        std::fs::copy(&img, &copy).unwrap();
    }
    // Every flushed write is there; the refcounts are not (the data clusters have refcount 0 on disk).
    assert!(dirty_on_disk(&copy));
    let (code, corruptions, _) = qemu_check(&copy);
    assert_eq!(code, 2, "the copy's refcounts were written eagerly");
    assert!(corruptions >= 40, "{corruptions} corruptions");
    assert_same(&qemu_contents(&copy, "qcow2"), &model, "flushed writes");
    // blk's writable open repairs it, and a clean close leaves it clean.
    {
        let disk = open_disk(&copy, &rw()).unwrap();
        assert!(blk_core::ImageAdmin::repaired_on_open(&*disk).is_some());
        assert_same(&read_all(&disk), &model, "after the repair");
    }
    assert!(!dirty_on_disk(&copy));
    assert_qemu_check_clean(&copy);
    // The image closed cleanly: everything written, the bit cleared.
    assert!(!dirty_on_disk(&img));
    assert_qemu_check_clean(&img);
    assert_same(&qemu_contents(&img, "qcow2"), &model, "closed image");
}

#[test]
fn without_lazy_refcounts_a_flush_writes_them() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("e.qcow2");
    qemu_create(&img, "compat=1.1,lazy_refcounts=off", "16M");
    let copy = dir.path().join("copy.qcow2");
    {
        let disk = open_disk(&img, &rw()).unwrap();
        allocating_writes(&disk, 16 << 20, 10);
        std::fs::copy(&img, &copy).unwrap();
    }
    assert!(!dirty_on_disk(&copy));
    assert_qemu_check_clean(&copy);
}

/// The same writes, zeroes, discards and flushes through blk on a lazy image and through qemu-io on its twin:
/// both check clean, and they compare equal.
#[test]
fn mixed_writes_equal_qemu_io() {
    let _g = serial();
    let dir = tempdir();
    let ours = dir.path().join("ours.qcow2");
    let theirs = dir.path().join("theirs.qcow2");
    let cmds = [
        "write -P 1 0 4k",
        "flush",
        "write -P 2 1M 128k",
        "write -z 1040k 8k",
        "flush",
        "discard 1M 64k",
        "write -P 3 3M 512",
        "write -P 4 12M 64k",
        "flush",
        "write -z -u 0 64k",
        "write -P 5 15M 4k",
    ];
    for img in [&ours, &theirs] {
        qemu_create(img, "compat=1.1,lazy_refcounts=on,cluster_size=64k", "16M");
    }
    qemu_io("qcow2", &theirs, &cmds);
    {
        let disk = open_disk(&ours, &rw()).unwrap();
        for cmd in cmds {
            if cmd == "flush" {
                disk.flush().unwrap();
            } else {
                run_blk(&disk, cmd);
            }
        }
    }
    for img in [&ours, &theirs] {
        assert!(!dirty_on_disk(img));
        assert_qemu_check_clean(img);
    }
    qemu_img(&["compare", "-q", path_str(&ours), path_str(&theirs)]);
}

/// One guest request of the property test.
#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, val: u8 },
    Zero { off: u64, len: u64, unmap: bool },
    Discard { off: u64, len: u64 },
    Flush,
}

fn op(size: u64) -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let range = (0..size, 1..140_000u64);
    prop_oneof![
        5 => (range.clone(), any::<u8>()).prop_map(|((off, len), val)| Op::Write { off, len, val: val | 1 }),
        1 => (range.clone(), any::<bool>()).prop_map(|((off, len), unmap)| Op::Zero { off, len, unmap }),
        1 => range.prop_map(|(off, len)| Op::Discard { off, len }),
        2 => Just(Op::Flush),
    ]
}

/// Applies `op` (clipped to the disk) to the image and the model.
fn apply(disk: &Disk, model: &mut [u8], op: &Op) {
    let clip = |off: u64, len: u64| (off, len.min(model.len() as u64 - off));
    match *op {
        Op::Write { off, len, val } => {
            let (off, len) = clip(off, len);
            disk.write_all_at(off, &vec![val; len as usize]).unwrap();
            model[off as usize..(off + len) as usize].fill(val);
        }
        Op::Zero { off, len, unmap } => {
            let (off, len) = clip(off, len);
            disk.write_zeroes(off, len, unmap).unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        }
        Op::Discard { off, len } => {
            // Without a backing file a discarded cluster reads as zeros; only whole clusters are freed.
            let (off, len) = clip(off, len);
            disk.discard(off, len).unwrap();
            let cs = 4096;
            let (first, end) = (off.div_ceil(cs) * cs, (off + len) / cs * cs);
            if first < end {
                model[first as usize..end as usize].fill(0);
            }
        }
        Op::Flush => disk.flush().unwrap(),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// Random requests on a lazy-refcounts image against an in-memory model; after each flush a copy of the
    /// file stands for a crash there: blk's repairing open of the copy shows the model as it was then and
    /// leaves it clean. The image closed at the end is clean and shows the final model.
    #[test]
    fn crash_copies_after_flushes_repair_to_the_model(
        ops in proptest::collection::vec(op(2 << 20), 1..40),
    ) {
        let _g = serial();
        let dir = tempdir();
        let img = dir.path().join("p.qcow2");
        let size = 2u64 << 20;
        qemu_create(&img, "compat=1.1,lazy_refcounts=on,cluster_size=4k", "2M");
        let mut model = vec![0u8; size as usize];
        let mut crashes = Vec::new();
        {
            let disk = open_disk(&img, &rw()).unwrap();
            for (i, op) in ops.iter().enumerate() {
                apply(&disk, &mut model, op);
                if matches!(op, Op::Flush) && crashes.len() < 3 {
                    let copy = dir.path().join(format!("crash{i}.qcow2"));
                    std::fs::copy(&img, &copy).unwrap();
                    crashes.push((copy, model.clone()));
                }
            }
        }
        for (copy, expected) in &crashes {
            {
                let disk = open_disk(copy, &rw()).unwrap();
                assert_same(&read_all(&disk), expected, "crash copy after its repair");
            }
            assert!(!dirty_on_disk(copy));
            assert_qemu_check_clean(copy);
        }
        assert!(!dirty_on_disk(&img));
        assert_qemu_check_clean(&img);
        assert_same(&qemu_contents(&img, "qcow2"), &model, "closed image");
    }
}
