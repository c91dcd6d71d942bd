//! A test frontend on the `vhost` crate's in-process frontend: shared guest memory in /dev/shm, split
//! virtqueues laid out by hand, and helpers that build virtio-blk requests, including hostile ones.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_factory::{create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat};
use blk_vhost_user::{BlkOptions, StopHandle, VhostUserBlk};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size.
pub const MEM_SIZE: u64 = 64 << 20;
/// Where queues' rings live: queue q at RING_BASE + q * RING_STRIDE.
const RING_BASE: u64 = 0x10_0000;
const RING_STRIDE: u64 = 0x4_0000;
/// Where request headers, data and status bytes go.
pub const DATA_BASE: u64 = 0x100_0000;
/// A fake frontend virtual address for guest address 0 (only used for translation).
const VA_BASE: u64 = 0x7f00_0000_0000;
/// Queue size the tests use.
pub const QUEUE_SIZE: u16 = 256;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One descriptor to place: address, length, device-writable, and an explicit `next` (None: the following one).
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
    pub next: Option<u16>,
}

pub fn d(addr: u64, len: u32, write: bool) -> Desc {
    Desc {
        addr,
        len,
        write,
        next: None,
    }
}

/// A server in a thread serving one image.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub socket: PathBuf,
    pub stop: StopHandle,
    thread: Option<std::thread::JoinHandle<blk_factory::Result<()>>>,
}

impl Server {
    /// A 16 MiB image of `format` served with `options`.
    pub fn start(format: ImageFormat, options: BlkOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        create_disk_file(&CreateParams::new(&image, format, Some(16 << 20))).unwrap();
        Server::start_on(dir, image, options)
    }

    pub fn start_on(dir: tempfile::TempDir, image: PathBuf, options: BlkOptions) -> Server {
        let socket = dir.path().join("vhost.sock");
        let disk = open_disk_file(&DiskFileParams::new(&image)).unwrap();
        let device = VhostUserBlk::new(disk, &options).unwrap();
        let stop = StopHandle::new().unwrap();
        let (s, sock) = (stop.clone(), socket.clone());
        let thread = std::thread::spawn(move || device.serve(&sock, &s));
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "no socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        Server {
            dir,
            image,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits for it.
    pub fn stop(&mut self) -> blk_factory::Result<()> {
        self.stop.stop();
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// A driver-side split virtqueue.
pub struct DriverQueue {
    pub index: usize,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

/// The test VM: memory shared with the backend and a connected frontend.
pub struct TestVm {
    pub mem: GuestMemoryMmap<()>,
    _file: Arc<File>,
    pub frontend: Frontend,
    pub queues: Vec<DriverQueue>,
    pub features: u64,
}

pub fn offered_features(socket: &Path) -> u64 {
    let frontend = connect(socket, 1);
    frontend.set_owner().unwrap();
    frontend.get_features().unwrap()
}

fn connect(socket: &Path, queues: u64) -> Frontend {
    let started = Instant::now();
    loop {
        match Frontend::connect(socket, queues) {
            Ok(f) => return f,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(10), "connect: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl TestVm {
    /// Connects, negotiates `extra` virtio features beside VERSION_1 and PROTOCOL_FEATURES, sets up `queues`
    /// queues.
    pub fn connect(socket: &Path, queues: usize, extra: u64) -> TestVm {
        TestVm::connect_with(socket, queues, extra, VhostUserProtocolFeatures::empty())
    }

    /// As [`TestVm::connect`], asking for `protocol` beside MQ, CONFIG and REPLY_ACK.
    pub fn connect_with(
        socket: &Path,
        queues: usize,
        extra: u64,
        protocol_extra: VhostUserProtocolFeatures,
    ) -> TestVm {
        let file = tempfile::tempfile_in("/dev/shm").unwrap();
        file.set_len(MEM_SIZE).unwrap();
        let file = Arc::new(file);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE as usize,
            Some(FileOffset::from_arc(Arc::clone(&file), 0)),
        )])
        .unwrap();
        let mut frontend = connect(socket, queues as u64);
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let features =
            offered & ((1 << 32) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | extra);
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(
                protocol
                    & (VhostUserProtocolFeatures::MQ
                        | VhostUserProtocolFeatures::CONFIG
                        | VhostUserProtocolFeatures::REPLY_ACK
                        | protocol_extra),
            )
            .unwrap();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE,
                userspace_addr: VA_BASE,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            }])
            .unwrap();
        let mut vm = TestVm {
            mem,
            _file: file,
            frontend,
            queues: Vec::new(),
            features,
        };
        for q in 0..queues {
            vm.add_queue(q);
        }
        // The messages above are not acknowledged, so the backend may still be handling them when this
        // returns. A message with a reply is handled after all of them: once it is answered, every queue is
        // set up and enabled, and a kick (or a stop) that follows sees the rings.
        vm.frontend.get_features().unwrap();
        vm
    }

    fn add_queue(&mut self, index: usize) {
        let base = RING_BASE + index as u64 * RING_STRIDE;
        let size = QUEUE_SIZE;
        let q = DriverQueue {
            index,
            size,
            desc: base,
            avail: base + 0x1_0000,
            used: base + 0x2_0000,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        };
        // Zeroed rings.
        self.mem
            .write_slice(&vec![0u8; RING_STRIDE as usize], GuestAddress(base))
            .unwrap();
        let f = &mut self.frontend;
        f.set_vring_num(index, size).unwrap();
        f.set_vring_addr(
            index,
            &VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: VA_BASE + q.desc,
                used_ring_addr: VA_BASE + q.used,
                avail_ring_addr: VA_BASE + q.avail,
                log_addr: None,
            },
        )
        .unwrap();
        f.set_vring_base(index, 0).unwrap();
        f.set_vring_call(index, &q.call).unwrap();
        f.set_vring_kick(index, &q.kick).unwrap();
        f.set_vring_enable(index, true).unwrap();
        self.queues.push(q);
    }

    /// Places a chain (descriptors allocated round-robin) on queue `q`'s avail ring; returns its head. Does not
    /// kick.
    pub fn push_chain(&mut self, q: usize, chain: &[Desc]) -> u16 {
        let queue = &mut self.queues[q];
        let head = queue.next_desc;
        let n = chain.len() as u16;
        for (i, desc) in chain.iter().enumerate() {
            let idx = (head + i as u16) % queue.size;
            let last = i + 1 == chain.len();
            let mut flags = if desc.write { F_WRITE } else { 0 };
            let next = match desc.next {
                Some(n) => {
                    flags |= F_NEXT;
                    n
                }
                None if !last => {
                    flags |= F_NEXT;
                    (idx + 1) % queue.size
                }
                None => 0,
            };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&desc.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&desc.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(queue.desc + u64::from(idx) * 16))
                .unwrap();
        }
        queue.next_desc = (head + n) % queue.size;
        let slot = queue.avail + 4 + u64::from(queue.avail_idx % queue.size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(queue.avail_idx, GuestAddress(queue.avail + 2))
            .unwrap();
        head
    }

    /// Tells the backend queue `q` has new requests.
    pub fn kick(&self, q: usize) {
        self.queues[q].kick.write(1).unwrap();
    }

    /// Waits until `count` more chains are used on queue `q`; returns (head, used length) of each.
    pub fn wait_used(&mut self, q: usize, count: usize, timeout: Duration) -> Vec<(u16, u32)> {
        let started = Instant::now();
        let mut out = Vec::new();
        let queue = &mut self.queues[q];
        while out.len() < count {
            let used_idx: u16 = self.mem.read_obj(GuestAddress(queue.used + 2)).unwrap();
            while queue.last_used != used_idx && out.len() < count {
                let at = queue.used + 4 + u64::from(queue.last_used % queue.size) * 8;
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id as u16, len));
                queue.last_used = queue.last_used.wrapping_add(1);
            }
            if out.len() < count {
                assert!(
                    started.elapsed() < timeout,
                    "queue {q}: {} of {count} requests completed",
                    out.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        out
    }

    /// Writes a request header at `addr`.
    pub fn header(&self, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    pub fn status(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Submits one request made of header, data descriptors and status on queue `q` and waits for it;
    /// returns (status, used length). `slot` separates the memory of concurrent requests.
    pub fn request(
        &mut self,
        q: usize,
        slot: u64,
        kind: u32,
        sector: u64,
        data: &[(u64, u32)],
        device_writes: bool,
    ) -> (u8, u32) {
        let base = DATA_BASE + slot * 0x4_0000;
        self.header(base, kind, sector);
        let status = base + 0x10;
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let mut chain = vec![d(base, 16, false)];
        chain.extend(data.iter().map(|&(a, l)| d(a, l, device_writes)));
        chain.push(d(status, 1, true));
        self.push_chain(q, &chain);
        self.kick(q);
        let used = self.wait_used(q, 1, Duration::from_secs(20));
        (self.status(status), used[0].1)
    }

    /// The address of slot `slot`'s data buffer (up to 0x3_0000 bytes).
    pub fn buffer(slot: u64) -> u64 {
        DATA_BASE + slot * 0x4_0000 + 0x1000
    }

    pub fn mem_write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Reads `len` bytes at `offset` of `image` through blk (read-only, shared lock).
pub fn image_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let disk = open_disk_file(
        &DiskFileParams::new(image)
            .read_only(true)
            .lock(blk_factory::LockMode::None),
    )
    .unwrap();
    let mut v = vec![0u8; len];
    disk.read_exact_at(offset, &mut v).unwrap();
    v
}

pub fn raw() -> ImageFormat {
    ImageFormat::RAW
}

pub fn qcow2() -> ImageFormat {
    ImageFormat::by_name("qcow2").unwrap()
}
