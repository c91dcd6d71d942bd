//! Short host reads never reach the guest as zeros (issue 15, fault 6), on every backend (sync, io_uring,
//! AIO) and on the synchronous path: a backend that passes on a short count inside the file has the rest of
//! the read resumed; a read that fails after a partial transfer fails, whatever was read before.

use std::sync::Arc;

use blk_core::{HostCall, HostFault, HostQueueBackend, IoBufMut, OpenOptions, OpenedImage};
use blk_factory::{
    choose_backend, create_disk_file, Backend, CreateParams, FactoryOpener, ImageFormat,
    NamedImagePolicy,
};
use blk_test_support::{
    arena, complete, pattern, read_request, rw, target_tempdir, FaultInjector, FaultRule,
    FaultyBackend, EIO,
};

const SIZE: u64 = 4 << 20;

/// The backends that work here, by name (io_uring or AIO may be missing in a sandbox: then skipped, said so).
fn backends() -> Vec<(&'static str, Arc<dyn HostQueueBackend>)> {
    let mut found = Vec::new();
    for name in ["sync", "io_uring", "aio"] {
        let choice = choose_backend(Backend::named(name).unwrap());
        if choice.backend.name() == name {
            found.push((name, choice.handle()));
        } else {
            eprintln!("skipping {name}: {:?}", choice.notes);
        }
    }
    found
}

/// A raw and a QCOW2 image holding `pattern(7, SIZE)`, made through the sync path.
fn images(dir: &std::path::Path) -> Vec<(ImageFormat, std::path::PathBuf)> {
    let data = pattern(7, SIZE as usize);
    let mut made = Vec::new();
    for name in ["raw", "qcow2", "vpc", "vhdx"] {
        let format: ImageFormat = name.parse().unwrap();
        let path = dir.join(format!("image.{name}"));
        create_disk_file(&CreateParams::new(&path, format, Some(SIZE))).unwrap();
        let image = open(format, &path, blk_core::SYNC_BACKEND.probe().unwrap());
        image.disk.write_all_at(0, &data).unwrap();
        image.disk.flush().unwrap();
        made.push((format, path));
    }
    made
}

fn open(
    format: ImageFormat,
    path: &std::path::Path,
    backend: Arc<dyn HostQueueBackend>,
) -> OpenedImage {
    let options = OpenOptions::new(rw())
        .opener(Arc::new(FactoryOpener::new(
            NamedImagePolicy::AllowRecordedFormat,
            false,
            blk_core::LockMode::Auto,
        )))
        .backend(backend);
    format.descriptor().open(path, &options).unwrap()
}

/// Reads the whole disk through an async queue in 256 KiB requests; the completions' results.
fn read_async(image: &OpenedImage, out: IoBufMut<'static>) -> Vec<blk_core::Result<u64>> {
    let mut queue = image.disk.create_async_io(8).unwrap();
    let mut results = Vec::new();
    let step = 256 << 10;
    for (i, at) in (0..SIZE).step_by(step).enumerate() {
        let buf = [out.subslice(at as usize, step).unwrap()];
        let done = complete(&mut *queue, &[read_request(i as u64, at, &buf)]);
        results.extend(done.into_iter().map(|c| c.result));
    }
    results
}

#[test]
fn a_short_read_inside_the_file_is_resumed_on_every_backend() {
    let dir = target_tempdir!("fault-short-reads");
    let expected = pattern(7, SIZE as usize);
    let mut runs = 0;
    for (format, path) in images(dir.path()) {
        for (name, backend) in backends() {
            // Every host read the queue pushes comes back short: 1000 bytes, then the rest is the engine's.
            let rules = (1..=4096)
                .map(|n| FaultRule::once(HostCall::Read, n, HostFault::Short(1000)))
                .collect();
            let injector = Arc::new(FaultInjector::new(rules));
            let faulty = Arc::new(FaultyBackend::new(backend, injector.clone()));
            let image = open(format, &path, faulty);
            let out = arena(SIZE);
            let results = read_async(&image, out);
            assert!(
                results.iter().all(|r| r.is_ok()),
                "{format} on {name}: {results:?}"
            );
            assert!(
                injector.injected() > 0,
                "{format} on {name}: no read was cut"
            );
            let mut got = vec![0u8; SIZE as usize];
            out.as_io_buf().copy_to(&mut got);
            assert!(
                got == expected,
                "{format} on {name}: a short read reached the guest as zeros"
            );
            runs += 1;
        }
    }
    assert!(runs >= 4, "at least the sync backend ran for every format");
}

#[test]
fn an_error_after_a_partial_read_fails_the_request_on_every_backend() {
    let dir = target_tempdir!("fault-partial-errors");
    for (format, path) in images(dir.path()) {
        for (name, backend) in backends() {
            // The first host read stops after 1000 bytes; its continuation fails.
            let rules = vec![
                FaultRule::once(HostCall::Read, 1, HostFault::Short(1000)),
                FaultRule::once(HostCall::Read, 2, HostFault::Fail(EIO)),
            ];
            let injector = Arc::new(FaultInjector::new(rules));
            let faulty = Arc::new(FaultyBackend::new(backend, injector.clone()));
            let image = open(format, &path, faulty);
            let results = read_async(&image, arena(SIZE));
            // The request whose read was cut is the one that fails (not zeros and a later request's error).
            let failed = results.iter().filter(|r| r.is_err()).count();
            assert_eq!(failed, 1, "{format} on {name}: {results:?}");
            let err = results[0].as_ref().unwrap_err();
            assert_eq!(err.errno(), EIO, "{format} on {name}: {err}");
            assert_eq!(injector.injected(), 2);
        }
    }
}

#[test]
fn the_synchronous_path_resumes_short_reads_and_fails_on_an_error_after_a_partial_read() {
    let dir = target_tempdir!("fault-sync-short");
    let expected = pattern(7, SIZE as usize);
    for (format, path) in images(dir.path()) {
        // Every read step of the host file is cut to 1000 bytes: the host-file loop goes on.
        let rules = (1..=100_000)
            .map(|n| FaultRule::once(HostCall::Read, n, HostFault::Short(1000)))
            .collect();
        let injector = Arc::new(FaultInjector::new(rules));
        let registration = injector.register(&path).unwrap();
        let image = open(format, &path, blk_core::SYNC_BACKEND.probe().unwrap());
        let mut got = vec![0u8; SIZE as usize];
        image.disk.read_exact_at(0, &mut got).unwrap();
        assert!(got == expected, "{format}: short reads changed the data");
        assert!(injector.injected() > 0);
        drop(image);
        drop(registration);

        // A step cut short, then an error inside the file: the read fails (no zeros, no success).
        let injector = Arc::new(FaultInjector::new(Vec::new()));
        let registration = injector.register(&path).unwrap();
        let image = open(format, &path, blk_core::SYNC_BACKEND.probe().unwrap());
        injector.rearm(vec![
            FaultRule::once(HostCall::Read, 1, HostFault::Short(1000)),
            FaultRule::once(HostCall::Read, 2, HostFault::Fail(EIO)),
        ]);
        let mut buf = vec![0u8; 1 << 20];
        let err = image.disk.read_exact_at(SIZE / 2, &mut buf).unwrap_err();
        assert_eq!(err.errno(), EIO, "{format}: {err}");
        assert_eq!(injector.injected(), 2);
        drop(registration);
    }
}
