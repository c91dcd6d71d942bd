//! [`blk_vhdx::FORMAT`]: probing (the identifier, truncated files), opening and creating through the descriptor,
//! and what it declares.

mod common;

use std::sync::Arc;

use blk_core::{BackingFiles, CreateRequest, ErrorKind, HostOpenOptions, OpenOptions, PROBE_MAGIC};
use blk_vhdx::FORMAT;
use common::*;

fn probe(path: &std::path::Path) -> blk_core::Result<u32> {
    probe_file(FORMAT, path)
}

#[test]
fn probe_recognises_the_identifier_and_refuses_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.vhdx");
    create(&image, 8 << 20, &[]);
    assert_eq!(probe(&image).unwrap(), PROBE_MAGIC);
    let other = dir.path().join("raw");
    std::fs::write(&other, [0u8; 4096]).unwrap();
    assert_eq!(probe(&other).unwrap(), 0);
    let short = dir.path().join("short.vhdx");
    std::fs::write(&short, &std::fs::read(&image).unwrap()[..1000]).unwrap();
    let err = probe(&short).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    assert_eq!(err.format(), Some("vhdx"));
    assert_eq!(err.offset(), Some(1000));
    assert!(
        err.to_string().contains(
            "truncated vhdx image: the file has 1000 bytes, its headers need at least 327680"
        ),
        "{err}"
    );
}

#[test]
fn create_and_open_through_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.vhdx");
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let options = kv(&[("block_size", "1M")]);
    FORMAT
        .create(&CreateRequest {
            path: &base,
            size: Some(8 << 20),
            options: &options,
            opener: &VhdxOpener,
        })
        .unwrap();
    let options = kv(&[("backing_file", "base.vhdx"), ("backing_fmt", "vhdx")]);
    FORMAT
        .create(&CreateRequest {
            path: &child,
            size: None,
            options: &options,
            opener: &VhdxOpener,
        })
        .unwrap();
    let bad = kv(&[("subformat", "foo")]);
    let err = FORMAT
        .create(&CreateRequest {
            path: &dir.path().join("bad.vhdx"),
            size: Some(1 << 20),
            options: &bad,
            opener: &VhdxOpener,
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.path().is_some());

    let options = OpenOptions::new(HostOpenOptions::default()).opener(Arc::new(VhdxOpener));
    let image = FORMAT.open(&child, &options).unwrap();
    assert_eq!(image.disk.logical_size(), 8 << 20);
    image.disk.write_all_at(4096, b"child").unwrap();
    let mut back = [0u8; 5];
    image.disk.read_exact_at(4096, &mut back).unwrap();
    assert_eq!(&back, b"child");
    let info = image.admin.image_info().unwrap();
    assert_eq!(info.backing_filename.as_deref(), Some("base.vhdx"));
    assert_eq!(
        image
            .admin
            .check(blk_core::RepairMode::None)
            .unwrap()
            .corruptions,
        0
    );
    assert!(!image.admin.has_zero_init());

    assert_eq!(FORMAT.name(), "vhdx");
    assert_eq!(FORMAT.capabilities().backing_files, BackingFiles::OwnFormat);
    assert!(!FORMAT.capabilities().resize && !FORMAT.capabilities().compression);
    let names: Vec<&str> = FORMAT.formatting_options().iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        [
            "size",
            "log_size",
            "block_size",
            "subformat",
            "block_state_zero"
        ]
    );
    assert_eq!(FORMAT.create_options().len(), 5);
}
