//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use blk_core::{
    DiskFile, Error, ErrorKind, HostOpenOptions, ImageOpener, NamedImage, NamedImageRole, Result,
};
use blk_vhd::{Vhd, VhdCreateOptions, VhdOpenOptions};

/// Serializes the tests of one binary that spawn processes while holding images open (see blk-raw's tests).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blk-vhd-test")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory")
}

pub fn ro() -> HostOpenOptions {
    HostOpenOptions {
        read_only: true,
        ..HostOpenOptions::default()
    }
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
        Ok(Box::new(Vhd::open(
            &image.path,
            &VhdOpenOptions::new(ro(), below),
        )?))
    }
}

pub fn open_rw(path: &Path) -> Vhd {
    Vhd::open(
        path,
        &VhdOpenOptions::new(HostOpenOptions::default(), VhdOpener::new()),
    )
    .unwrap()
}

pub fn open_ro(path: &Path) -> Vhd {
    Vhd::open(path, &VhdOpenOptions::new(ro(), VhdOpener::new())).unwrap()
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

pub fn have_qemu() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

pub fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).output().expect("spawning");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn read_all(disk: &dyn DiskFile) -> Vec<u8> {
    let mut data = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut data).unwrap();
    data
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Deterministic bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
