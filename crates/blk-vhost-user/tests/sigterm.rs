//! SIGTERM with requests in flight: every request the rings hold completes, the data is flushed, and the server
//! returns. (Its own test binary: the signal handler is process-wide.)

mod support;

use std::time::Duration;

use blk_factory::{create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat};
use blk_vhost_user::{stop_on_signals, BlkOptions, StopHandle, VhostUserBlk};
use support::*;

#[test]
fn sigterm_completes_requests_in_flight_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    let qcow2 = ImageFormat::by_name("qcow2").unwrap();
    create_disk_file(&CreateParams::new(&image, qcow2, Some(16 << 20))).unwrap();
    let socket = dir.path().join("vhost.sock");
    let disk = open_disk_file(&DiskFileParams::new(&image)).unwrap();
    let options = BlkOptions {
        num_queues: 2,
        ..BlkOptions::default()
    };
    let device = VhostUserBlk::new(disk, &options).unwrap();
    let stop = StopHandle::new().unwrap();
    stop_on_signals(&stop).unwrap();
    let n = 128u64;
    std::thread::scope(|s| {
        let server = s.spawn(|| device.serve(&socket, &stop));
        let mut vm = TestVm::connect(&socket, 2, 1 << 29);
        for i in 0..n {
            let buf = DATA_BASE + i * 0x1_0000;
            vm.fill(buf + 0x100, 0x8000, (i as u8) | 0x80);
            vm.header(buf, T_OUT, i * 64);
            vm.mem_write(buf + 0x10, &[0xff]);
            vm.push_chain(
                (i % 2) as usize,
                &[
                    d(buf, 16, false),
                    d(buf + 0x100, 0x8000, false),
                    d(buf + 0x10, 1, true),
                ],
            );
        }
        vm.kick(0);
        vm.kick(1);
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        server.join().unwrap().unwrap();
        let done = vm
            .wait_used(0, (n / 2) as usize, Duration::from_secs(1))
            .len()
            + vm.wait_used(1, (n / 2) as usize, Duration::from_secs(1))
                .len();
        assert_eq!(done, n as usize);
        for i in 0..n {
            assert_eq!(
                vm.status(DATA_BASE + i * 0x1_0000 + 0x10),
                S_OK,
                "request {i}"
            );
        }
    });
    let bytes = image_bytes(&image, 0, (n * 32768) as usize);
    for i in 0..n as usize {
        assert_eq!(bytes[i * 32768], (i as u8) | 0x80, "write {i}");
        assert_eq!(bytes[i * 32768 + 32767], (i as u8) | 0x80, "write {i}");
    }
}
