//! The `vhd` harness: any bytes as a VHD image file, next to a valid fixed parent (`parent.vhd`, 64 KiB + 512,
//! unique id [`PARENT_ID`]) that differencing inputs may name.
//!
//! The input is written to `image.vhd` in a temporary directory and opened read-only (read whole up to 32 MiB,
//! map walked, info, check) and read-write (a few writes derived from the input, write-zeroes, read-back,
//! flush, check with repair). Parents are opened through an opener that only opens `vpc` images with
//! `Vhd::open`, read-only, at most 4 deep. Errors are fine; panics, reads that disagree with what was just
//! written, and maps that do not tile the disk are not. Replayed over `corpus/vhd` by
//! `crates/blk-vhd/tests/fuzz_corpus.rs`.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    DiskFile, Error, ErrorKind, HostOpenOptions, ImageAdmin, ImageOpener, LockMode, MappedDisk,
    NamedImage, RepairMode, Result,
};
use blk_vhd::footer::Footer;
use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};

/// The unique id given to `parent.vhd`.
pub const PARENT_ID: [u8; 16] = [0x42; 16];

/// Opens parents as VHDs, read-only, refusing chains deeper than 4.
#[derive(Debug)]
struct ChainOpener {
    depth: u32,
}

impl ImageOpener for ChainOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        let depth = self.depth + image.depth;
        if depth > 4 || image.format.as_deref() != Some("vpc") {
            return Err(Error::new(ErrorKind::PermissionDenied, "refused"));
        }
        Ok(Box::new(MappedDisk::new(Vhd::open(
            &image.path,
            &VhdOpenOptions::new(host(true), Arc::new(ChainOpener { depth })),
        )?)))
    }
}

fn host(read_only: bool) -> HostOpenOptions {
    HostOpenOptions {
        read_only,
        direct: false,
        lock: LockMode::None,
    }
}

fn walk_map(disk: &dyn DiskFile, size: u64) {
    let mut offset = 0;
    let mut steps = 0;
    while offset < size && steps < 4096 {
        let Ok(e) = disk.map(offset, size - offset) else {
            return;
        };
        assert_eq!(e.offset, offset, "map run starts elsewhere");
        assert!(
            e.length > 0 && e.length <= size - offset,
            "map run of bad length"
        );
        offset += e.length;
        steps += 1;
    }
}

fn exercise(path: &Path, read_only: bool, data: &[u8]) {
    let options = VhdOpenOptions::new(host(read_only), Arc::new(ChainOpener { depth: 0 }));
    let Ok(disk) = Vhd::open(path, &options).map(MappedDisk::new) else {
        return;
    };
    let size = disk.logical_size();
    let _ = disk.image_info();
    walk_map(&disk, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size && offset < (32 << 20) {
        let n = (size - offset).min(buf.len() as u64) as usize;
        let _ = disk.read_exact_at(offset, &mut buf[..n]);
        offset += n as u64;
    }
    if !read_only && size > 0 {
        let seed = data
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        for i in 0..4u64 {
            let at = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9)) % size;
            let len = ((seed >> (i * 8)) % 9000 + 1).min(size - at) as usize;
            let payload = vec![(i as u8).wrapping_add(0x41); len];
            if disk.write_all_at(at, &payload).is_ok() {
                let mut back = vec![0u8; len];
                if disk.read_exact_at(at, &mut back).is_ok() {
                    assert!(back == payload, "read-back differs after a write at {at}");
                }
            }
        }
        let _ = disk.write_zeroes(size / 3, (size - size / 3).min(3 << 20), true);
        let _ = disk.discard(0, size.min(4096));
        let _ = disk.flush();
        let _ = disk.check(RepairMode::All);
    }
    let _ = disk.check(RepairMode::None);
}

/// Writes `parent.vhd` and `data` as `image.vhd` into a new temporary directory.
fn prepare(data: &[u8]) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir().ok()?;
    let parent = dir.path().join("parent.vhd");
    let create = VhdCreateOptions::from_key_values(
        Some(64 << 10),
        &[("subformat".to_string(), "fixed".to_string())],
    )
    .ok()?;
    Vhd::create(&parent, &create, &ChainOpener { depth: 0 }).ok()?;
    // A fixed unique id, so corpus inputs can name this parent.
    let mut bytes = std::fs::read(&parent).ok()?;
    let end = bytes.len().checked_sub(512)?;
    let tail = <[u8; 512]>::try_from(bytes.get(end..)?).ok()?;
    let mut footer = Footer::parse(&tail);
    footer.unique_id = PARENT_ID;
    footer.update_checksum();
    bytes.get_mut(end..)?.copy_from_slice(&footer.to_bytes());
    std::fs::write(&parent, &bytes).ok()?;
    let path = dir.path().join("image.vhd");
    std::fs::write(&path, data).ok()?;
    Some((dir, path))
}

/// Opens `data` read-only the way the harness does, for tests that check which inputs open: the error kind
/// or the disk size. `None` when the temporary files could not be made.
pub fn open_result(data: &[u8]) -> Option<std::result::Result<u64, ErrorKind>> {
    let (_dir, path) = prepare(data)?;
    let options = VhdOpenOptions::new(host(true), Arc::new(ChainOpener { depth: 0 }));
    Some(
        Vhd::open(&path, &options)
            .map(|d| MappedDisk::new(d).logical_size())
            .map_err(|e| e.kind()),
    )
}

/// Treats `data` as a VHD image (see the module docs).
pub fn vhd(data: &[u8]) {
    let Some((_dir, path)) = prepare(data) else {
        return;
    };
    exercise(&path, true, data);
    exercise(&path, false, data);
}
