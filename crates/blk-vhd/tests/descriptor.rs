//! [`blk_vhd::FORMAT`]: detection as the factory did it (same scores and errors), create and open through the
//! descriptor, and what it tells the factory and the CLI.

mod common;

use std::path::Path;

use blk_core::{
    BackingFiles, CreateRequest, ErrorKind, HostOpenOptions, OpenOptions, OptionPrint, PROBE_MAGIC,
};
use blk_vhd::FORMAT;
use common::*;

fn probe(path: &Path) -> blk_core::Result<u32> {
    probe_file(FORMAT, path)
}

#[test]
fn probes_the_cookie_at_the_start_or_the_end() {
    let dir = tempdir();
    let dynamic = dir.path().join("dynamic.vhd");
    let fixed = dir.path().join("fixed.vhd");
    create(&dynamic, Some(4 << 20), &[]);
    create(&fixed, Some(1 << 20), &[("subformat", "fixed")]);
    assert_eq!(probe(&dynamic).unwrap(), PROBE_MAGIC);
    assert_eq!(probe(&fixed).unwrap(), PROBE_MAGIC);

    let other = dir.path().join("other.img");
    std::fs::write(&other, pattern(1, 4096)).unwrap();
    assert_eq!(probe(&other).unwrap(), 0);
    std::fs::write(&other, b"con").unwrap();
    assert_eq!(probe(&other).unwrap(), 0);

    // A footer copy at 0 without room for the dynamic header and footer: truncated, as the factory said.
    let mut bytes = b"conectix".to_vec();
    bytes.resize(1000, 0);
    std::fs::write(&other, &bytes).unwrap();
    let e = probe(&other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert_eq!(e.format(), Some("vpc"));
    assert_eq!(e.offset(), Some(1000));
    assert_eq!(
        e.message(),
        "truncated vpc image: the file has 1000 bytes, its headers need at least 1536"
    );
}

#[test]
fn creates_and_opens_through_the_descriptor() {
    let dir = tempdir();
    let path = dir.path().join("d.vhd");
    let options = kv(&[("subformat", "dynamic")]);
    let opener = VhdOpener::new();
    FORMAT
        .create(&CreateRequest {
            path: &path,
            size: Some(8 << 20),
            options: &options,
            opener: opener.as_ref(),
        })
        .unwrap();
    let e = FORMAT
        .create(&CreateRequest {
            path: &path,
            size: Some(8 << 20),
            options: &kv(&[("foo", "1")]),
            opener: opener.as_ref(),
        })
        .unwrap_err();
    assert_eq!(e.message(), "Invalid parameter 'foo'");
    assert_eq!(e.path(), Some(path.as_path()));

    let image = FORMAT
        .open(
            &path,
            &OpenOptions::new(HostOpenOptions::default()).opener(opener),
        )
        .unwrap();
    image.disk.write_all_at(4096, b"descriptor").unwrap();
    let mut back = [0u8; 10];
    image.disk.read_exact_at(4096, &mut back).unwrap();
    assert_eq!(&back, b"descriptor");
    let info = image.admin.image_info().unwrap();
    assert_eq!(info.format, "vpc");
    assert_eq!(info.virtual_size, image.disk.logical_size());
    assert!(image.admin.has_zero_init());
    assert_eq!(
        image
            .admin
            .check(blk_core::RepairMode::None)
            .unwrap()
            .corruptions,
        0
    );
}

#[test]
fn names_capabilities_and_options() {
    assert_eq!(FORMAT.name(), "vpc");
    assert_eq!(FORMAT.aliases(), ["vhd"]);
    let caps = FORMAT.capabilities();
    assert_eq!(caps.backing_files, BackingFiles::OwnFormat);
    assert!(!caps.compression && !caps.internal_snapshots && !caps.amend);
    assert!(!caps.change_backing_file && !caps.resize && !caps.measure);
    assert_eq!(FORMAT.create_options(), blk_vhd::CREATE_OPTIONS);
    let formatting: Vec<_> = FORMAT
        .formatting_options()
        .iter()
        .map(|o| (o.name, o.print, o.default))
        .collect();
    assert_eq!(
        formatting,
        [
            ("size", OptionPrint::Size, None),
            ("subformat", OptionPrint::Text, None),
            ("force_size", OptionPrint::Text, None),
        ]
    );
}
