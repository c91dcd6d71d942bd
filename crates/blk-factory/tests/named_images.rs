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
    create_disk_file(&CreateParams::new(&base, ImageFormat::RAW, Some(65536))).unwrap();
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
    create_disk_file(&CreateParams::new(&base, ImageFormat::RAW, Some(65536))).unwrap();
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

/// `skip_backing` (qemu's `BDRV_O_NO_BACKING`): a QCOW2 overlay whose backing file is gone still opens, reports
/// the recorded name, and reads zeros where the backing file would show through; a normal open fails.
#[cfg(feature = "qcow2")]
#[test]
fn skip_backing_opens_an_overlay_without_its_backing_file() {
    use blk_factory::{open_disk_file, open_image, DiskFileParams};

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let overlay = dir.path().join("overlay.qcow2");
    create_disk_file(&CreateParams::new(&base, ImageFormat::RAW, Some(65536))).unwrap();
    {
        let disk =
            open_disk_file(&DiskFileParams::new(&base).format(Some(ImageFormat::RAW))).unwrap();
        disk.write_all_at(0, &[0x5a; 512]).unwrap();
    }
    let mut params = CreateParams::new(&overlay, ImageFormat::by_name("qcow2").unwrap(), None);
    params.backing_file = Some("base.raw".into());
    params.backing_format = Some(ImageFormat::RAW);
    create_disk_file(&params).unwrap();
    std::fs::remove_file(&base).unwrap();

    let open = DiskFileParams::new(&overlay)
        .read_only(true)
        .named_images(NamedImagePolicy::AllowRecordedFormat);
    let err = open_disk_file(&open).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let image = open_image(&open.skip_backing(true)).unwrap();
    assert_eq!(image.disk.logical_size(), 65536);
    let info = image.admin.image_info().unwrap();
    assert_eq!(info.backing_filename.as_deref(), Some("base.raw"));
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    let mut buf = [0xffu8; 512];
    image.disk.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 512]);
}
