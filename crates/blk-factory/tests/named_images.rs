//! The gate for files named inside images.

use blk_core::{ErrorKind, ImageOpener, LockMode, NamedImage, NamedImageRole};
use blk_factory::{
    create_disk_file, CreateParams, FactoryOpener, ImageFormat, NamedImagePolicy, MAX_CHAIN_DEPTH,
};

fn request(path: std::path::PathBuf, format: Option<&str>, depth: u32) -> NamedImage {
    NamedImage {
        path,
        format: format.map(str::to_string),
        role: NamedImageRole::Backing,
        read_only: true,
        depth,
    }
}

#[test]
fn deny_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    create_disk_file(&CreateParams::new(&base, ImageFormat::Raw, Some(65536))).unwrap();
    let opener = FactoryOpener::new(NamedImagePolicy::Deny, false, LockMode::Auto);
    let err = opener
        .open_named(&request(base, Some("raw"), 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn allowed_files_need_a_recorded_format_and_a_bounded_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    create_disk_file(&CreateParams::new(&base, ImageFormat::Raw, Some(65536))).unwrap();
    let opener = FactoryOpener::new(NamedImagePolicy::AllowRecordedFormat, false, LockMode::Auto);

    let disk = opener
        .open_named(&request(base.clone(), Some("raw"), 1))
        .unwrap();
    assert!(disk.is_read_only());
    assert_eq!(disk.logical_size(), 65536);

    let err = opener
        .open_named(&request(base.clone(), None, 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("never probed"), "{err}");

    let err = opener
        .open_named(&request(base.clone(), Some("cow"), 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    let err = opener
        .open_named(&request(base, Some("raw"), MAX_CHAIN_DEPTH + 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
