//! Persistent dirty bitmaps through the library ([`blk_core::DirtyBitmaps`] on an open image) against a plain
//! model: random guest writes, write-zeroes, discards, flushes, reopens and bitmap actions (add, remove,
//! clear, enable, disable, merge, rotate); after each step every bitmap's dirty extents equal the model's,
//! and at the end `qemu-img check` is clean and `qemu-img info` lists the model's bitmaps.

mod support;

use std::collections::BTreeMap;

use blk_core::{BitmapAction, DirtyBitmaps, DiskFile, ErrorKind, ImageAdmin};
use proptest::prelude::*;
use support::*;

const SIZE: u64 = 8 << 20;
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Flush,
    Reopen,
    Add {
        name: usize,
        granularity_bits: u8,
        enabled: bool,
    },
    Remove {
        name: usize,
    },
    Clear {
        name: usize,
    },
    Enable {
        name: usize,
        on: bool,
    },
    Merge {
        source: usize,
        target: usize,
    },
    Rotate {
        old: usize,
        new: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE, 1..300_000u64);
    let name = 0..NAMES.len();
    prop_oneof![
        6 => range.clone().prop_map(|(off, len)| Op::Write { off, len }),
        2 => range.clone().prop_map(|(off, len)| Op::Zero { off, len }),
        2 => range.prop_map(|(off, len)| Op::Discard { off, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        3 => (name.clone(), 12u8..20, any::<bool>())
            .prop_map(|(name, granularity_bits, enabled)| Op::Add { name, granularity_bits, enabled }),
        1 => name.clone().prop_map(|name| Op::Remove { name }),
        1 => name.clone().prop_map(|name| Op::Clear { name }),
        2 => (name.clone(), any::<bool>()).prop_map(|(name, on)| Op::Enable { name, on }),
        1 => (name.clone(), name.clone()).prop_map(|(source, target)| Op::Merge { source, target }),
        1 => (name.clone(), name).prop_map(|(old, new)| Op::Rotate { old, new }),
    ]
}

/// A bitmap of the model: granularity, enabled, one bool per granule.
#[derive(Debug, Clone)]
struct ModelBitmap {
    granularity: u64,
    enabled: bool,
    bits: Vec<bool>,
}

impl ModelBitmap {
    fn set(&mut self, off: u64, len: u64) {
        let end = (off + len).min(SIZE);
        if off < end {
            for i in off / self.granularity..=(end - 1) / self.granularity {
                self.bits[i as usize] = true;
            }
        }
    }

    fn extents(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, _) in self.bits.iter().enumerate().filter(|(_, &b)| b) {
            let start = i as u64 * self.granularity;
            let len = self.granularity.min(SIZE - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        out
    }
}

fn new_bitmap(granularity: u64, enabled: bool) -> ModelBitmap {
    ModelBitmap {
        granularity,
        enabled,
        bits: vec![false; SIZE.div_ceil(granularity) as usize],
    }
}

fn run(ops: &[Op]) {
    let dir = tempdir();
    let img = dir.path().join("b.qcow2");
    qemu_create(&img, "", "8M");
    let mut disk = open_disk(&img, &rw()).unwrap();
    let mut model: BTreeMap<&str, ModelBitmap> = BTreeMap::new();
    // Directory order, as the image keeps it.
    let mut order: Vec<&str> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { off, len } => {
                let len = len.min(SIZE - off);
                disk.write_all_at(off, &vec![step as u8 | 1; len as usize])
                    .unwrap();
                model
                    .values_mut()
                    .filter(|b| b.enabled)
                    .for_each(|b| b.set(off, len));
            }
            Op::Zero { off, len } => {
                let len = len.min(SIZE - off);
                DiskFile::write_zeroes(&disk, off, len, step % 2 == 0).unwrap();
                model
                    .values_mut()
                    .filter(|b| b.enabled)
                    .for_each(|b| b.set(off, len));
            }
            Op::Discard { off, len } => {
                let len = len.min(SIZE - off);
                DiskFile::discard(&disk, off, len).unwrap();
                model
                    .values_mut()
                    .filter(|b| b.enabled)
                    .for_each(|b| b.set(off, len));
            }
            Op::Flush => disk.flush().unwrap(),
            Op::Reopen => {
                drop(disk);
                disk = open_disk(&img, &rw()).unwrap();
            }
            Op::Add {
                name,
                granularity_bits,
                enabled,
            } => {
                let name = NAMES[name];
                let granularity = 1u64 << granularity_bits;
                let r = disk.apply(&[BitmapAction::Add {
                    name: name.into(),
                    granularity: Some(granularity),
                    enabled,
                }]);
                if model.contains_key(name) {
                    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
                } else {
                    r.unwrap();
                    model.insert(name, new_bitmap(granularity, enabled));
                    order.push(name);
                }
            }
            Op::Remove { name } => {
                let name = NAMES[name];
                let r = disk.apply(&[BitmapAction::Remove { name: name.into() }]);
                assert_eq!(r.is_ok(), model.remove(name).is_some());
                order.retain(|n| *n != name);
            }
            Op::Clear { name } => {
                let name = NAMES[name];
                let r = disk.apply(&[BitmapAction::Clear { name: name.into() }]);
                match model.get_mut(name) {
                    Some(b) => {
                        r.unwrap();
                        b.bits.fill(false);
                    }
                    None => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound),
                }
            }
            Op::Enable { name, on } => {
                let name = NAMES[name];
                let n = name.to_string();
                let action = if on {
                    BitmapAction::Enable { name: n }
                } else {
                    BitmapAction::Disable { name: n }
                };
                let r = disk.apply(&[action]);
                match model.get_mut(name) {
                    Some(b) => {
                        r.unwrap();
                        b.enabled = on;
                    }
                    None => assert!(r.is_err()),
                }
            }
            Op::Merge { source, target } => {
                let (s, t) = (NAMES[source], NAMES[target]);
                let r = disk.apply(&[BitmapAction::Merge {
                    source: s.into(),
                    target: t.into(),
                }]);
                match (model.get(s).cloned(), model.get_mut(t)) {
                    (Some(src), Some(dst)) => {
                        r.unwrap();
                        for (off, len) in src.extents() {
                            dst.set(off, len);
                        }
                    }
                    _ => assert!(r.is_err()),
                }
            }
            Op::Rotate { old, new } => {
                let (o, n) = (NAMES[old], NAMES[new]);
                let r = disk.rotate(o, n);
                match model.get(o).map(|b| b.granularity) {
                    Some(g) if !model.contains_key(n) => {
                        r.unwrap();
                        model.insert(n, new_bitmap(g, true));
                        order.push(n);
                        if let Some(b) = model.get_mut(o) {
                            b.enabled = false;
                        }
                    }
                    // Refused as a whole: nothing changed.
                    _ => assert!(r.is_err()),
                }
            }
        }
        let listed = disk.bitmaps().unwrap();
        assert_eq!(
            listed.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            order,
            "step {step}: {op:?}"
        );
        for b in &listed {
            let m = &model[b.name.as_str()];
            assert_eq!((b.granularity, b.enabled), (m.granularity, m.enabled));
            assert_eq!(
                disk.dirty_extents(&b.name).unwrap(),
                m.extents(),
                "step {step}: {op:?}: {}",
                b.name
            );
        }
    }
    assert!(disk.image_info().is_ok());
    drop(disk);
    assert_qemu_check_clean(&img);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", path_str(&img)])).unwrap();
    let listed: Vec<(String, bool)> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|b| {
                    let flags = b["flags"].as_array().cloned().unwrap_or_default();
                    assert!(!flags.iter().any(|f| f == "in-use"), "{b}");
                    (
                        b["name"].as_str().unwrap().to_string(),
                        flags.iter().any(|f| f == "auto"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<(String, bool)> = order
        .iter()
        .map(|n| (n.to_string(), model[n].enabled))
        .collect();
    assert_eq!(listed, expected);
    // A read-only open reads the same extents from the image.
    let disk = open_disk(&img, &ro()).unwrap();
    for n in &order {
        assert_eq!(
            disk.dirty_extents(n).unwrap(),
            model[n].extents(),
            "read-only {n}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn bitmaps_follow_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let _g = serial();
        run(&ops);
    }
}

#[test]
fn rotation_is_refused_as_a_whole() {
    let dir = tempdir();
    let img = dir.path().join("r.qcow2");
    qemu_create(&img, "", "1M");
    let disk = open_disk(&img, &rw()).unwrap();
    disk.apply(&[BitmapAction::Add {
        name: "a".into(),
        granularity: None,
        enabled: true,
    }])
    .unwrap();
    // The second action fails: the first is undone.
    let err = disk
        .apply(&[
            BitmapAction::Add {
                name: "b".into(),
                granularity: None,
                enabled: true,
            },
            BitmapAction::Disable { name: "zz".into() },
        ])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(disk.bitmaps().unwrap().len(), 1);
    // Default granularity: the cluster size.
    assert_eq!(disk.bitmaps().unwrap()[0].granularity, 65536);
}

#[test]
fn v2_images_have_no_bitmaps() {
    let dir = tempdir();
    let img = dir.path().join("v2.qcow2");
    qemu_create(&img, "compat=0.10", "1M");
    let disk = open_disk(&img, &rw()).unwrap();
    assert!(disk.dirty_bitmaps().is_none());
    let err = disk
        .apply(&[BitmapAction::Add {
            name: "a".into(),
            granularity: None,
            enabled: true,
        }])
        .unwrap_err();
    assert!(err.message().contains("v2"), "{err}");
}

#[test]
fn unknown_autoclear_bits_are_cleared_and_bitmaps_kept() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("u.qcow2");
    qemu_create(&img, "", "4M");
    qemu_img(&["bitmap", "--add", path_str(&img), "b0"]);
    write_be(&img, 88, 8, 1 | 1 << 7);
    {
        let disk = open_disk(&img, &rw()).unwrap();
        disk.write_all_at(70_000, b"x").unwrap();
        assert_eq!(disk.dirty_extents("b0").unwrap(), vec![(65536, 65536)]);
    }
    assert_eq!(read_be(&img, 88, 8), 1);
    assert_qemu_check_clean(&img);
    let disk = open_disk(&img, &ro()).unwrap();
    assert_eq!(disk.dirty_extents("b0").unwrap(), vec![(65536, 65536)]);
}

#[test]
fn a_broken_directory_refuses_a_writable_open() {
    let _g = serial();
    let dir = tempdir();
    let img = dir.path().join("d.qcow2");
    qemu_create(&img, "", "4M");
    qemu_img(&["bitmap", "--add", path_str(&img), "b0"]);
    // The extension's bitmap count: 2 where the directory holds 1.
    let bytes = std::fs::read(&img).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == 0x2385_2875u32.to_be_bytes())
        .unwrap()
        + 8;
    write_be(&img, at as u64, 4, 2);
    let before = std::fs::read(&img).unwrap();
    let err = open_disk(&img, &rw()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptImage, "{err}");
    // Nothing written, the bitmaps not invalidated; a read-only open still works.
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert!(open_disk(&img, &ro()).is_ok());
}
