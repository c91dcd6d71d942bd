//! The device through the `vhost` crate's in-process frontend: I/O on several queues, the config space, hostile
//! descriptor chains, a frontend that disconnects mid-I/O and a new one that connects, and a stop with
//! requests in flight.

mod support;

use std::time::Duration;

use blk_vhost_user::BlkOptions;
use support::*;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;

const EVENT_IDX: u64 = 1 << 29;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_DISCARD: u64 = 1 << 13;
const BLK_F_WRITE_ZEROES: u64 = 1 << 14;
const BLK_F_FLUSH: u64 = 1 << 9;
const BLK_F_MQ: u64 = 1 << 12;
const BLK_F_CONFIG_WCE: u64 = 1 << 11;

fn two_queues() -> BlkOptions {
    BlkOptions {
        num_queues: 2,
        serial: "blk-serial-0123456789abcdef".into(),
        ..BlkOptions::default()
    }
}

fn range(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&sector.to_le_bytes());
    r.extend_from_slice(&sectors.to_le_bytes());
    r.extend_from_slice(&flags.to_le_bytes());
    r
}

#[test]
fn reads_writes_flush_discard_write_zeroes_and_get_id_on_two_queues() {
    for format in [raw(), qcow2()] {
        let mut server = Server::start(format, two_queues());
        let features = BLK_F_FLUSH | BLK_F_DISCARD | BLK_F_WRITE_ZEROES | BLK_F_MQ | EVENT_IDX;
        let mut vm = TestVm::connect(&server.socket, 2, features);
        assert_eq!(vm.features & features, features);
        for q in 0..2 {
            let buf = TestVm::buffer(q as u64);
            let byte = 0x30 + q as u8;
            vm.fill(buf, 65536, byte);
            let sector = 2048 + q as u64 * 1024;
            assert_eq!(
                vm.request(q, q as u64, T_OUT, sector, &[(buf, 65536)], false),
                (S_OK, 1)
            );
            vm.fill(buf, 65536, 0);
            // Read back in two descriptors.
            assert_eq!(
                vm.request(
                    q,
                    q as u64,
                    T_IN,
                    sector,
                    &[(buf, 4096), (buf + 4096, 61440)],
                    true
                ),
                (S_OK, 65537)
            );
            assert_eq!(vm.read(buf, 65536), vec![byte; 65536]);
        }
        assert_eq!(vm.request(0, 0, T_FLUSH, 0, &[], false), (S_OK, 1));
        let id = TestVm::buffer(0);
        assert_eq!(vm.request(0, 0, T_GET_ID, 0, &[(id, 20)], true), (S_OK, 21));
        assert_eq!(vm.read(id, 20), b"blk-serial-012345678".to_vec());
        // Write-zeroes over the first queue's data, discard the second's.
        let r = TestVm::buffer(2);
        vm.mem_write(r, &range(2048, 128, 0));
        assert_eq!(
            vm.request(1, 2, T_WRITE_ZEROES, 0, &[(r, 16)], false).0,
            S_OK
        );
        vm.mem_write(r, &range(3072, 128, 0));
        assert_eq!(vm.request(1, 2, T_DISCARD, 0, &[(r, 16)], false).0, S_OK);
        assert_eq!(vm.request(0, 0, T_FLUSH, 0, &[], false), (S_OK, 1));
        drop(vm);
        server.stop().unwrap();
        assert_eq!(
            image_bytes(&server.image, 2048 * 512, 65536),
            vec![0u8; 65536]
        );
        assert_eq!(image_bytes(&server.image, 3072 * 512 + 65536, 1), vec![0u8]);
    }
}

#[test]
fn config_space_says_what_the_disk_is() {
    let server = Server::start(qcow2(), two_queues());
    let mut vm = TestVm::connect(&server.socket, 1, BLK_F_CONFIG_WCE);
    let (_, config) = vm
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(config[0..8].try_into().unwrap()),
        (16 << 20) / 512
    );
    assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(config[34..36].try_into().unwrap()), 2);
    assert_eq!(config[32], 1, "writeback by default");
    // The driver turns the cache off (CONFIG_WCE), and writes still work.
    vm.frontend
        .set_config(32, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    let (_, config) = vm
        .frontend
        .get_config(32, 1, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    assert_eq!(config, [0]);
    let buf = TestVm::buffer(0);
    vm.fill(buf, 4096, 7);
    assert_eq!(vm.request(0, 0, T_OUT, 0, &[(buf, 4096)], false), (S_OK, 1));
    assert_eq!(image_bytes(&server.image, 0, 4096), vec![7u8; 4096]);
}

#[test]
fn read_only_disks_offer_ro_and_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ro.img");
    blk_factory::create_disk_file(&blk_factory::CreateParams::new(
        &image,
        raw(),
        Some(1 << 20),
    ))
    .unwrap();
    let socket = dir.path().join("vhost.sock");
    let disk =
        blk_factory::open_disk_file(&blk_factory::DiskFileParams::new(&image).read_only(true))
            .unwrap();
    let device = blk_vhost_user::VhostUserBlk::new(disk, &BlkOptions::default()).unwrap();
    let stop = blk_vhost_user::StopHandle::new().unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| device.serve(&socket, &stop));
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let offered = offered_features(&socket);
        assert_ne!(offered & BLK_F_RO, 0);
        assert_eq!(offered & (BLK_F_DISCARD | BLK_F_WRITE_ZEROES), 0);
        let mut vm = TestVm::connect(&socket, 1, BLK_F_RO);
        let buf = TestVm::buffer(0);
        assert_eq!(vm.request(0, 0, T_OUT, 0, &[(buf, 512)], false).0, S_IOERR);
        assert_eq!(vm.request(0, 0, T_IN, 0, &[(buf, 512)], true).0, S_OK);
        drop(vm);
        stop.stop();
        t.join().unwrap().unwrap();
    });
}

#[test]
fn hostile_descriptor_chains_get_an_error_status() {
    let server = Server::start(raw(), BlkOptions::default());
    let mut vm = TestVm::connect(&server.socket, 1, EVENT_IDX | BLK_F_DISCARD);
    let base = DATA_BASE;
    let status = base + 0x10;
    let buf = TestVm::buffer(0);
    let far = 1u64 << 40;
    let capacity_sectors = (16u64 << 20) / 512;
    // (name, request type, sector, chain between header and status, expected status)
    let cases: Vec<(&str, u32, u64, Vec<Desc>, u8)> = vec![
        (
            "data outside guest memory",
            T_IN,
            0,
            vec![d(far, 512, true)],
            S_IOERR,
        ),
        (
            "data running off the end of guest memory",
            T_IN,
            0,
            vec![d(MEM_SIZE - 256, 512, true)],
            S_IOERR,
        ),
        (
            "read into device-readable data",
            T_IN,
            0,
            vec![d(buf, 512, false)],
            S_IOERR,
        ),
        (
            "write from device-writable data",
            T_OUT,
            0,
            vec![d(buf, 512, true)],
            S_IOERR,
        ),
        (
            "mixed directions",
            T_IN,
            0,
            vec![d(buf, 512, true), d(buf + 512, 512, false)],
            S_IOERR,
        ),
        (
            "read past the end of the disk",
            T_IN,
            capacity_sectors - 1,
            vec![d(buf, 1024, true)],
            S_IOERR,
        ),
        (
            "sector overflowing",
            T_IN,
            u64::MAX / 256,
            vec![d(buf, 512, true)],
            S_IOERR,
        ),
        (
            "unaligned length",
            T_OUT,
            0,
            vec![d(buf, 100, false)],
            S_IOERR,
        ),
        (
            "too many descriptors",
            T_IN,
            0,
            (0..300).map(|i| d(buf + i * 512, 512, true)).collect(),
            S_IOERR,
        ),
        ("bad request type", 0x7777, 0, vec![], S_UNSUPP),
        (
            "discard range past the end",
            T_DISCARD,
            0,
            vec![d(buf + 0x2_0000, 16, false)],
            S_IOERR,
        ),
        (
            "discard with a partial range",
            T_DISCARD,
            0,
            vec![d(buf, 15, false)],
            S_IOERR,
        ),
        (
            "larger than the device's maximum",
            T_IN,
            0,
            vec![d(buf, 0xffff_fe00, true)],
            S_IOERR,
        ),
    ];
    let mut r = range(capacity_sectors - 1, 8, 0);
    r.truncate(16);
    vm.mem_write(buf + 0x2_0000, &r);
    for (name, kind, sector, data, want) in cases {
        vm.header(base, kind, sector);
        vm.mem_write(status, &[0xff]);
        let mut chain = vec![d(base, 16, false)];
        // Chains longer than the queue would wrap onto themselves: keep them within it.
        chain.extend(data.into_iter().take(usize::from(QUEUE_SIZE) - 2));
        chain.push(d(status, 1, true));
        vm.push_chain(0, &chain);
        vm.kick(0);
        let used = vm.wait_used(0, 1, Duration::from_secs(10));
        assert_eq!(vm.status(status), want, "{name}");
        assert_eq!(used[0].1, 1, "{name}: used length");
    }

    // No status byte: the chain comes back used, with nothing written.
    vm.header(base, T_IN, 0);
    vm.push_chain(0, &[d(base, 16, false), d(buf, 512, false)]);
    vm.kick(0);
    assert_eq!(vm.wait_used(0, 1, Duration::from_secs(10))[0].1, 0);
    // A status byte outside guest memory: the same.
    vm.push_chain(0, &[d(base, 16, false), d(far, 1, true)]);
    vm.kick(0);
    assert_eq!(vm.wait_used(0, 1, Duration::from_secs(10))[0].1, 0);
    // A chain that loops onto itself: the queue stops following it; nothing hangs or crashes.
    let head = vm.queues[0].size - 1;
    let _ = head;
    vm.push_chain(
        0,
        &[
            Desc {
                addr: base,
                len: 16,
                write: false,
                next: None,
            },
            Desc {
                addr: status,
                len: 1,
                write: true,
                next: Some(0),
            },
        ],
    );
    vm.kick(0);
    let _ = vm.wait_used(0, 1, Duration::from_secs(10));

    // The device still serves good requests.
    vm.fill(buf, 4096, 0x42);
    assert_eq!(vm.request(0, 0, T_OUT, 8, &[(buf, 4096)], false), (S_OK, 1));
    vm.fill(buf, 4096, 0);
    assert_eq!(
        vm.request(0, 0, T_IN, 8, &[(buf, 4096)], true),
        (S_OK, 4097)
    );
    assert_eq!(vm.read(buf, 4096), vec![0x42u8; 4096]);
}

#[test]
fn a_frontend_that_disconnects_mid_io_and_a_new_one_that_connects() {
    let mut server = Server::start(qcow2(), two_queues());
    {
        let mut vm = TestVm::connect(&server.socket, 2, EVENT_IDX);
        // Many writes in flight, then the frontend goes away without waiting.
        for i in 0..64u64 {
            let buf = DATA_BASE + i * 0x1_0000;
            vm.fill(buf + 0x100, 0x8000, i as u8);
            vm.header(buf, T_OUT, i * 64);
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
    }
    // A new frontend: negotiation from scratch, and I/O works.
    let mut vm = TestVm::connect(&server.socket, 2, EVENT_IDX);
    let buf = TestVm::buffer(0);
    vm.fill(buf, 8192, 0x99);
    assert_eq!(
        vm.request(1, 0, T_OUT, 10_000, &[(buf, 8192)], false),
        (S_OK, 1)
    );
    vm.fill(buf, 8192, 0);
    assert_eq!(
        vm.request(0, 0, T_IN, 10_000, &[(buf, 8192)], true),
        (S_OK, 8193)
    );
    assert_eq!(vm.read(buf, 8192), vec![0x99u8; 8192]);
    drop(vm);
    server.stop().unwrap();
    // The image is consistent (every write landed whole or not at all: each 32 KiB run holds one byte).
    let bytes = image_bytes(&server.image, 0, 64 * 64 * 512);
    for i in 0..64usize {
        let run = &bytes[i * 32768..(i + 1) * 32768];
        assert!(
            run.iter().all(|&b| b == run[0]) && (run[0] == 0 || run[0] == i as u8),
            "write {i} landed partly"
        );
    }
}

#[test]
fn stop_completes_requests_in_flight_and_flushes() {
    let mut server = Server::start(qcow2(), two_queues());
    let mut vm = TestVm::connect(&server.socket, 2, EVENT_IDX);
    let n = 96u64;
    for i in 0..n {
        let buf = DATA_BASE + i * 0x1_0000;
        vm.fill(buf + 0x100, 0x8000, (i as u8) | 1);
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
    // Stop at once: whatever the rings hold is served before the server returns.
    server.stop().unwrap();
    let done0 = vm.wait_used(0, (n / 2) as usize, Duration::from_secs(1));
    let done1 = vm.wait_used(1, (n / 2) as usize, Duration::from_secs(1));
    assert_eq!(done0.len() + done1.len(), n as usize);
    for i in 0..n {
        assert_eq!(
            vm.status(DATA_BASE + i * 0x1_0000 + 0x10),
            S_OK,
            "request {i}"
        );
    }
    let bytes = image_bytes(&server.image, 0, (n * 64 * 512) as usize);
    for i in 0..n as usize {
        assert_eq!(bytes[i * 32768], (i as u8) | 1, "write {i}");
        assert_eq!(bytes[i * 32768 + 32767], (i as u8) | 1, "write {i}");
    }
}

#[test]
fn reads_mark_the_dirty_log_when_the_frontend_asks() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
    use vhost::VhostBackend;

    let server = Server::start(raw(), BlkOptions::default());
    let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
    let mut vm = TestVm::connect_with(
        &server.socket,
        1,
        log_all,
        VhostUserProtocolFeatures::LOG_SHMFD,
    );
    assert_ne!(vm.features & log_all, 0, "VHOST_F_LOG_ALL offered");
    // One bit per 4 KiB page of guest memory.
    let log_len = MEM_SIZE / 4096 / 8;
    let log = tempfile::tempfile_in("/dev/shm").unwrap();
    log.set_len(log_len).unwrap();
    vm.frontend
        .set_log_base(
            0,
            Some(vhost::VhostUserDirtyLogRegion {
                mmap_size: log_len,
                mmap_offset: 0,
                mmap_handle: log.as_raw_fd(),
            }),
        )
        .unwrap();
    let buf = TestVm::buffer(3);
    assert_eq!(
        vm.request(0, 3, T_IN, 0, &[(buf, 65536)], true),
        (S_OK, 65537)
    );
    let mut bits = vec![0u8; log_len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&log, &mut bits, 0).unwrap();
    let dirty = |page: u64| bits[(page / 8) as usize] & (1 << (page % 8)) != 0;
    for page in buf / 4096..(buf + 65536) / 4096 {
        assert!(
            dirty(page),
            "page {page:#x} the read wrote is not in the log"
        );
    }
    assert!(
        !dirty((MEM_SIZE - 4096) / 4096),
        "an untouched page is in the log"
    );
}
