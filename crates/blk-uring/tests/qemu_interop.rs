//! Data written through an io_uring queue reads back identically with qemu-io, and the other way round.

mod common;

use std::path::Path;
use std::process::Command;

use blk_core::{HostFile, HostOp, HostOpenOptions, HostQueueBackend};
use blk_test_support::{host_read, host_write};
use common::{backend, buf, buf_mut, wait_for};

/// Runs `qemu-io -f raw -c CMD PATH`; `None` when qemu-io is not installed.
fn qemu_io(path: &Path, cmd: &str) -> Option<(bool, String)> {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd])
        .arg(path)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn qemu_io_reads_what_the_queue_wrote_and_the_queue_reads_what_qemu_io_wrote() {
    let Some(backend) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    {
        let file = HostFile::create(&path, HostOpenOptions::default()).unwrap();
        file.set_len(1 << 20).unwrap();
        let mut queue = backend.create_queue(&[&file], 4).unwrap();
        let data = vec![0x5au8; 128 * 1024];
        let bufs: Vec<_> = data.chunks(20_000).map(buf).collect();
        queue.push(1, host_write(0, 65536, &bufs));
        queue.push(2, HostOp::SyncData { file: 0 });
        queue.submit().unwrap();
        let done = wait_for(queue.as_mut(), 2);
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        // The queue and the file are dropped here: they hold the image's lock.
    }
    let Some((ok, text)) = qemu_io(&path, "read -P 0x5a 65536 131072") else {
        eprintln!("skipping: qemu-io is not installed");
        return;
    };
    assert!(ok && !text.contains("fail"), "{text}");
    let (ok, text) = qemu_io(&path, "read -P 0 0 65536").unwrap();
    assert!(ok && !text.contains("fail"), "{text}");

    let (ok, text) = qemu_io(&path, "write -P 0x33 196608 65536").unwrap();
    assert!(ok, "{text}");
    let file = HostFile::open(
        &path,
        HostOpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut queue = backend.create_queue(&[&file], 4).unwrap();
    let mut back = vec![0u8; 2 * 65536];
    let bufs: Vec<_> = back.chunks_mut(4096).map(buf_mut).collect();
    queue.push(3, host_read(0, 131072, &bufs));
    queue.submit().unwrap();
    assert_eq!(wait_for(queue.as_mut(), 1)[0].result, Ok(2 * 65536));
    drop(bufs);
    assert!(back[..65536].iter().all(|&b| b == 0x5a));
    assert!(back[65536..].iter().all(|&b| b == 0x33));
}
