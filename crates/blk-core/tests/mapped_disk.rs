//! `MappedDisk`, blk-core's synchronous engine, over the fake cluster-mapped image (`fake_image`): random
//! writes, write-zeroes, discards and reads (host pieces, allocations, other disks' pieces, slow pieces)
//! against an in-memory model; allocations given back when an earlier piece fails; the end of a host file read
//! as zeros; the image's context on errors.

mod fake_image;
mod queue_harness;

use std::sync::atomic::Ordering;

use blk_core::{
    DiskFile, ErrorKind, HostFile, HostOpenOptions, IoBuf, IoBufMut, LockMode, MappedDisk,
    Operation,
};
use fake_image::{FakeMapper, FakeOptions, CLUSTER, SIZE};
use proptest::prelude::*;
use queue_harness::{temp_file, whole_disk};

fn disk(options: FakeOptions) -> (MappedDisk<FakeMapper>, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = temp_file(&dir, false).expect("a temp file");
    (MappedDisk::new(FakeMapper::new(file, options)), dir)
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset: u64,
        len: u64,
        seed: u8,
        split: u64,
    },
    Zeroes {
        offset: u64,
        len: u64,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Read {
        offset: u64,
        len: u64,
        split: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE / 512, 1..24u64).prop_map(|(s, n)| {
        let offset = s * 512;
        (offset, (n * 512).min(SIZE - offset))
    });
    prop_oneof![
        4 => (range.clone(), any::<u8>(), 0..12_288u64)
            .prop_map(|((offset, len), seed, split)| Op::Write { offset, len, seed, split }),
        1 => range.clone().prop_map(|(offset, len)| Op::Zeroes { offset, len }),
        1 => range.clone().prop_map(|(offset, len)| Op::Discard { offset, len }),
        3 => (range, 0..12_288u64).prop_map(|((offset, len), split)| Op::Read { offset, len, split }),
    ]
}

/// Bytes `0..len` of a pattern from `seed`.
fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_requests_equal_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let (disk, _dir) = disk(FakeOptions::default());
        let mut model = vec![0u8; SIZE as usize];
        for op in ops {
            match op {
                Op::Write { offset, len, seed, split } => {
                    let data = pattern(seed, len);
                    let at = (split.min(len)) as usize;
                    let bufs = [IoBuf::from(&data[..at]), IoBuf::from(&data[at..])];
                    disk.write_at(offset, &bufs).unwrap();
                    model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                }
                Op::Zeroes { offset, len } | Op::Discard { offset, len } => {
                    if matches!(op, Op::Discard { .. }) {
                        disk.discard(offset, len).unwrap();
                    } else {
                        disk.write_zeroes(offset, len, true).unwrap();
                    }
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                Op::Read { offset, len, split } => {
                    let mut back = vec![0xeeu8; len as usize];
                    let (a, b) = back.split_at_mut(split.min(len) as usize);
                    disk.read_at(offset, &[IoBufMut::from(a), IoBufMut::from(b)]).unwrap();
                    prop_assert!(back[..] == model[offset as usize..(offset + len) as usize]);
                }
            }
        }
        prop_assert!(whole_disk(&disk) == model, "the disk differs from the model");
        prop_assert!(whole_disk(disk.fake_disk()) == model, "the image differs from the model");
        disk.shared().check_links();
    }
}

#[test]
fn a_failed_piece_gives_the_later_allocations_back() {
    // A host file that refuses writes under a mapper that thinks it may write: the first allocated piece's
    // write fails, and every allocation of the request is finished (given back) exactly once.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("image");
    drop(temp_file(&dir, false));
    let options = HostOpenOptions {
        read_only: true,
        lock: LockMode::None,
        ..HostOpenOptions::default()
    };
    let file = HostFile::open(&path, options).unwrap();
    let options = FakeOptions {
        slow_clusters: false,
        ..FakeOptions::default()
    };
    let disk = MappedDisk::new(FakeMapper::new(file, options));
    let data = vec![7u8; 3 * CLUSTER as usize];
    let e = disk.write_all_at(0, &data).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    assert_eq!(e.path(), Some(path.as_path()));
    assert_eq!(e.operation(), Some(Operation::Write));
    assert_eq!(e.format(), Some("fake"));
    disk.shared().check_links();
    assert_eq!(disk.shared().links_issued(), 3);
}

#[test]
fn a_failed_link_fails_the_write_and_leaves_nothing_visible() {
    let (disk, _dir) = disk(FakeOptions {
        slow_clusters: false,
        ..FakeOptions::default()
    });
    disk.shared().fail_finish.store(true, Ordering::SeqCst);
    let e = disk.write_all_at(CLUSTER, &[5u8; 4096]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert_eq!(e.offset(), Some(CLUSTER));
    disk.shared().fail_finish.store(false, Ordering::SeqCst);
    disk.shared().check_links();
    assert!(whole_disk(&disk).iter().all(|&b| b == 0));
}

#[test]
fn the_end_of_a_host_file_reads_as_zeros() {
    let (disk, dir) = disk(FakeOptions {
        slow_clusters: false,
        ..FakeOptions::default()
    });
    disk.write_all_at(0, &[9u8; 2 * CLUSTER as usize]).unwrap();
    // The host file shrinks behind the open image: the second cluster's bytes are gone.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("image"))
        .unwrap()
        .set_len(CLUSTER + 100)
        .unwrap();
    let mut back = vec![1u8; 2 * CLUSTER as usize];
    disk.read_exact_at(0, &mut back).unwrap();
    assert!(back[..(CLUSTER + 100) as usize].iter().all(|&b| b == 9));
    assert!(back[(CLUSTER + 100) as usize..].iter().all(|&b| b == 0));
}

#[test]
fn requests_outside_the_disk_or_on_a_read_only_one_are_refused_with_context() {
    let (disk, _dir) = disk(FakeOptions::default());
    let e = disk.read_exact_at(SIZE - 10, &mut [0u8; 20]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfBounds);
    assert_eq!(e.format(), Some("fake"));
    assert_eq!(e.operation(), Some(Operation::Read));
    let (ro, _dir) = disk_read_only();
    let e = ro.write_all_at(0, &[1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert_eq!(e.offset(), Some(0));
    let e = ro.discard(0, 512).unwrap_err();
    assert_eq!(e.operation(), Some(Operation::Discard));
}

fn disk_read_only() -> (MappedDisk<FakeMapper>, tempfile::TempDir) {
    disk(FakeOptions {
        read_only: true,
        ..FakeOptions::default()
    })
}
