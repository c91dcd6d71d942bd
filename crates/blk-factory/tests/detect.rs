//! Format detection and the errors for files that are not images.

use std::fs;
use std::path::Path;

use blk_core::ErrorKind;
use blk_factory::{detect_format, open_disk_file, DiskFileParams, ImageFormat};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn magic_numbers_pick_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow2.resize(512, 0);
    assert_eq!(
        detect_format(&write(dir.path(), "q", &qcow2)).unwrap(),
        ImageFormat::by_name("qcow2").unwrap()
    );

    let mut vhdx = b"vhdxfile".to_vec();
    vhdx.resize(5 * 64 * 1024, 0);
    assert_eq!(
        detect_format(&write(dir.path(), "x", &vhdx)).unwrap(),
        ImageFormat::by_name("vhdx").unwrap()
    );

    let mut dynamic_vhd = b"conectix".to_vec();
    dynamic_vhd.resize(4096, 0);
    assert_eq!(
        detect_format(&write(dir.path(), "d", &dynamic_vhd)).unwrap(),
        ImageFormat::by_name("vpc").unwrap()
    );

    let mut fixed_vhd = vec![0u8; 8192];
    fixed_vhd[8192 - 512..8192 - 504].copy_from_slice(b"conectix");
    assert_eq!(
        detect_format(&write(dir.path(), "f", &fixed_vhd)).unwrap(),
        ImageFormat::by_name("vpc").unwrap()
    );

    assert_eq!(
        detect_format(&write(dir.path(), "r", &[0xa7; 4096])).unwrap(),
        ImageFormat::RAW
    );
    assert_eq!(
        detect_format(&write(dir.path(), "tiny", b"x")).unwrap(),
        ImageFormat::RAW
    );
}

#[test]
fn empty_and_truncated_files_are_errors_with_path_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.img", b"");
    let err = detect_format(&empty).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    assert_eq!(err.path(), Some(empty.as_path()));
    assert_eq!(err.offset(), Some(0));

    let truncated = write(dir.path(), "trunc.qcow2", b"QFI\xfb");
    let err = detect_format(&truncated).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    assert_eq!(err.offset(), Some(4));
    assert!(err.to_string().contains("truncated qcow2"), "{err}");
    assert!(err.to_string().contains("trunc.qcow2"), "{err}");

    let mut vhd = b"conectix".to_vec();
    vhd.resize(600, 0);
    assert_eq!(
        detect_format(&write(dir.path(), "t.vhd", &vhd))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidFormat
    );
}

#[test]
fn missing_files_and_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let err = open_disk_file(&DiskFileParams::new(&missing)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.path(), Some(missing.as_path()));

    let err = open_disk_file(&DiskFileParams::new(dir.path())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.path(), Some(dir.path()));
}

#[test]
fn explicit_format_wins_over_probing() {
    let dir = tempfile::tempdir().unwrap();
    // An empty file cannot be probed, but opens as raw when the caller says so.
    let empty = write(dir.path(), "empty.img", b"");
    let disk = open_disk_file(&DiskFileParams::new(&empty).format(Some(ImageFormat::RAW))).unwrap();
    assert_eq!(disk.logical_size(), 0);

    // A file that looks like QCOW2 is served as raw bytes when raw is asked for.
    let mut qcow2 = b"QFI\xfb".to_vec();
    qcow2.resize(4096, 1);
    let path = write(dir.path(), "looks-like.qcow2", &qcow2);
    let disk = open_disk_file(
        &DiskFileParams::new(&path)
            .format(Some(ImageFormat::RAW))
            .read_only(true),
    )
    .unwrap();
    let mut head = [0u8; 4];
    disk.read_exact_at(0, &mut head).unwrap();
    assert_eq!(&head, b"QFI\xfb");
}

#[test]
fn formats_not_built_in_are_refused_clearly() {
    // A format this build lacks is unknown by name, with qemu-img's message (its probe is not here either).
    for name in ["qcow2", "vpc", "vhdx"] {
        if ImageFormat::by_name(name).is_none() {
            let err = name.parse::<ImageFormat>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}");
            assert_eq!(err.message(), format!("Unknown file format '{name}'"));
        }
    }
}
