//! A VMM's view: guest memory (vm-memory `GuestMemoryMmap` with dirty tracking) read and written in place,
//! synchronously and through an `AsyncIo` queue, on a disk from the factory.

use blk_core::{IoBuf, IoBufMut, Request, RequestFlags, RequestOp};
use blk_factory::{create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat};
use blk_test_support::reap;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

type GuestMemory = GuestMemoryMmap<AtomicBitmap>;

const PAGE: usize = 4096;

fn guest_memory() -> &'static GuestMemory {
    // Guest memory lives as long as the VM: leaked here, so its slices are 'static like a VMM's.
    Box::leak(Box::new(
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
    ))
}

fn dirty(mem: &GuestMemory, addr: u64) -> bool {
    let region = mem.find_region(GuestAddress(addr)).unwrap();
    region
        .bitmap()
        .dirty_at(addr as usize - region.start_addr().0 as usize)
}

#[test]
fn guest_memory_is_read_and_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    create_disk_file(&CreateParams::new(&path, ImageFormat::RAW, Some(1 << 20))).unwrap();
    let disk = open_disk_file(&DiskFileParams::new(&path)).unwrap();
    let mem = guest_memory();

    // The guest's write request: two descriptors, scattered in guest memory.
    mem.write_slice(&[0x11; PAGE], GuestAddress(0x3000))
        .unwrap();
    mem.write_slice(&[0x22; 512], GuestAddress(0x8000)).unwrap();
    let src = [
        IoBuf::from(mem.get_slice(GuestAddress(0x3000), PAGE).unwrap()),
        IoBuf::from(mem.get_slice(GuestAddress(0x8000), 512).unwrap()),
    ];
    disk.write_at(65536, &src).unwrap();

    // The guest's read request into other pages, which the read must mark dirty for migration.
    assert!(!dirty(mem, 0x20000));
    let dst = [IoBufMut::from(
        mem.get_slice(GuestAddress(0x20000), PAGE + 512).unwrap(),
    )];
    disk.read_at(65536, &dst).unwrap();
    assert!(dirty(mem, 0x20000) && dirty(mem, 0x21000));
    let mut back = vec![0u8; PAGE + 512];
    mem.read_slice(&mut back, GuestAddress(0x20000)).unwrap();
    assert_eq!(&back[..PAGE], &[0x11; PAGE][..]);
    assert_eq!(&back[PAGE..], &[0x22; 512][..]);
}

#[test]
fn an_async_queue_serves_guest_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    create_disk_file(&CreateParams::new(&path, ImageFormat::RAW, Some(1 << 20))).unwrap();
    let disk = open_disk_file(&DiskFileParams::new(&path)).unwrap();
    let mem = guest_memory();
    mem.write_slice(&[0x5a; PAGE], GuestAddress(0x1000))
        .unwrap();

    let mut queue = disk.create_async_io(16).unwrap();
    let write = [IoBuf::from(
        mem.get_slice(GuestAddress(0x1000), PAGE).unwrap(),
    )];
    let read = [IoBufMut::from(
        mem.get_slice(GuestAddress(0x40000), PAGE).unwrap(),
    )];
    // Requests of one batch run in any order (as virtio's do): the read of the written page comes in a second
    // batch, after the write completed.
    queue
        .submit(&[
            Request::new(
                1,
                RequestOp::Write {
                    offset: 8192,
                    bufs: &write,
                },
            )
            .with_flags(RequestFlags::FUA),
            Request::new(
                3,
                RequestOp::WriteZeroes {
                    offset: 0,
                    len: 4096,
                },
            )
            .with_flags(RequestFlags::NO_UNMAP),
            Request::new(
                4,
                RequestOp::Discard {
                    offset: 1 << 19,
                    len: 1 << 16,
                },
            ),
            Request::new(
                5,
                RequestOp::Read {
                    offset: (1 << 20) - 512,
                    bufs: &read,
                },
            ),
        ])
        .unwrap();
    let mut done = reap(&mut *queue, 4);
    queue
        .submit(&[Request::new(
            2,
            RequestOp::Read {
                offset: 8192,
                bufs: &read,
            },
        )])
        .unwrap();
    done.extend(reap(&mut *queue, 1));
    done.sort_by_key(|c| c.user_data);
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), PAGE as u64);
    assert_eq!(*done[1].result.as_ref().unwrap(), PAGE as u64);
    assert!(done[2].result.is_ok() && done[3].result.is_ok());
    // The last read reaches past the end: an error for that request only, and the queue keeps working.
    let err = done[4].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), blk_core::ErrorKind::OutOfBounds);
    assert_eq!(err.errno(), 22, "EINVAL for the guest");

    let mut back = vec![0u8; PAGE];
    mem.read_slice(&mut back, GuestAddress(0x40000)).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
    queue.submit(&[Request::new(6, RequestOp::Flush)]).unwrap();
    assert!(reap(&mut *queue, 1)[0].result.is_ok());
}
