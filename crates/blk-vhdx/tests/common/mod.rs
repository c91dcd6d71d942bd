//! Helpers shared by the integration tests: running qemu-img/qemu-io, opening images, an opener for parents.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blk_core::{DiskFile, HostOpenOptions, ImageOpener, NamedImage, Result};
use blk_vhdx::{Vhdx, VhdxCreateOptions, VhdxOpenOptions};

/// Runs a command, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("running qemu tool");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its exit code and stdout.
pub fn run_status(program: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("running qemu tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

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
        Ok(Box::new(Vhdx::open(&image.path, &options)?))
    }
}

pub fn open(path: &Path, read_only: bool) -> Result<Vhdx> {
    let options = VhdxOpenOptions::new(
        HostOpenOptions {
            read_only,
            ..HostOpenOptions::default()
        },
        Arc::new(VhdxOpener),
    );
    Vhdx::open(path, &options)
}

pub fn create(path: &Path, size: u64, kv: &[(&str, &str)]) {
    let kv: Vec<(String, String)> = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let options = VhdxCreateOptions::from_key_values(Some(size), &kv).unwrap();
    Vhdx::create(path, &options, &VhdxOpener).unwrap();
}

/// Reads the whole disk.
pub fn read_all(disk: &dyn DiskFile) -> Vec<u8> {
    let mut all = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut all).unwrap();
    all
}

/// `qemu-img convert -O raw` of `image`.
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let raw: PathBuf = dir.join(format!(
        "{}.raw",
        image.file_name().unwrap().to_str().unwrap()
    ));
    run(
        "qemu-img",
        &["convert", "-f", "vhdx", "-O", "raw", p(image), p(&raw)],
    );
    std::fs::read(raw).unwrap()
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

pub fn qemu_io(image: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "vhdx"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(p(image));
    run("qemu-io", &args);
}
