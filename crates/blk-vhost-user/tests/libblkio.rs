//! A second client written by others: libblkio's Rust crate (`blkio`, driver `virtio-blk-vhost-user`) drives
//! the backend through reads, writes, flush, discard and write-zeroes on two queues, for every format; the
//! images QEMU checks check clean afterwards and qemu-io reads the data back.
//!
//! The buffers are a libblkio memory region (a memfd); the test fills and reads it through
//! `/proc/self/fd/<fd>` with positioned I/O, and checks every request by its effect, so it needs no `unsafe`.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blk_factory::{open_disk_file, DiskFileParams, ImageFormat, Secret};
use blk_vhost_user::{BlkOptions, StopHandle, VhostUserBlk};
use blkio::{Blkio, Blkioq, ReqFlags};

const MIB: u64 = 1 << 20;

/// Stops the server when dropped, so a failing assertion ends the test instead of leaving the server thread
/// (and the scope waiting for it) running.
struct StopOnDrop<'a>(&'a StopHandle);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A libblkio connection with one memory region.
struct Client {
    _blkio: Blkio,
    queues: Vec<Blkioq>,
    region: blkio::MemoryRegion,
    memory: File,
}

impl Client {
    fn connect(socket: &Path, queues: i32) -> Client {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").unwrap();
        blkio.set_str("path", socket.to_str().unwrap()).unwrap();
        blkio.connect().unwrap();
        blkio.set_i32("num-queues", queues).unwrap();
        let started = blkio.start().unwrap();
        let region = blkio.alloc_mem_region(4 << 20).unwrap();
        blkio.map_mem_region(&region).unwrap();
        let memory = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", region.fd))
            .unwrap();
        Client {
            _blkio: blkio,
            queues: started.queues,
            region,
            memory,
        }
    }

    /// Address of byte `at` of the region, as libblkio takes it.
    fn addr(&self, at: usize) -> usize {
        self.region.addr + at
    }

    fn fill(&self, at: usize, len: usize, byte: u8) {
        self.memory
            .write_all_at(&vec![byte; len], self.region.fd_offset as u64 + at as u64)
            .unwrap();
    }

    fn bytes(&self, at: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.memory
            .read_exact_at(&mut v, self.region.fd_offset as u64 + at as u64)
            .unwrap();
        v
    }

    /// Waits for `n` completions on queue `q`. The completions are not read (that would take `unsafe` on
    /// libblkio's `MaybeUninit` array): every request's effect is checked by reading the data back instead, and
    /// reads fill a buffer first poisoned with 0xee.
    fn wait(&mut self, q: usize, n: usize) {
        let mut done = 0;
        let mut completions: Vec<MaybeUninit<blkio::Completion>> =
            (0..n).map(|_| MaybeUninit::uninit()).collect();
        while done < n {
            done += self.queues[q]
                .do_io(&mut completions[done..], n - done, None, None)
                .unwrap();
        }
    }

    fn read(&mut self, q: usize, offset: u64, at: usize, len: usize) {
        self.fill(at, len, 0xee);
        let addr = self.addr(at) as *mut u8;
        self.queues[q].read(offset, addr, len, 1, ReqFlags::empty());
        self.wait(q, 1);
    }

    fn write(&mut self, q: usize, offset: u64, at: usize, len: usize) {
        let addr = self.addr(at) as *const u8;
        self.queues[q].write(offset, addr, len, 2, ReqFlags::empty());
        self.wait(q, 1);
    }
}

fn qemu(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The secret of the encrypted case, as qemu-img and qemu-io take it.
const SECRET: &str = "secret,id=s0,data=blk-vhost-user";

/// qemu-io `commands` on the image: `-f FORMAT IMAGE`, or for the encrypted case the secret and
/// `--image-opts ...,encrypt.key-secret=s0`.
fn qemu_io(format: &str, encrypted: bool, image: &str, commands: &[&str]) -> String {
    let opts = format!("driver=qcow2,file.filename={image},encrypt.key-secret=s0");
    let mut args = vec!["qemu-io"];
    if encrypted {
        args.extend(["--object", SECRET, "--image-opts"]);
    } else {
        args.extend(["-f", format]);
    }
    for c in commands {
        args.extend(["-c", *c]);
    }
    args.push(if encrypted { &opts } else { image });
    qemu(&args)
}

fn run_format(format: &str, encrypted: bool) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join(format!("disk.{format}"));
    let image_s = image.to_str().unwrap();
    if encrypted {
        qemu(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            SECRET,
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            image_s,
            "32M",
        ]);
        qemu_io(format, true, image_s, &["write -P 0x11 0 8M"]);
    } else if format == "qcow2" {
        // On a backing file with data, so reads and partial writes go through it.
        let base = dir.path().join("base.qcow2");
        let base_s = base.to_str().unwrap();
        qemu(&["qemu-img", "create", "-q", "-f", "qcow2", base_s, "32M"]);
        qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8M", base_s]);
        qemu(&[
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_s, image_s,
        ]);
    } else {
        qemu(&["qemu-img", "create", "-q", "-f", format, image_s, "32M"]);
        qemu(&["qemu-io", "-f", format, "-c", "write -P 0x11 0 8M", image_s]);
    }
    let socket = dir.path().join("vhost.sock");
    let params = DiskFileParams::new(&image)
        .format(ImageFormat::by_name(format))
        .named_images(blk_factory::NamedImagePolicy::AllowRecordedFormat)
        .key_secret(encrypted.then(|| Secret::new(b"blk-vhost-user".to_vec())));
    let disk = open_disk_file(&params).unwrap();
    let options = BlkOptions {
        num_queues: 2,
        ..BlkOptions::default()
    };
    let device = VhostUserBlk::new(disk, &options).unwrap();
    let stop = StopHandle::new().unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| device.serve(&socket, &stop));
        let _stop_on_panic = StopOnDrop(&stop);
        while !socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut c = Client::connect(&socket, 2);
        assert_eq!(c.queues.len(), 2);
        // Reads of the image's data, on both queues.
        c.read(0, 0, 0, 65536);
        assert_eq!(c.bytes(0, 65536), vec![0x11; 65536]);
        c.read(1, 8 * MIB - 4096, 0, 8192);
        let back = c.bytes(0, 8192);
        assert_eq!(
            (&back[..4096], &back[4096..]),
            (&[0x11u8; 4096][..], &[0u8; 4096][..])
        );
        // Writes: a partial cluster over the backing data and a large one, each queue, then read back.
        c.fill(MIB as usize, 4096, 0xa1);
        c.write(0, MIB + 512 * 3, MIB as usize, 4096);
        c.fill(MIB as usize, MIB as usize, 0xb2);
        c.write(1, 16 * MIB, MIB as usize, MIB as usize);
        c.read(1, MIB + 512 * 3, 2 * MIB as usize, 4096);
        assert_eq!(c.bytes(2 * MIB as usize, 4096), vec![0xa1; 4096]);
        c.read(0, 16 * MIB, 2 * MIB as usize, MIB as usize);
        assert_eq!(
            c.bytes(2 * MIB as usize, MIB as usize),
            vec![0xb2; MIB as usize]
        );
        // Several requests in flight on one queue.
        for i in 0..32u64 {
            let at = (i as usize) * 4096;
            c.fill(at, 4096, i as u8 + 1);
            let addr = c.addr(at) as *const u8;
            c.queues[0].write(
                24 * MIB + i * 4096,
                addr,
                4096,
                i as usize,
                ReqFlags::empty(),
            );
        }
        c.wait(0, 32);
        // Flush, write-zeroes (with and without unmapping), discard.
        c.queues[0].flush(3, ReqFlags::empty());
        c.wait(0, 1);
        c.queues[1].write_zeroes(2 * MIB, MIB, 4, ReqFlags::empty());
        c.wait(1, 1);
        c.queues[1].write_zeroes(3 * MIB, 64 * 1024, 5, ReqFlags::NO_UNMAP);
        c.wait(1, 1);
        c.read(1, 2 * MIB, 0, MIB as usize);
        assert_eq!(c.bytes(0, MIB as usize), vec![0u8; MIB as usize]);
        c.queues[0].discard(20 * MIB, MIB, 6, ReqFlags::empty());
        c.wait(0, 1);
        c.queues[0].flush(7, ReqFlags::empty());
        c.wait(0, 1);
        drop(c);
        stop.stop();
        server.join().unwrap().unwrap();
    });
    drop(device);
    if encrypted {
        let opts = format!("driver=qcow2,file.filename={image_s},encrypt.key-secret=s0");
        qemu(&[
            "qemu-img",
            "check",
            "-q",
            "--object",
            SECRET,
            "--image-opts",
            &opts,
        ]);
    } else if matches!(format, "qcow2" | "vhdx") {
        qemu(&["qemu-img", "check", "-q", "-f", format, image_s]);
    }
    let reads = qemu_io(
        format,
        encrypted,
        image_s,
        &[
            "read -P 0xa1 1050112 4096",
            "read -P 0xb2 16M 1M",
            "read -P 0x0 2M 1M",
            "read -P 0x11 4M 1M",
            "read -P 0x20 25292800 4096",
        ],
    );
    assert!(!reads.contains("failed"), "{format}: {reads}");
}

#[test]
fn libblkio_drives_every_format() {
    for format in ["raw", "qcow2", "vpc", "vhdx"] {
        run_format(format, false);
    }
}

/// A LUKS-encrypted QCOW2 (its secret given to the open), through the same requests; qemu-io decrypts what
/// the guest wrote.
#[test]
fn libblkio_drives_an_encrypted_qcow2() {
    run_format("qcow2", true);
}
