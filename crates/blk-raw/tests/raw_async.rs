//! Raw's async queues (`MappedQueue`s over `Raw`) on blk-core's `SyncHostBackend`: batches at depth 32 equal the
//! synchronous path and qemu-io's result of the same writes, guest memory is read and written in place, and
//! O_DIRECT requests go to the kernel as they are (aligned) or fail alone (misaligned).

mod common;

use std::sync::Arc;

use blk_core::{
    AsyncDiskFile, AsyncIo, DiskFile, ErrorKind, HostQueueBackend, IoBuf, IoBufMut, MappedQueue,
    Mapper, Request, RequestFlags, RequestOp, SyncHostBackend,
};
use common::*;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const SIZE: u64 = 4 << 20;
const DEPTH: usize = 32;

type Memory = GuestMemoryMmap<AtomicBitmap>;

fn guest_memory(len: usize) -> Memory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).expect("guest memory")
}

/// Guest memory at `addr` as a read buffer for the queue.
fn guest_mut(memory: &Memory, addr: u64, len: usize) -> IoBufMut<'static> {
    let slice = memory
        .get_slice(GuestAddress(addr), len)
        .expect("in guest memory");
    let buf = IoBufMut::from(slice);
    // SAFETY: the guest memory is created before and dropped after every queue of the test, and each request's
    // range is not touched by anything else until its completion has been reaped.
    unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), buf.len()) }
}

/// Guest memory at `addr` as a write buffer for the queue.
fn guest(memory: &Memory, addr: u64, len: usize) -> IoBuf<'static> {
    guest_mut(memory, addr, len).as_io_buf()
}

fn guest_bytes(memory: &Memory, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    memory
        .read_slice(&mut out, GuestAddress(addr))
        .expect("in guest memory");
    out
}

/// Deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One guest write of the scenario: `len` bytes of `byte` at `offset` (qemu-io `write -P`), or zeroes.
#[derive(Debug, Clone, Copy)]
struct Write {
    offset: u64,
    len: u64,
    byte: u8,
    zeroes: bool,
}

/// Non-overlapping writes, `DEPTH` per batch.
fn scenario(batches: usize) -> Vec<Vec<Write>> {
    let mut rng = Rng(0x1234_5678);
    (0..batches)
        .map(|b| {
            let slot = SIZE / DEPTH as u64;
            (0..DEPTH as u64)
                .map(|i| {
                    let len = (1 + rng.below(16)) * 512;
                    let offset = i * slot + rng.below((slot - len) / 512) * 512;
                    Write {
                        offset,
                        len,
                        byte: (b * DEPTH) as u8 ^ i as u8 | 1,
                        zeroes: rng.below(8) == 0,
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn batches_equal_the_sync_path_and_qemu_io() {
    let _serial = serial();
    let dir = tempdir();
    let memory = guest_memory(DEPTH * (8 << 10));
    let ours = new_image(dir.path(), "ours.img", SIZE);
    let batches = scenario(6);
    {
        let disk = open_disk(&ours, rw()).unwrap();
        let raw = Mapper::duplicate(&*disk).unwrap();
        let mut queue = MappedQueue::new(raw, &SyncHostBackend, DEPTH as u32).unwrap();
        assert_eq!(queue.ring_depth(), DEPTH as u32);
        for (b, writes) in batches.iter().enumerate() {
            let mut lists: Vec<Vec<IoBuf<'static>>> = Vec::new();
            for (i, w) in writes.iter().enumerate() {
                let addr = i as u64 * (8 << 10);
                memory
                    .write_slice(&vec![w.byte; w.len as usize], GuestAddress(addr))
                    .unwrap();
                let cut = (w.len / 2) as usize;
                lists.push(vec![
                    guest(&memory, addr, cut),
                    guest(&memory, addr + cut as u64, w.len as usize - cut),
                ]);
            }
            let batch: Vec<Request<'_>> = writes
                .iter()
                .zip(&lists)
                .enumerate()
                .map(|(i, (w, bufs))| {
                    let id = (b * DEPTH + i) as u64;
                    let op = if w.zeroes {
                        RequestOp::WriteZeroes {
                            offset: w.offset,
                            len: w.len,
                        }
                    } else {
                        RequestOp::Write {
                            offset: w.offset,
                            bufs,
                        }
                    };
                    let flags = if i == 3 {
                        RequestFlags::FUA
                    } else {
                        RequestFlags::NONE
                    };
                    Request::new(id, op).with_flags(flags)
                })
                .chain([Request::new(1000 + b as u64, RequestOp::Flush)])
                .collect();
            for c in complete(&mut queue, &batch) {
                let want = match batch
                    .iter()
                    .find(|r| r.user_data == c.user_data)
                    .map(|r| r.op)
                {
                    Some(RequestOp::Write { bufs, .. }) => {
                        bufs.iter().map(|b| b.len() as u64).sum()
                    }
                    _ => 0,
                };
                assert_eq!(c.result.unwrap(), want);
            }
        }

        // Reads at depth 32 (scattered, split buffers) equal the synchronous path.
        let sync = read_all(&disk);
        let mut rng = Rng(99);
        for round in 0..4 {
            let reads: Vec<(u64, usize)> = (0..DEPTH)
                .map(|_| {
                    (
                        rng.below(SIZE / 512 - 16) * 512,
                        (1 + rng.below(16) as usize) * 512,
                    )
                })
                .collect();
            let lists: Vec<Vec<IoBufMut<'static>>> = reads
                .iter()
                .enumerate()
                .map(|(i, &(_, len))| {
                    let addr = i as u64 * (8 << 10);
                    vec![
                        guest_mut(&memory, addr, 512),
                        guest_mut(&memory, addr + 512, len - 512),
                    ]
                    .into_iter()
                    .filter(|b| !b.is_empty())
                    .collect()
                })
                .collect();
            let batch: Vec<Request<'_>> = reads
                .iter()
                .zip(&lists)
                .enumerate()
                .map(|(i, (&(offset, _), bufs))| {
                    read_request((round * DEPTH + i) as u64, offset, bufs)
                })
                .collect();
            for c in complete(&mut queue, &batch) {
                let i = c.user_data as usize - round * DEPTH;
                let (offset, len) = reads[i];
                assert_eq!(c.result.unwrap(), len as u64);
                let got = guest_bytes(&memory, i as u64 * (8 << 10), len);
                assert!(
                    got == sync[offset as usize..offset as usize + len],
                    "read {i} differs"
                );
            }
        }
        // Reads marked guest memory dirty (writes through raw pointers bypass vm-memory's tracking).
        let region = memory.find_region(GuestAddress(0)).unwrap();
        assert!(region.bitmap().dirty_at(0));
    }

    if !have_qemu() {
        return;
    }
    let theirs = new_image(dir.path(), "theirs.img", SIZE);
    let commands: Vec<String> = batches
        .iter()
        .flatten()
        .map(|w| {
            if w.zeroes {
                format!("write -z {} {}", w.offset, w.len)
            } else {
                format!("write -P {} {} {}", w.byte, w.offset, w.len)
            }
        })
        .collect();
    qemu_io("raw", &theirs, &commands);
    qemu_compare("raw", &ours, "raw", &theirs);
}

#[test]
fn guest_memory_through_the_sync_path_and_the_queue() {
    let dir = tempdir();
    let path = new_image(dir.path(), "g.img", 1 << 20);
    let memory = guest_memory(64 << 10);
    let data = pattern(5, 12 << 10);
    memory.write_slice(&data, GuestAddress(0)).unwrap();
    let disk = open_disk(&path, rw()).unwrap();
    // Synchronous: straight from guest memory, three segments.
    let slices: Vec<IoBuf<'_>> = [(0, 1000), (1000, 5000), (6000, 6288)]
        .iter()
        .map(|&(a, l)| IoBuf::from(memory.get_slice(GuestAddress(a), l).unwrap()))
        .collect();
    disk.write_at(4096, &slices).unwrap();
    let back: Vec<IoBufMut<'_>> = [(16384, 7000), (23384, 5288)]
        .iter()
        .map(|&(a, l)| IoBufMut::from(memory.get_slice(GuestAddress(a), l).unwrap()))
        .collect();
    disk.read_at(4096, &back).unwrap();
    assert_eq!(guest_bytes(&memory, 16384, 12 << 10), data);

    // Through the queue, from the image's own create_async_io.
    let mut queue = disk.create_async_io(8).unwrap();
    let w = [guest(&memory, 0, 4096), guest(&memory, 4096, 8192)];
    let r = [guest_mut(&memory, 32768, 12 << 10)];
    let done = complete(&mut *queue, &[write_request(1, 65536, &w)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &(12 << 10));
    let done = complete(&mut *queue, &[read_request(2, 65536, &r)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &(12 << 10));
    assert_eq!(guest_bytes(&memory, 32768, 12 << 10), data);
    drop(queue);
    let mut sync = vec![0u8; 12 << 10];
    disk.read_exact_at(65536, &mut sync).unwrap();
    assert_eq!(sync, data);
}

#[test]
fn the_partial_last_sector_reads_as_zeros() {
    let dir = tempdir();
    let path = dir.path().join("odd.img");
    std::fs::write(&path, vec![7u8; 1000]).unwrap();
    let disk = open_disk(&path, rw()).unwrap();
    assert_eq!(disk.logical_size(), 1024);
    let memory = guest_memory(4096);
    memory.write_slice(&[0xee; 1024], GuestAddress(0)).unwrap();
    let raw = Mapper::duplicate(&*disk).unwrap();
    let mut queue = MappedQueue::new(raw, &SyncHostBackend, 4).unwrap();
    let r = [guest_mut(&memory, 0, 1024)];
    let done = complete(&mut queue, &[read_request(1, 0, &r)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &1024);
    let got = guest_bytes(&memory, 0, 1024);
    assert!(got[..1000].iter().all(|&b| b == 7) && got[1000..].iter().all(|&b| b == 0));
    // Past the end: refused alone.
    let done = complete(&mut queue, &[read_request(2, 512, &r)]);
    assert_eq!(
        done[0].result.as_ref().unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
}

#[test]
fn o_direct_aligned_requests_go_straight_through() {
    let dir = tempdir();
    let path = new_image(dir.path(), "d.img", 1 << 20);
    let Ok(mut disk) = open_disk(&path, direct()) else {
        println!("note: O_DIRECT refused here, skipping");
        return;
    };
    let backend: Arc<dyn HostQueueBackend> = Arc::new(SyncHostBackend);
    disk.set_io_backend(backend);
    assert_eq!(disk.io_backend().name(), "sync");
    let memory = guest_memory(64 << 10);
    let data = pattern(8, 8192);
    memory.write_slice(&data, GuestAddress(0)).unwrap();
    let mut queue = disk.try_clone_async().unwrap().create_async_io(4).unwrap();
    // Guest memory is page-aligned: both requests go to the kernel as they are.
    let w = [guest(&memory, 0, 8192)];
    let r = [
        guest_mut(&memory, 16384, 4096),
        guest_mut(&memory, 40960, 4096),
    ];
    let done = complete(&mut *queue, &[write_request(1, 8192, &w)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &8192);
    let done = complete(&mut *queue, &[read_request(2, 8192, &r)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &8192);
    let mut got = guest_bytes(&memory, 16384, 4096);
    got.extend(guest_bytes(&memory, 40960, 4096));
    assert_eq!(got, data);
    // Misaligned buffer, offset or length: each fails alone with a clear error; the queue keeps working.
    let odd = [guest_mut(&memory, 1, 4096)];
    let short = [guest_mut(&memory, 0, 100)];
    let batch = [
        read_request(3, 0, &odd),
        read_request(4, 0, &short),
        read_request(5, 8192, &r),
    ];
    let done = complete(&mut *queue, &batch);
    for c in &done[..2] {
        let e = c.result.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("O_DIRECT"), "{e}");
        assert_eq!(e.path(), Some(path.as_path()));
    }
    assert!(done[0]
        .result
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("buffer at 0x"));
    assert_eq!(done[2].result.as_ref().unwrap(), &8192);
    // The synchronous path still bounces what the queue refuses.
    let mut unaligned = vec![0u8; 100];
    disk.read_exact_at(8192, &mut unaligned).unwrap();
    assert_eq!(unaligned, data[..100]);
}

/// One queue's share of the multi-queue test: random batches of writes and reads in its own quarter of the
/// disk, checked against its own model, which it returns.
fn queue_worker(disk: &dyn AsyncDiskFile, quarter: u64, seed: u64) -> Vec<u8> {
    let region = SIZE / 4;
    let base = quarter * region;
    let memory = guest_memory(DEPTH * (8 << 10));
    let mut queue = disk.create_async_io(DEPTH as u32).unwrap();
    let mut model = read_all(disk)[base as usize..(base + region) as usize].to_vec();
    let mut rng = Rng(seed);
    for round in 0..12u64 {
        // Non-overlapping slots of the region, one request each: a write or a read.
        let slot = region / DEPTH as u64;
        let plan: Vec<(u64, usize, bool)> = (0..DEPTH as u64)
            .map(|i| {
                let len = (1 + rng.below(16)) * 512;
                let offset = i * slot + rng.below((slot - len) / 512 + 1) * 512;
                (offset, len as usize, rng.below(2) == 0)
            })
            .collect();
        let mut reads: Vec<Vec<IoBufMut<'static>>> = Vec::new();
        let mut writes: Vec<Vec<IoBuf<'static>>> = Vec::new();
        for (i, &(offset, len, write)) in plan.iter().enumerate() {
            let addr = i as u64 * (8 << 10);
            if write {
                let data = pattern(seed ^ round << 8 ^ i as u64, len);
                memory.write_slice(&data, GuestAddress(addr)).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
                writes.push(vec![guest(&memory, addr, len)]);
            } else {
                reads.push(vec![guest_mut(&memory, addr, len)]);
            }
        }
        let (mut r, mut w) = (reads.iter(), writes.iter());
        let batch: Vec<Request<'_>> = plan
            .iter()
            .enumerate()
            .map(|(i, &(offset, _, write))| {
                let offset = base + offset;
                let op = match write {
                    true => RequestOp::Write {
                        offset,
                        bufs: w.next().unwrap(),
                    },
                    false => RequestOp::Read {
                        offset,
                        bufs: r.next().unwrap(),
                    },
                };
                Request::new(i as u64, op)
            })
            .collect();
        for c in complete(&mut *queue, &batch) {
            let (offset, len, write) = plan[c.user_data as usize];
            assert_eq!(c.result.unwrap(), len as u64);
            if !write {
                let got = guest_bytes(&memory, c.user_data * (8 << 10), len);
                assert!(got == model[offset as usize..offset as usize + len]);
            }
        }
    }
    model
}

#[test]
fn four_queues_on_one_disk_equal_a_model() {
    let dir = tempdir();
    let path = new_image(dir.path(), "mq.img", SIZE);
    let disk = open_disk(&path, rw()).unwrap();
    let models: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4u64)
            .map(|q| {
                let handle = disk.try_clone_async().unwrap();
                scope.spawn(move || queue_worker(&*handle, q, 17 + q))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(read_all(&disk) == models.concat());
}
