//! Format runtime options through the factory (`DiskFileParams::runtime_option`): passed to the format's open
//! (detected or given), names the format does not list refused with QEMU's message, and not passed to backing
//! files.
#![cfg(feature = "qcow2")]

use blk_factory::{
    create_disk_file, open_image, CreateParams, DiskFileParams, ImageFormat, NamedImagePolicy,
};

#[test]
fn runtime_options_reach_the_format_and_unknown_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    let qcow2 = ImageFormat::by_name("qcow2").unwrap();
    create_disk_file(&CreateParams::new(&path, qcow2, Some(1 << 20))).unwrap();
    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();

    // Taken, with the format detected or given.
    for format in [None, Some(qcow2)] {
        let params = DiskFileParams::new(&path)
            .format(format)
            .runtime_option("overlap-check", "none")
            .runtime_option("l2-cache-size", "1M");
        open_image(&params).unwrap();
    }
    // A value the format refuses: its message.
    let bad = DiskFileParams::new(&path).runtime_option("overlap-check", "sometimes");
    let err = open_image(&bad).unwrap_err();
    assert!(
        err.message()
            .starts_with("Unsupported value 'sometimes' for qcow2 option 'overlap-check'"),
        "{err}"
    );
    // A name the format does not list: QEMU's message, for the format detected.
    for (file, name) in [(&path, "qcow2"), (&raw, "raw")] {
        let params = DiskFileParams::new(file).runtime_option("l2-cache-size", "1M");
        let params = if name == "qcow2" {
            params.runtime_option("bogus", "1")
        } else {
            params
        };
        let err = open_image(&params).unwrap_err();
        let key = if name == "qcow2" {
            "bogus"
        } else {
            "l2-cache-size"
        };
        assert_eq!(
            err.message(),
            format!("Block format '{name}' does not support the option '{key}'")
        );
    }
}

#[test]
fn runtime_options_are_not_passed_to_backing_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
    let top = dir.path().join("top.qcow2");
    let qcow2 = ImageFormat::by_name("qcow2").unwrap();
    let mut create = CreateParams::new(&top, qcow2, None);
    create.backing_file = Some(base.display().to_string());
    create.backing_format = Some(ImageFormat::RAW);
    create_disk_file(&create).unwrap();
    // raw takes no runtime options: the open succeeds only because the backing file does not get them.
    let params = DiskFileParams::new(&top)
        .named_images(NamedImagePolicy::AllowRecordedFormat)
        .runtime_option("overlap-check", "all");
    let image = open_image(&params).unwrap();
    let mut buf = vec![0u8; 512];
    image.disk.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 512]);
}
