//! The `qcow2_bitmaps` harness: a valid qcow2 image with two persistent dirty bitmaps (one enabled with dirty
//! granules, one disabled), whose bitmaps extension, bitmap directory and bitmap tables are overwritten by
//! the input, then opened read-only (bitmaps listed, their dirty extents read, `info`), writable (written,
//! bitmaps added, merged, cleared and removed, flushed, closed) and checked. It must never panic, every error
//! must name the image's path, and the file must never grow beyond what the writes can explain.
//!
//! Input: byte 0 chooses what is replaced (bit 0: the extension's 24 bytes, from bytes 1..25; bit 1: the
//! autoclear bit toggled); the rest is written over the directory cluster and the clusters after it (the
//! bitmap tables and data).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use blk_core::{
    BitmapAction, DenyNamedImages, DirtyBitmaps, DiskFile, Error, HostOpenOptions, ImageAdmin,
    MappedDisk, RepairMode,
};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};

/// Cluster size of the template (small: the directory and tables are a few clusters).
const CLUSTER: u64 = 4096;
/// Virtual size of the template.
const SIZE: u64 = 4 << 20;
/// Input bytes used at most.
const MAX_INPUT: usize = 64 << 10;

/// The template image's bytes and where its bitmaps extension payload and directory are.
struct Template {
    bytes: Vec<u8>,
    extension: usize,
    directory: usize,
}

/// The template, built once: blk creates the image and its bitmaps and writes a few ranges.
fn template() -> Option<&'static Template> {
    static TEMPLATE: OnceLock<Option<Template>> = OnceLock::new();
    TEMPLATE.get_or_init(build_template).as_ref()
}

fn build_template() -> Option<Template> {
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("t.qcow2");
    let create = Qcow2CreateOptions::from_key_values(
        Some(SIZE),
        &[("cluster_size".to_string(), CLUSTER.to_string())],
    )
    .ok()?;
    Qcow2::create(&path, &create, &DenyNamedImages).ok()?;
    {
        let disk = MappedDisk::new(Qcow2::open(&path, &options(false, false)).ok()?);
        let add = |name: &str, enabled| BitmapAction::Add {
            name: name.to_string(),
            granularity: Some(CLUSTER * 16),
            enabled,
        };
        disk.apply(&[add("on", true), add("off", false)]).ok()?;
        disk.write_all_at(100_000, &[1; 5000]).ok()?;
        disk.write_all_at(SIZE - 4096, &[2; 4096]).ok()?;
        disk.apply(&[BitmapAction::MarkDirty {
            name: "off".to_string(),
            extents: vec![(0, 1 << 20)],
        }])
        .ok()?;
    }
    let bytes = std::fs::read(&path).ok()?;
    let magic = 0x2385_2875u32.to_be_bytes();
    let extension = bytes.windows(4).position(|w| w == magic)? + 8;
    let field = bytes.get(extension + 16..extension + 24)?;
    let directory = usize::try_from(u64::from_be_bytes(field.try_into().ok()?)).ok()?;
    Some(Template {
        bytes,
        extension,
        directory,
    })
}

/// Whether the template image could be built (the harness does nothing without it).
pub fn template_is_built() -> bool {
    template().is_some()
}

/// Treats `data` as changes to the bitmap metadata of a valid image.
pub fn qcow2_bitmaps(data: &[u8]) {
    let Some(t) = template() else {
        return;
    };
    let data = &data[..data.len().min(MAX_INPUT)];
    let mut image = t.bytes.clone();
    let flags = data.first().copied().unwrap_or(0);
    let mut rest = data.get(1..).unwrap_or_default();
    if flags & 1 != 0 && rest.len() >= 24 {
        image[t.extension..t.extension + 24].copy_from_slice(&rest[..24]);
        rest = &rest[24..];
    }
    if flags & 2 != 0 {
        // The autoclear bits' last byte: bit 0 is the bitmaps'.
        image[95] ^= 1;
    }
    let end = t.directory + rest.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[t.directory..end].copy_from_slice(rest);

    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("fuzz.qcow2");
    if std::fs::write(&path, &image).is_err() {
        return;
    }
    if let Some(disk) = open(&path, true, false) {
        read_bitmaps(&disk);
        if let Err(e) = disk.image_info() {
            expect_path(&e, "image_info");
        }
    }
    if std::fs::read(&path).map_or(true, |now| now != image) {
        panic!("a read-only open changed the file");
    }
    if let Some(disk) = open(&path, false, false) {
        read_bitmaps(&disk);
        for (offset, len) in [(0, 70_000), (SIZE / 2, 4096), (SIZE - 10, 10)] {
            if let Err(e) = disk.write_all_at(offset, &vec![0x5a; len as usize]) {
                expect_path(&e, "write");
            }
        }
        if let Err(e) = DiskFile::discard(&disk, 1 << 20, 128 << 10) {
            expect_path(&e, "discard");
        }
        let names: Vec<String> = disk
            .bitmaps()
            .map(|l| l.into_iter().map(|b| b.name).collect())
            .unwrap_or_default();
        let mut actions = vec![BitmapAction::Add {
            name: "new".to_string(),
            granularity: None,
            enabled: true,
        }];
        for name in names.iter().take(4) {
            actions.push(BitmapAction::Merge {
                source: name.clone(),
                target: "new".to_string(),
            });
        }
        if let Err(e) = disk.apply(&actions) {
            expect_path(&e, "apply");
        }
        for name in names.iter().take(4) {
            for action in [
                BitmapAction::Clear { name: name.clone() },
                BitmapAction::Disable { name: name.clone() },
                BitmapAction::Remove { name: name.clone() },
            ] {
                if let Err(e) = disk.apply(&[action]) {
                    expect_path(&e, "apply");
                }
            }
        }
        if let Err(e) = disk.flush() {
            expect_path(&e, "flush");
        }
        read_bitmaps(&disk);
        drop(disk);
        let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // What the writes and bitmaps allocate, and the part grown ahead of need that a close which could
        // not flush (a corrupt image) leaves uncut, as the `qcow2` harness allows.
        let allowed = image.len() as u64 + (80 << 20);
        assert!(
            now <= allowed,
            "the file grew from {} to {now} bytes",
            image.len()
        );
    }
    if let Some(disk) = open(&path, false, true) {
        if let Err(e) = disk.check(RepairMode::None) {
            expect_path(&e, "check");
        }
    }
}

/// Lists the bitmaps and reads the dirty extents of each.
fn read_bitmaps(disk: &MappedDisk<Qcow2>) {
    match disk.bitmaps() {
        Ok(list) => {
            for b in list.iter().take(16) {
                if let Err(e) = disk.dirty_extents(&b.name) {
                    expect_path(&e, "dirty_extents");
                }
            }
        }
        Err(e) => expect_path(&e, "bitmaps"),
    }
}

/// Open options: files named inside the image refused, a small L2 cache.
fn options(read_only: bool, check_mode: bool) -> Qcow2OpenOptions {
    let host = HostOpenOptions {
        read_only,
        ..HostOpenOptions::default()
    };
    let mut options = Qcow2OpenOptions::new(host, Arc::new(DenyNamedImages));
    options.check_mode = check_mode;
    options.l2_cache_size = 1 << 20;
    options
}

/// Opens the image; None (after checking the error) when it is refused.
fn open(path: &Path, read_only: bool, check_mode: bool) -> Option<MappedDisk<Qcow2>> {
    match Qcow2::open(path, &options(read_only, check_mode)) {
        Ok(image) => Some(MappedDisk::new(image)),
        Err(e) => {
            expect_path(&e, "open");
            None
        }
    }
}

/// Every error must say which file it is about.
fn expect_path(e: &Error, what: &str) {
    assert!(e.path().is_some(), "{what} error without a path: {e:?}");
}
