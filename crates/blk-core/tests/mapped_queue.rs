//! `MappedQueue` on the `SyncHostBackend` over a fake cluster-mapped image (`fake_image`): random batches
//! against an in-memory model, per-request errors, O_DIRECT alignment, backlog, flush barriers and drop with
//! I/O in flight.

mod fake_image;
mod queue_harness;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_core::{
    AsyncIo, ErrorKind, HostFile, HostOpenOptions, IoBuf, IoBufMut, LockMode, MappedQueue,
    Operation, Request, RequestFlags, RequestOp, SyncHostBackend,
};
use fake_image::{FakeMapper, FakeOptions, CLUSTER, SIZE};
use proptest::prelude::*;
use queue_harness::*;

#[derive(Debug, Clone)]
enum Step {
    Read {
        sector: u64,
        sectors: u64,
        split: usize,
    },
    Write {
        sector: u64,
        sectors: u64,
        split: usize,
        seed: u8,
        fua: bool,
    },
    Zeroes {
        sector: u64,
        sectors: u64,
        unmap: bool,
    },
    Discard {
        sector: u64,
        sectors: u64,
    },
    Flush,
    Reap(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let sector = 0..SIZE / 512;
    let sectors = 1..24u64;
    prop_oneof![
        4 => (sector.clone(), sectors.clone(), 0..12_288usize)
            .prop_map(|(sector, sectors, split)| Step::Read { sector, sectors, split }),
        4 => (sector.clone(), sectors.clone(), 0..12_288usize, any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(sector, sectors, split, seed, fua)| Step::Write { sector, sectors, split, seed, fua }),
        1 => (sector.clone(), sectors.clone(), any::<bool>())
            .prop_map(|(sector, sectors, unmap)| Step::Zeroes { sector, sectors, unmap }),
        1 => (sector, sectors).prop_map(|(sector, sectors)| Step::Discard { sector, sectors }),
        1 => Just(Step::Flush),
        2 => (0..8usize).prop_map(Step::Reap),
    ]
}

/// The request's guest range, clipped to the disk.
fn range(sector: u64, sectors: u64) -> (u64, u64) {
    let offset = sector * 512;
    (offset, (sectors * 512).min(SIZE - offset))
}

/// Runs one batch of steps; requests overlapping one in flight from an earlier batch drain the queue first,
/// requests overlapping one of the same batch are skipped.
fn run_batch(h: &mut Harness, steps: &[Step]) {
    let mut reap = 0;
    let mut ops: Vec<(u64, RequestOp<'static>, RequestFlags)> = Vec::new();
    let mut read_lists: Vec<Vec<IoBufMut<'static>>> = Vec::new();
    let mut write_lists: Vec<Vec<IoBuf<'static>>> = Vec::new();
    let mut batch_ranges: Vec<(u64, u64)> = Vec::new();
    let mut planned: Vec<(u64, InFlight, Option<usize>, bool)> = Vec::new();
    // Requests of this batch without buffers, recorded as in flight once the batch is submitted.
    let mut later: Vec<(u64, InFlight)> = Vec::new();
    for step in steps {
        let r = match step {
            Step::Read {
                sector, sectors, ..
            }
            | Step::Write {
                sector, sectors, ..
            }
            | Step::Zeroes {
                sector, sectors, ..
            }
            | Step::Discard { sector, sectors } => Some(range(*sector, *sectors)),
            Step::Flush => None,
            Step::Reap(n) => {
                reap += n;
                continue;
            }
        };
        if let Some((offset, len)) = r {
            if batch_ranges
                .iter()
                .any(|&r| cluster_overlap(r, (offset, len)))
            {
                continue;
            }
            if h.overlaps(offset, len) {
                h.drain();
            }
            batch_ranges.push((offset, len));
        }
        let id = h.id();
        let (o, l) = r.unwrap_or((0, 0));
        let (os, ls) = (o as usize, l as usize);
        let flight = |buf, expect| InFlight {
            buf,
            range: r,
            expect,
        };
        match step {
            Step::Read { split, .. } => {
                let mut buf = GuestBuf::new(ls, 0);
                read_lists.push(buf.bufs_mut(*split));
                let want = h.model[os..os + ls].to_vec();
                planned.push((
                    id,
                    flight(Some(buf), Expect::Read(want)),
                    Some(read_lists.len() - 1),
                    true,
                ));
            }
            Step::Write {
                split, seed, fua, ..
            } => {
                let mut buf = GuestBuf::filled(ls, *seed);
                h.model[os..os + ls].copy_from_slice(buf.bytes());
                write_lists.push(buf.bufs(*split));
                planned.push((
                    id,
                    flight(Some(buf), Expect::Bytes(l)),
                    Some(write_lists.len() - 1),
                    *fua,
                ));
            }
            Step::Zeroes { unmap, .. } => {
                h.model[os..os + ls].fill(0);
                let flags = if *unmap {
                    RequestFlags::NONE
                } else {
                    RequestFlags::NO_UNMAP
                };
                ops.push((id, RequestOp::WriteZeroes { offset: o, len: l }, flags));
                later.push((id, flight(None, Expect::Bytes(0))));
            }
            Step::Discard { .. } => {
                h.model[os..os + ls].fill(0);
                ops.push((
                    id,
                    RequestOp::Discard { offset: o, len: l },
                    RequestFlags::NONE,
                ));
                later.push((id, flight(None, Expect::Bytes(0))));
            }
            Step::Flush => {
                ops.push((id, RequestOp::Flush, RequestFlags::NONE));
                later.push((id, flight(None, Expect::Bytes(0))));
            }
            Step::Reap(_) => {}
        }
    }
    let mut batch: Vec<Request<'_>> = ops
        .iter()
        .map(|&(id, op, flags)| Request::new(id, op).with_flags(flags))
        .collect();
    for (id, flight, list, flag) in planned {
        let (offset, _) = flight.range.unwrap_or((0, 0));
        let request = match (&flight.expect, list) {
            (Expect::Read(_), Some(i)) => Request::new(
                id,
                RequestOp::Read {
                    offset,
                    bufs: &read_lists[i],
                },
            ),
            (_, Some(i)) => {
                let r = Request::new(
                    id,
                    RequestOp::Write {
                        offset,
                        bufs: &write_lists[i],
                    },
                );
                if flag {
                    r.with_flags(RequestFlags::FUA)
                } else {
                    r
                }
            }
            _ => unreachable!(),
        };
        // Interleave kinds a little: the position in the batch does not matter for non-overlapping requests.
        if id % 2 == 0 {
            batch.push(request)
        } else {
            batch.insert(0, request)
        }
        h.inflight.insert(id, flight);
    }
    h.inflight.extend(later);
    h.queue.submit(&batch).unwrap();
    h.reap(reap);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_batches_equal_the_model(
        batches in prop::collection::vec(prop::collection::vec(step(), 1..12), 1..8),
        depth in 1..40u32,
    ) {
        let mut h = Harness::new(FakeOptions::default(), depth);
        for steps in &batches {
            run_batch(&mut h, steps);
        }
        h.drain();
        prop_assert!(whole_disk(h.mapper.fake_disk()) == h.model, "disk differs from the model");
        h.mapper.shared().check_links();
    }
}

#[test]
fn bad_requests_fail_alone_and_the_queue_keeps_working() {
    let mut h = Harness::new(FakeOptions::default(), 8);
    let mut data = GuestBuf::filled(4096, 3);
    let mut back = GuestBuf::new(4096, 0);
    let (w, r) = (data.bufs(1000), back.bufs_mut(4096));
    let batch = [
        read_request(1, SIZE - 512, &r),
        write_request(2, SIZE, &w),
        Request::new(
            3,
            RequestOp::WriteZeroes {
                offset: SIZE,
                len: 1,
            },
        ),
        Request::new(
            4,
            RequestOp::Discard {
                offset: u64::MAX,
                len: 2,
            },
        ),
        write_request(5, 0, &w),
    ];
    let done = complete(&mut h.queue, &batch);
    assert!(h.queue.notifier().read().unwrap() >= 1);
    for c in &done[..4] {
        let e = c.result.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds, "{e}");
    }
    assert_eq!(
        done[0].result.as_ref().unwrap_err().operation(),
        Some(Operation::Read)
    );
    assert_eq!(done[4].result.as_ref().unwrap(), &4096);
    let done = complete(&mut h.queue, &[read_request(6, 0, &r)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &4096);
    assert_eq!(back.bytes(), data.bytes());
    h.mapper.shared().check_links();

    let mut ro = Harness::new(
        FakeOptions {
            read_only: true,
            ..FakeOptions::default()
        },
        4,
    );
    let batch = [
        write_request(1, 0, &w),
        Request::new(
            2,
            RequestOp::Discard {
                offset: 0,
                len: 512,
            },
        ),
        Request::new(
            3,
            RequestOp::WriteZeroes {
                offset: 0,
                len: 512,
            },
        ),
        read_request(4, 0, &r),
        Request::new(5, RequestOp::Flush),
    ];
    let done = complete(&mut ro.queue, &batch);
    for c in &done[..3] {
        assert_eq!(c.result.as_ref().unwrap_err().kind(), ErrorKind::ReadOnly);
    }
    assert_eq!(done[3].result.as_ref().unwrap(), &4096);
    assert!(back.bytes().iter().all(|&b| b == 0));
    assert_eq!(done[4].result.as_ref().unwrap(), &0);
}

#[test]
fn o_direct_needs_aligned_requests_and_bounces_misaligned_mappings() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(probe) = temp_file(&dir, true) else {
        eprintln!("skipped: the file system refuses O_DIRECT");
        return;
    };
    let alignment = probe.direct_io_alignment().expect("direct");
    drop(probe);
    let block = alignment.offset as u64;
    let mut data = GuestBuf::filled(8192, 9);
    let mut back = GuestBuf::new(8192, 0);
    for shift in [0, block / 2] {
        let options = FakeOptions {
            host_shift: shift,
            slow_clusters: false,
            ..FakeOptions::default()
        };
        let mut h = Harness::with_file(options, 8, true).expect("O_DIRECT worked a moment ago");
        let (w, r) = (data.bufs(4096), back.bufs_mut(4096));
        let done = complete(&mut h.queue, &[write_request(1, CLUSTER, &w)]);
        assert_eq!(done[0].result.as_ref().unwrap(), &8192);
        let done = complete(&mut h.queue, &[read_request(2, CLUSTER, &r)]);
        assert_eq!(done[0].result.as_ref().unwrap(), &8192);
        assert_eq!(back.bytes(), data.bytes());
        h.mapper.shared().check_links();
        // Misaligned requests: refused one by one, the aligned one beside them works.
        let mut odd = GuestBuf::new(4096, 1);
        let odd_bufs = odd.bufs_mut(4096);
        let mut batch = vec![
            read_request(3, CLUSTER, &odd_bufs),
            read_request(4, CLUSTER, &r),
        ];
        if alignment.offset > 1 {
            batch.push(read_request(5, CLUSTER + block / 2, &r));
        }
        let done = complete(&mut h.queue, &batch);
        let e = done[0].result.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is not aligned to"), "{e}");
        assert!(e.to_string().contains("O_DIRECT"), "{e}");
        assert_eq!(done[1].result.as_ref().unwrap(), &8192);
        if alignment.offset > 1 {
            assert_eq!(
                done[2].result.as_ref().unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
        }
    }
}

#[test]
fn a_batch_larger_than_the_ring_completes() {
    let mut h = Harness::new(FakeOptions::default(), 2);
    let mut bufs: Vec<GuestBuf> = (0..32).map(|i| GuestBuf::filled(4096, i as u8)).collect();
    let lists: Vec<Vec<IoBuf<'static>>> = bufs.iter_mut().map(|b| b.bufs(700)).collect();
    let batch: Vec<Request<'_>> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| write_request(i as u64, i as u64 * 4096, l))
        .collect();
    assert!(complete(&mut h.queue, &batch)
        .iter()
        .all(|c| c.result.is_ok()));
    let mut backs: Vec<GuestBuf> = (0..32).map(|_| GuestBuf::new(4096, 0)).collect();
    let lists: Vec<Vec<IoBufMut<'static>>> = backs.iter_mut().map(|b| b.bufs_mut(1500)).collect();
    let batch: Vec<Request<'_>> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| read_request(i as u64, i as u64 * 4096, l))
        .collect();
    assert!(complete(&mut h.queue, &batch)
        .iter()
        .all(|c| c.result.is_ok()));
    for (b, back) in bufs.iter().zip(&backs) {
        assert_eq!(b.bytes(), back.bytes());
    }
    assert_eq!(h.queue.ring_depth(), 2);
    h.mapper.shared().check_links();
}

#[test]
fn a_flush_completes_after_the_requests_before_it() {
    let mut h = Harness::new(FakeOptions::default(), 8);
    let mut data = GuestBuf::filled(4096, 5);
    let w = data.bufs(4096);
    // Cluster 2 is slow: the write runs on the pool, the flush waits for it.
    let batch = [
        write_request(1, 2 * CLUSTER, &w),
        Request::new(2, RequestOp::Flush),
        write_request(3, 4 * CLUSTER, &w),
        Request::new(4, RequestOp::Flush),
    ];
    h.queue.submit(&batch).unwrap();
    let mut order = Vec::new();
    let started = Instant::now();
    while order.len() < 4 {
        match h.queue.next_completed_request() {
            Some(c) => {
                assert!(c.result.is_ok());
                order.push(c.user_data);
            }
            None => {
                assert!(started.elapsed() < Duration::from_secs(30), "queue hangs");
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
    let pos = |id| order.iter().position(|&x| x == id).unwrap();
    assert!(
        pos(1) < pos(2) && pos(2) < pos(4) && pos(3) < pos(4),
        "{order:?}"
    );
    assert_eq!(h.mapper.shared().flushes.load(Ordering::SeqCst), 2);
}

/// FUA writes of one batch share flushes: their data goes to the host queue as any write's, and each completes
/// only after a flush that started once its data was written; the batch needs one or two flushes, not one per
/// write.
#[test]
fn fua_writes_of_a_batch_share_flushes() {
    let mut h = Harness::new(
        FakeOptions {
            slow_clusters: false,
            ..FakeOptions::default()
        },
        32,
    );
    let mut data: Vec<GuestBuf> = (0..16).map(|i| GuestBuf::filled(4096, i + 1)).collect();
    let lists: Vec<Vec<IoBuf<'static>>> = data.iter_mut().map(|b| b.bufs(4096)).collect();
    let batch: Vec<Request<'_>> = lists
        .iter()
        .enumerate()
        .map(|(i, w)| write_request(i as u64, i as u64 * CLUSTER, w).with_flags(RequestFlags::FUA))
        .collect();
    h.queue.submit(&batch).unwrap();
    let started = Instant::now();
    let mut done = 0;
    while done < batch.len() {
        match h.queue.next_completed_request() {
            Some(c) => {
                assert!(c.result.is_ok(), "{:?}", c.result);
                // Durable: a flush ran after its data was written.
                assert!(h.mapper.shared().flushes.load(Ordering::SeqCst) >= 1);
                done += 1;
            }
            None => {
                assert!(started.elapsed() < Duration::from_secs(30), "queue hangs");
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
    let flushes = h.mapper.shared().flushes.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&flushes),
        "{flushes} flushes for 16 FUA writes"
    );
    assert_eq!(h.queue.in_flight(), 0);
    let disk = whole_disk(h.mapper.fake_disk());
    for (i, buf) in data.iter().enumerate() {
        let at = i * CLUSTER as usize;
        assert!(disk[at..at + 4096] == *buf.bytes(), "write {i}");
    }
    // A FUA write of nothing is a flush.
    let done = complete(
        &mut h.queue,
        &[write_request(99, 0, &[]).with_flags(RequestFlags::FUA)],
    );
    assert_eq!(done[0].result.as_ref().ok(), Some(&0));
    assert_eq!(
        h.mapper.shared().flushes.load(Ordering::SeqCst),
        flushes + 1
    );
}

#[test]
fn failed_links_and_host_errors_fail_their_request() {
    let mut h = Harness::new(
        FakeOptions {
            slow_clusters: false,
            ..FakeOptions::default()
        },
        8,
    );
    let mut data = GuestBuf::filled(4096, 5);
    let w = data.bufs(4096);
    h.mapper.shared().fail_finish.store(true, Ordering::SeqCst);
    let done = complete(&mut h.queue, &[write_request(1, 0, &w)]);
    assert_eq!(
        done[0].result.as_ref().unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    h.mapper.shared().fail_finish.store(false, Ordering::SeqCst);
    h.mapper.shared().check_links();
    assert!(whole_disk(h.mapper.fake_disk()).iter().all(|&b| b == 0));

    // A host file the backend cannot write: the errno comes back with the file, host offset and operation.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("image");
    drop(temp_file(&dir, false));
    let options = HostOpenOptions {
        read_only: true,
        lock: LockMode::None,
        ..HostOpenOptions::default()
    };
    let file = HostFile::open(&path, options).unwrap();
    let mapper = Arc::new(FakeMapper::new(
        file,
        FakeOptions {
            slow_clusters: false,
            ..FakeOptions::default()
        },
    ));
    let mut queue = MappedQueue::new(mapper.clone(), &SyncHostBackend, 4).unwrap();
    let done = complete(&mut queue, &[write_request(1, CLUSTER, &w)]);
    let e = done[0].result.as_ref().unwrap_err();
    assert_eq!(e.errno(), libc::EBADF, "{e}");
    assert_eq!(e.path(), Some(path.as_path()));
    assert_eq!(e.operation(), Some(Operation::Write));
    assert_eq!(e.offset(), Some(0));
    drop(queue);
    mapper.shared().check_links();
}

#[test]
fn dropping_a_queue_with_io_in_flight_finishes_it() {
    let mut data: Vec<GuestBuf> = (0..16).map(|i| GuestBuf::filled(4096, i)).collect();
    let mut h = Harness::new(FakeOptions::default(), 4);
    h.mapper
        .fake_disk()
        .write_all_at(CLUSTER, &[1; 4096])
        .unwrap();
    let lists: Vec<Vec<IoBuf<'static>>> = data.iter_mut().map(|b| b.bufs(100)).collect();
    let mut batch: Vec<Request<'_>> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| write_request(i as u64, i as u64 * 2 * CLUSTER, l))
        .collect();
    batch.push(Request::new(99, RequestOp::Flush));
    batch.push(Request::new(
        100,
        RequestOp::Discard {
            offset: CLUSTER,
            len: 512,
        },
    ));
    h.queue.submit(&batch).unwrap();
    let Harness { queue, mapper, .. } = h;
    drop(queue);
    mapper.shared().check_links();
    assert!(mapper.shared().links_issued() > 0);
    let all = whole_disk(mapper.fake_disk());
    let c = CLUSTER as usize;
    assert!(all[c..c + 512].iter().all(|&b| b == 0));
    assert!(all[c + 512..2 * c].iter().all(|&b| b == 1));
    for (i, d) in data.iter().enumerate() {
        assert_eq!(&all[i * 2 * c..i * 2 * c + c], d.bytes());
    }
}
