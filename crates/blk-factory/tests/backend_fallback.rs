//! With io_uring unavailable, asking for it (or for the best backend) falls back to Linux AIO, else synchronous
//! I/O, says why, and the queues work. This binary sets `BLK_DISABLE_IO_URING` before the first probe (the
//! probe's outcome is cached per process, so the variable must not be set in a binary that also tests io_uring).

use blk_core::{IoBufMut, Request, RequestOp};
use blk_factory::{
    choose_backend, create_disk_file, open_disk_file, Backend, CreateParams, DiskFileParams,
    ImageFormat, DISABLE_IO_URING_ENV,
};

#[test]
fn io_uring_unavailable_falls_back_with_a_message() {
    std::env::set_var(DISABLE_IO_URING_ENV, "1");
    let choice = choose_backend(Backend::named("io_uring").unwrap());
    assert_ne!(choice.backend, Backend::named("io_uring").unwrap());
    let first = &choice.notes[0];
    assert!(first.starts_with("io_uring is not"), "{first}");
    let last = choice.notes.last().unwrap();
    assert!(
        last.ends_with(&format!("using {}", choice.backend.name())),
        "{last}"
    );
    assert_eq!(choose_backend(Backend::AUTO).backend, choice.backend);

    // A disk opened asking for io_uring serves its queues on the fallback.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    create_disk_file(&CreateParams::new(
        &path,
        ImageFormat::by_name("qcow2").unwrap(),
        Some(1 << 20),
    ))
    .unwrap();
    let disk =
        open_disk_file(&DiskFileParams::new(&path).backend(Backend::named("io_uring").unwrap()))
            .unwrap();
    disk.write_all_at(4096, &[7u8; 4096]).unwrap();
    let mut queue = disk.create_async_io(4).unwrap();
    static mut BACK: [u8; 4096] = [0; 4096];
    // SAFETY: BACK is only used here, by this one request, which is reaped before it is read below.
    let buf = unsafe { IoBufMut::from_raw_parts(std::ptr::addr_of_mut!(BACK).cast(), 4096) };
    let bufs = [buf];
    queue
        .submit(&[Request::new(
            1,
            RequestOp::Read {
                offset: 4096,
                bufs: &bufs,
            },
        )])
        .unwrap();
    let done = loop {
        if let Some(c) = queue.next_completed_request() {
            break c;
        }
        let _ = queue.notifier().read();
    };
    assert_eq!(done.result.unwrap(), 4096);
    // SAFETY: the read completed; nothing else uses BACK.
    assert_eq!(unsafe { &*std::ptr::addr_of!(BACK) }, &[7u8; 4096]);
}

#[test]
fn strict_mode_fails_instead_of_falling_back() {
    std::env::set_var(DISABLE_IO_URING_ENV, "1");
    let uring = Backend::named("io_uring").unwrap();
    let err = blk_factory::choose_backend_strict(uring).unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::Unsupported);
    assert!(err.to_string().contains("BLK_DISABLE_IO_URING"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    create_disk_file(&CreateParams::new(&path, ImageFormat::RAW, Some(1 << 20))).unwrap();
    let strict = DiskFileParams::new(&path)
        .backend(uring)
        .strict_backend(true);
    let err = open_disk_file(&strict).unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::Unsupported);
    // Without strict mode the same open falls back, and the disk and its queues say to what.
    let disk = open_disk_file(&DiskFileParams::new(&path).backend(uring)).unwrap();
    assert_ne!(disk.backend(), "io_uring");
    assert_eq!(disk.create_async_io(4).unwrap().backend(), disk.backend());
    drop(disk);
    // A strict request for a backend that works opens normally.
    let sync = DiskFileParams::new(&path)
        .backend(Backend::SYNC)
        .strict_backend(true);
    assert_eq!(open_disk_file(&sync).unwrap().backend(), "sync");
}
