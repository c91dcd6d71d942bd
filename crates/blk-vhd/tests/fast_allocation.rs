//! Allocating writes on the fast path (a dynamic disk's new blocks reserved while mapping, written by the
//! backend, linked after their data) and the per-block bitmap state: many 64 KiB writes at once into an empty
//! image, partly covered new blocks, blocks with partial sector bitmaps read after open and written, and a
//! model test of random batches. QEMU is the reference: `qemu-img compare` against a raw model or against
//! qemu-io's result of the same writes (qemu-img has no `check` for vpc; blk's own runs instead).

mod common;

use std::path::Path;

use blk_core::{
    AsyncDiskFile, AsyncIo, DiskFile, ImageAdmin, IoBuf, Mapper, ReadMapping, RepairMode,
    WriteMapping,
};
use common::*;
use proptest::prelude::*;

const BLOCK: u64 = 2 << 20;

/// Submits `writes` (`(offset, data)`) through `queue` in batches of `DEPTH`, each batch's requests at once,
/// then flushes.
fn write_batches(queue: &mut dyn AsyncIo, writes: &[(u64, Vec<u8>)]) {
    for batch in writes.chunks(DEPTH as usize) {
        let bufs: Vec<[IoBuf<'static>; 1]> = batch
            .iter()
            .map(|(_, data)| {
                let bytes: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
                [IoBuf::from(bytes)]
            })
            .collect();
        let requests: Vec<_> = batch
            .iter()
            .zip(&bufs)
            .enumerate()
            .map(|(i, ((offset, _), bufs))| write_request(i as u64, *offset, bufs))
            .collect();
        for c in complete(queue, &requests) {
            let len = batch[c.user_data as usize].1.len() as u64;
            assert_eq!(c.result.unwrap(), len, "write {}", c.user_data);
        }
    }
    let flush = blk_core::Request::new(u64::MAX, blk_core::RequestOp::Flush);
    complete(queue, &[flush])[0].result.as_ref().unwrap();
}

/// Writes `writes` into `model` too.
fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (offset, data) in writes {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
}

/// blk's check finds nothing, not even a leak.
fn assert_clean(disk: &blk_vhd::Vhd) {
    let report = disk.check(RepairMode::None).unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");
}

fn qemu_compare_with_model(dir: &Path, image: &Path, model: &[u8]) {
    let raw = dir.join("model.raw");
    std::fs::write(&raw, model).unwrap();
    qemu_compare("vpc", image, "raw", &raw);
}

#[test]
fn many_64k_writes_into_an_empty_image_at_once() {
    let dir = tempdir();
    let path = dir.path().join("empty.vhd");
    if have_qemu() {
        run("qemu-img", &["create", "-f", "vpc", path_str(&path), "32M"]);
    } else {
        create(&path, Some(32 << 20), &[]);
    }
    let disk = open_rw(&path);
    let size = disk.logical_size();
    // Sequential 64 KiB writes, 32 at once (one whole block per batch), over the first 16 MiB; then the rest
    // in an order that has every batch start blocks and join blocks other batches started.
    let chunk = 64u64 << 10;
    let mut writes: Vec<(u64, Vec<u8>)> = (0..(16 << 20) / chunk)
        .map(|i| (i * chunk, pattern(i, chunk as usize)))
        .collect();
    let rest: Vec<u64> = ((16 << 20) / chunk..size / chunk).collect();
    let (evens, odds): (Vec<u64>, Vec<u64>) = rest.iter().partition(|&&i| i % 2 == 0);
    for i in evens.into_iter().rev().chain(odds) {
        writes.push((i * chunk, pattern(1000 + i, chunk as usize)));
    }
    let mut model = vec![0u8; size as usize];
    apply(&mut model, &writes);
    {
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        write_batches(queue.as_mut(), &writes);
    }
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    // Every block allocated once, its data on a 4 KiB boundary.
    let bat = disk.bat();
    let blocks: Vec<u32> = bat.iter().copied().filter(|&e| e != u32::MAX).collect();
    assert_eq!(blocks.len() as u64, size / BLOCK);
    for e in &blocks {
        assert_eq!((u64::from(*e) * 512 + 512) % 4096, 0, "block at sector {e}");
    }
    let mut sorted = blocks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), blocks.len(), "a block allocated twice");
    drop(disk);
    // Closed: the file grown ahead was cut back to the last block (and the footer at its place).
    let last_end = u64::from(sorted[sorted.len() - 1]) * 512 + 512 + BLOCK;
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > last_end && len <= last_end + 4096,
        "{len} after {last_end}"
    );
    // Reopened: the same bytes, still clean.
    let disk = open_ro(&path);
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    drop(disk);
    if have_qemu() {
        qemu_compare_with_model(dir.path(), &path, &model);
    }
}

/// The BAT entry of `block` as the file at `path` holds it (the BAT's place from the dynamic header at 512).
fn file_bat_entry(path: &Path, block: u64) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    let table = u64::from_be_bytes(bytes[512 + 16..512 + 24].try_into().unwrap());
    let at = (table + 4 * block) as usize;
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// One write of `data` at `offset` through `queue`, completed, not flushed.
fn write_one(queue: &mut dyn AsyncIo, offset: u64, data: &[u8]) {
    let bytes: &'static [u8] = Box::leak(data.to_vec().into_boxed_slice());
    let bufs = [IoBuf::from(bytes)];
    let done = complete(queue, &[write_request(0, offset, &bufs)]);
    assert_eq!(done[0].result.as_ref().unwrap(), &(data.len() as u64));
}

#[test]
fn new_blocks_reach_the_file_at_the_next_flush_or_at_close() {
    let dir = tempdir();
    let path = dir.path().join("links.vhd");
    if have_qemu() {
        run("qemu-img", &["create", "-f", "vpc", path_str(&path), "16M"]);
    } else {
        create(&path, Some(16 << 20), &[]);
    }
    let mut model = vec![0u8; 16 << 20];
    let first = (BLOCK, pattern(1, 65536));
    let second = (5 * BLOCK + 4096, pattern(2, 8192));
    apply(&mut model, &[first.clone(), second.clone()]);
    {
        let disk = open_rw(&path);
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        write_one(queue.as_mut(), first.0, &first.1);
        // Linked in memory (read back at once), in the file only once flushed.
        assert_ne!(disk.bat()[1], u32::MAX);
        assert_eq!(
            file_bat_entry(&path, 1),
            u32::MAX,
            "in the file before a flush"
        );
        let flush = blk_core::Request::new(7, blk_core::RequestOp::Flush);
        complete(queue.as_mut(), &[flush])[0]
            .result
            .as_ref()
            .unwrap();
        let entry = file_bat_entry(&path, 1);
        assert_eq!(entry, disk.bat()[1]);
        let bytes = std::fs::read(&path).unwrap();
        let bitmap = u64::from(entry) as usize * 512;
        assert!(
            bytes[bitmap..bitmap + 512].iter().all(|&b| b == 0xff),
            "bitmap full"
        );
        // Not flushed: written when the last handle closes.
        write_one(queue.as_mut(), second.0, &second.1);
        assert_eq!(file_bat_entry(&path, 5), u32::MAX);
        let got = read_all(&disk);
        let diff = got.iter().zip(&model).position(|(a, b)| a != b);
        let last = got.iter().zip(&model).rposition(|(a, b)| a != b);
        assert!(
            diff.is_none(),
            "first difference at {diff:?}, last {last:?}"
        );
    }
    assert_ne!(file_bat_entry(&path, 5), u32::MAX, "written on close");
    let disk = open_ro(&path);
    let got = read_all(&disk);
    let diff = got.iter().zip(&model).position(|(a, b)| a != b);
    let last = got.iter().zip(&model).rposition(|(a, b)| a != b);
    assert!(
        diff.is_none(),
        "reopened: first difference at {diff:?}, last {last:?}, bat {:?}",
        disk.bat()
    );
    assert_clean(&disk);
    drop(disk);
    if have_qemu() {
        qemu_compare_with_model(dir.path(), &path, &model);
    }
}

#[test]
fn partly_covered_new_blocks_read_zeros_elsewhere_and_match_qemu_io() {
    let dir = tempdir();
    let path = dir.path().join("partial.vhd");
    create(&path, Some(16 << 20), &[]);
    let twin = dir.path().join("twin.vhd");
    std::fs::copy(&path, &twin).unwrap();
    // In one batch: small and unaligned writes into new blocks, two writes into one new block with a gap,
    // a write across two new blocks, one into the last sector.
    let fills: &[(u64, u8, u64)] = &[
        (BLOCK + 4096, 0x41, 4096),
        (BLOCK + 100_000, 0x42, 1000),
        ((3 * BLOCK) - 4096, 0x43, 12288),
        (5 * BLOCK + 7, 0x44, 513),
        ((16 << 20) - 512, 0x45, 512),
    ];
    let writes: Vec<(u64, Vec<u8>)> = fills
        .iter()
        .map(|&(offset, byte, len)| (offset, vec![byte; len as usize]))
        .collect();
    let disk = open_rw(&path);
    let size = disk.logical_size();
    let mut model = vec![0u8; size as usize];
    apply(&mut model, &writes);
    {
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        write_batches(queue.as_mut(), &writes);
        // Read back through the queue too: the linked blocks map to the host, the rest reads zeros.
        assert!(read_through(queue.as_mut(), size, arena(size)) == model);
    }
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    drop(disk);
    if !have_qemu() {
        return;
    }
    qemu_io("vpc", &twin, &qemu_commands(fills));
    qemu_compare("vpc", &path, "vpc", &twin);
    qemu_compare_with_model(dir.path(), &path, &model);
}

#[test]
fn qemu_and_blk_extend_each_others_images() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("mixed.vhd");
    create(&path, Some(16 << 20), &[]);
    let disk = open_rw(&path);
    let size = disk.logical_size();
    let mut model = vec![0u8; size as usize];
    // blk allocates two blocks through a queue (the file grows ahead, and is cut back on close).
    let writes = vec![
        (4096u64, vec![0x51u8; 65536]),
        (BLOCK + 512, vec![0x52; 4096]),
    ];
    apply(&mut model, &writes);
    {
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        write_batches(queue.as_mut(), &writes);
    }
    drop(disk);
    // QEMU allocates its blocks right after blk's last one: unwritten parts must read as zeros there.
    let fills: &[(u64, u8, u64)] = &[(3 * BLOCK + 100_000, 0x61, 8192), (5 * BLOCK, 0x62, 512)];
    qemu_io("vpc", &path, &qemu_commands(fills));
    for &(offset, byte, len) in fills {
        model[offset as usize..(offset + len) as usize].fill(byte);
    }
    assert!(read_all(&open_ro(&path)) == model);
    qemu_compare_with_model(dir.path(), &path, &model);
    // And blk after QEMU's blocks, across two new blocks.
    {
        let disk = open_rw(&path);
        disk.write_all_at(7 * BLOCK - 4096, &[0x71; 8192]).unwrap();
        assert_clean(&disk);
    }
    model[(7 * BLOCK - 4096) as usize..(7 * BLOCK + 4096) as usize].fill(0x71);
    let disk = open_ro(&path);
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    drop(disk);
    qemu_compare_with_model(dir.path(), &path, &model);
}

/// Clears the sector-bitmap bits of sectors `first..=last` of the block at BAT entry `entry`.
fn clear_bits(path: &Path, entry: u32, first: u64, last: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let bitmap = u64::from(entry) as usize * 512;
    for s in first..=last {
        bytes[bitmap + (s / 8) as usize] &= !(0x80 >> (s % 8));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn partial_bitmaps_read_right_after_open_and_the_state_follows_writes() {
    let dir = tempdir();
    let path = dir.path().join("bits.vhd");
    create(&path, Some(8 << 20), &[]);
    {
        let disk = open_rw(&path);
        disk.write_all_at(0, &pattern(1, 2 << 20)).unwrap();
        disk.write_all_at(BLOCK, &pattern(2, 2 << 20)).unwrap();
    }
    let (bat, size) = {
        let disk = open_ro(&path);
        (disk.bat(), disk.logical_size())
    };
    // Block 0: sectors 8..=15 not present (they read as zeros); block 1 stays full.
    clear_bits(&path, bat[0], 8, 15);
    let mut model = vec![0u8; size as usize];
    model[..2 << 20].copy_from_slice(&pattern(1, 2 << 20));
    model[2 << 20..4 << 20].copy_from_slice(&pattern(2, 2 << 20));
    model[4096..8192].fill(0);

    let disk = open_rw(&path);
    let mapper: &dyn Mapper = &*disk;
    let data0 = u64::from(bat[0]) * 512 + 512;
    // The first touch after open reads the bitmap while mapping: per run of sectors, host or zeros.
    let mut reads = Vec::new();
    mapper.map_read(0, 3 * 4096, &mut reads).unwrap();
    assert_eq!(
        reads,
        [
            ReadMapping::Host {
                file: 0,
                offset: data0,
                len: 4096
            },
            ReadMapping::Zero { len: 4096 },
            ReadMapping::Host {
                file: 0,
                offset: data0 + 8192,
                len: 4096
            },
        ]
    );
    {
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert!(read_through(queue.as_mut(), size, arena(size)) == model);
    }
    // A write into the partial block goes slow (bits to set); partly filling the hole keeps it partial.
    let mut writes = Vec::new();
    mapper.map_write(4096, 1024, &mut writes).unwrap();
    assert_eq!(writes, [WriteMapping::Slow { len: 1024 }]);
    disk.write_all_at(4096, &pattern(3, 1024)).unwrap();
    model[4096..5120].copy_from_slice(&pattern(3, 1024));
    assert!(read_all(&disk) == model);
    writes.clear();
    mapper.map_write(5120, 512, &mut writes).unwrap();
    assert_eq!(writes, [WriteMapping::Slow { len: 512 }]);
    // Filling the rest makes it full: from then on writes and reads map in place.
    disk.write_all_at(5120, &pattern(4, 3072)).unwrap();
    model[5120..8192].copy_from_slice(&pattern(4, 3072));
    writes.clear();
    mapper.map_write(4096, 4096, &mut writes).unwrap();
    assert_eq!(
        writes,
        [WriteMapping::Host {
            file: 0,
            offset: data0 + 4096,
            len: 4096
        }]
    );
    reads.clear();
    mapper.map_read(0, 3 * 4096, &mut reads).unwrap();
    assert_eq!(
        reads,
        [ReadMapping::Host {
            file: 0,
            offset: data0,
            len: 3 * 4096
        }]
    );
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    drop(disk);
    // Reopened (the state learned again from the file): the same bytes.
    assert!(read_all(&open_ro(&path)) == model);
}

#[test]
fn differencing_partial_blocks_read_right_after_open() {
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    create(&base, Some(8 << 20), &[]);
    let size = {
        let disk = open_rw(&base);
        let size = disk.logical_size();
        disk.write_all_at(0, &pattern(1, size as usize)).unwrap();
        size
    };
    let child = dir.path().join("child.vhd");
    create(
        &child,
        None,
        &[("backing_file", "base.vhd"), ("backing_fmt", "vpc")],
    );
    let mut model = pattern(1, size as usize);
    {
        let disk = open_rw(&child);
        for (offset, seed, len) in [(4096u64, 2u64, 1000usize), (BLOCK + 512, 3, 4096)] {
            disk.write_all_at(offset, &pattern(seed, len)).unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&pattern(seed, len));
        }
    }
    // Freshly opened: the partial blocks' first touches come through a queue.
    let disk = open_rw(&child);
    assert_eq!(disk.logical_size(), size);
    {
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert!(read_through(queue.as_mut(), size, arena(size)) == model);
        // Writes into them and into a new block, then read again through the same queue.
        let writes = vec![
            (8192u64, pattern(4, 4096)),
            (BLOCK + 1024, pattern(5, 100)),
            (3 * BLOCK, pattern(6, 65536)),
        ];
        apply(&mut model, &writes);
        write_batches(queue.as_mut(), &writes);
        assert!(read_through(queue.as_mut(), size, arena(size)) == model);
    }
    assert!(read_all(&disk) == model);
    assert_clean(&disk);
    drop(disk);
    assert!(read_all(&open_ro(&child)) == model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random batches of writes (non-overlapping within a batch, sizes from a sector to past a block) into
    /// an empty dynamic image through one queue read back as a plain byte model, and the image checks clean.
    #[test]
    fn random_batches_match_the_model(
        batches in prop::collection::vec(
            prop::collection::vec((0u64..(12 << 20) / 512, 1u64..9000, any::<u8>(), any::<bool>()), 1..24),
            1..5,
        )
    ) {
        let dir = tempdir();
        let path = dir.path().join("model.vhd");
        create(&path, Some(12 << 20), &[]);
        let disk = open_rw(&path);
        let size = disk.logical_size();
        let mut model = vec![0u8; size as usize];
        {
            let mut queue = disk.create_async_io(DEPTH).unwrap();
            for (n, batch) in batches.iter().enumerate() {
                let mut taken: Vec<(u64, u64)> = Vec::new();
                let mut writes = Vec::new();
                for &(sector, len, seed, unaligned) in batch {
                    let offset = sector * 512 + if unaligned { u64::from(seed) } else { 0 };
                    let len = if unaligned { len } else { len.div_ceil(512) * 512 };
                    let len = len.min(size - offset.min(size));
                    if len == 0 || taken.iter().any(|&(o, l)| o < offset + len && offset < o + l) {
                        continue;
                    }
                    taken.push((offset, len));
                    writes.push((offset, pattern(u64::from(seed) + 256 * n as u64, len as usize)));
                }
                apply(&mut model, &writes);
                write_batches(queue.as_mut(), &writes);
            }
            prop_assert!(read_through(queue.as_mut(), size, arena(size)) == model);
        }
        prop_assert!(read_all(&disk) == model);
        let report = disk.check(RepairMode::None).unwrap();
        prop_assert_eq!((report.corruptions, report.leaks), (0, 0));
        drop(disk);
        prop_assert!(read_all(&open_ro(&path)) == model);
    }
}
