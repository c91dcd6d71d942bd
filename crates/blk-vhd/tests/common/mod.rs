//! Helpers shared by the integration tests: opening and creating VHD images, an opener for parents; and, for
//! every test, the workspace's shared test support.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use blk_test_support::*;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use blk_core::{
    DiskFile, Error, ErrorKind, HostOpenOptions, ImageOpener, MappedDisk, NamedImage,
    NamedImageRole, Result,
};
use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};

/// A temporary directory in the target's `tmp`.
pub fn tempdir() -> tempfile::TempDir {
    blk_test_support::target_tempdir!("blk-vhd-test")
}

/// Opens `vpc` parents with `Vhd::open`, recursively, read-only, refusing chains deeper than `max_depth`.
#[derive(Debug)]
pub struct VhdOpener {
    pub depth: u32,
    pub max_depth: u32,
    pub opened: Arc<AtomicU32>,
}

impl VhdOpener {
    pub fn new() -> Arc<VhdOpener> {
        Arc::new(VhdOpener {
            depth: 0,
            max_depth: 8,
            opened: Arc::new(AtomicU32::new(0)),
        })
    }
}

impl ImageOpener for VhdOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        assert_eq!(image.role, NamedImageRole::Parent);
        assert!(image.read_only);
        assert_eq!(image.format.as_deref(), Some("vpc"));
        let depth = self.depth + image.depth;
        if depth > self.max_depth {
            return Err(Error::new(ErrorKind::InvalidInput, "chain too deep"));
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        let below = Arc::new(VhdOpener {
            depth,
            max_depth: self.max_depth,
            opened: Arc::clone(&self.opened),
        });
        Ok(Box::new(MappedDisk::new(Vhd::open(
            &image.path,
            &VhdOpenOptions::new(ro(), below),
        )?)))
    }
}

pub fn open_rw(path: &Path) -> MappedDisk<Vhd> {
    MappedDisk::new(
        Vhd::open(
            path,
            &VhdOpenOptions::new(HostOpenOptions::default(), VhdOpener::new()),
        )
        .unwrap(),
    )
}

pub fn open_ro(path: &Path) -> MappedDisk<Vhd> {
    MappedDisk::new(Vhd::open(path, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap())
}

pub fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Creates an image with blk.
pub fn create(path: &Path, size: Option<u64>, pairs: &[(&str, &str)]) {
    let options = VhdCreateOptions::from_key_values(size, &kv(pairs)).unwrap();
    let opener = VhdOpener::new();
    Vhd::create(path, &options, opener.as_ref()).unwrap();
}
