//! Helpers shared by the integration tests: opening and creating VHDX images, an opener for parents, the
//! standard qemu-io write pattern; and, for every test, the workspace's shared test support.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use blk_test_support::*;

use std::path::Path;
use std::sync::Arc;

use blk_core::{DiskFile, HostOpenOptions, ImageOpener, MappedDisk, NamedImage, Result};
use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};

/// Opens `vhdx` parents recursively through `Vhdx::open`, read-only.
#[derive(Debug)]
pub struct VhdxOpener;

impl ImageOpener for VhdxOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        assert_eq!(image.format.as_deref(), Some("vhdx"));
        assert!(image.read_only);
        let mut options = VhdxOpenOptions::new(
            HostOpenOptions {
                read_only: true,
                ..HostOpenOptions::default()
            },
            Arc::new(VhdxOpener),
        );
        options.depth = image.depth;
        Ok(Box::new(MappedDisk::new(Vhdx::open(
            &image.path,
            &options,
        )?)))
    }
}

/// Opens the image at `path` as a disk for guest I/O (it dereferences to the [`Vhdx`]).
pub fn open(path: &Path, read_only: bool) -> Result<MappedDisk<Vhdx>> {
    let options = VhdxOpenOptions::new(
        HostOpenOptions {
            read_only,
            ..HostOpenOptions::default()
        },
        Arc::new(VhdxOpener),
    );
    Vhdx::open(path, &options).map(MappedDisk::new)
}

pub fn create(path: &Path, size: u64, kv: &[(&str, &str)]) {
    let kv: Vec<(String, String)> = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let options = VhdxCreateOptions::from_key_values(Some(size), &kv).unwrap();
    Vhdx::create(path, &options, &VhdxOpener).unwrap();
}

/// The standard write pattern, as qemu-io commands.
pub const PATTERN: &[&str] = &[
    "write -P 0xa7 0 128k",
    "write -P 0x5c 1M 64k",
    "write -P 0x11 3000000 70000",
    "write -P 0x22 9M 4k",
    "write -z 1M 4k",
    "write -P 0x33 20M 2M",
    "discard 20M 1M",
    "write -P 0x44 63M 1M",
];
