//! Writes and reads the mapper serves without the slow path: allocating writes (concurrent ones into one new
//! block, partly covered new blocks of every zero state), the session's first write (data write GUID), and reads
//! of partially present blocks of differencing images (cached sector bitmaps). Checked against qemu-io's
//! result of the same writes, `qemu-img check`, and in-memory models.

mod common;

use std::path::Path;

use blk_core::{AsyncDiskFile, DiskFile, ImageAdmin, Mapper, RepairMode, WriteMapping};
use blk_vhdx::{Vhdx, VhdxCreateOptions};
use common::*;

/// 64 MiB: qemu-img and blk both choose 8 MiB blocks.
const SIZE: u64 = 64 << 20;
const BLOCK: u64 = 8 << 20;

fn tempdir() -> tempfile::TempDir {
    target_tempdir!("blk-vhdx-fast")
}

/// An empty dynamic image made by qemu-img when QEMU is there, else by blk.
fn empty_image(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    if have_qemu() {
        run(
            "qemu-img",
            &["create", "-q", "-f", "vhdx", path_str(&path), "64M"],
        );
    } else {
        create(&path, SIZE, &[]);
    }
    path
}

/// The pieces `mapper` answers for a write of `len` bytes at `offset`.
fn map_write(mapper: &dyn Mapper, offset: u64, len: u64) -> Vec<WriteMapping> {
    let mut out = Vec::new();
    mapper.map_write(offset, len, &mut out).unwrap();
    out
}

/// The writes of the queue test: 32 x 64 KiB into one new block (one batch: the queue maps them all before
/// any is written), then a batch across two new blocks and partial pieces of others.
const SAME_BLOCK: u64 = 32;
const SPREAD: &[(u64, u8, u64)] = &[
    ((2 << 23) - 4096, 0x71, 8192 + (1 << 20)),
    ((5 << 23) + 777, 0x72, 5000),
    ((7 << 23) + (4 << 20), 0x73, 65536),
];

fn same_block_writes() -> Vec<(u64, u8, u64)> {
    (0..SAME_BLOCK)
        .map(|i| (BLOCK + i * 65536 * 3, (i + 1) as u8, 65536))
        .collect()
}

#[test]
fn concurrent_allocating_writes_into_one_new_block_map_straight_to_it() {
    let dir = tempdir();
    let path = empty_image(dir.path(), "one-block.vhdx");
    let disk = open(&path, false).unwrap();
    let mapper: &Vhdx = &disk;
    // All mapped before any is written, as a queue maps a batch: every piece is an in-place write into one new
    // block, in its place.
    let writes = same_block_writes();
    let mut hosts = Vec::new();
    for &(offset, _, len) in &writes {
        let pieces = map_write(mapper, offset, len);
        match pieces[..] {
            [WriteMapping::Host {
                file: 0,
                offset: host,
                len: l,
            }] if l == len => hosts.push(host),
            _ => panic!("write at {offset}: {pieces:?}"),
        }
    }
    let block_host = hosts[0] - (writes[0].0 - BLOCK);
    for (&(offset, _, _), &host) in writes.iter().zip(&hosts) {
        assert_eq!(host, block_host + offset - BLOCK);
    }
    // Nothing written yet: the new block reads as zeros, as before.
    let (bytes, mapped) = read_via_mapper(mapper, BLOCK, BLOCK);
    assert_eq!(mapped, Mapped::Fast);
    assert!(bytes.iter().all(|&b| b == 0));
    // Written: each piece reads back, the rest of the block stays zeros.
    let file = &mapper.host_files()[0];
    let mut model = vec![0u8; BLOCK as usize];
    for (&(offset, byte, len), &host) in writes.iter().zip(&hosts) {
        file.write_all_at(host, &vec![byte; len as usize]).unwrap();
        let at = (offset - BLOCK) as usize;
        model[at..at + len as usize].fill(byte);
    }
    assert!(read_via_mapper(mapper, BLOCK, BLOCK).0 == model);
    disk.flush().unwrap();
    drop(disk);
    let disk = open(&path, true).unwrap();
    let mut back = vec![0u8; BLOCK as usize];
    disk.read_exact_at(BLOCK, &mut back).unwrap();
    assert!(back == model);
    assert_eq!(disk.check(RepairMode::None).unwrap().corruptions, 0);
    if have_qemu() {
        run("qemu-img", &["check", "-f", "vhdx", path_str(&path)]);
    }
}

#[test]
fn allocating_writes_through_a_queue_equal_qemu_io() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = empty_image(dir.path(), "queue.vhdx");
    let twin = dir.path().join("twin.vhdx");
    std::fs::copy(&path, &twin).unwrap();
    let writes = same_block_writes();
    {
        let disk = open(&path, false).unwrap();
        let mut queue = disk.create_async_io(SAME_BLOCK as u32).unwrap();
        write_through(queue.as_mut(), &writes);
        write_through(queue.as_mut(), SPREAD);
    }
    let all: Vec<_> = writes.iter().chain(SPREAD).copied().collect();
    qemu_io("vhdx", &twin, &qemu_commands(&all));
    run("qemu-img", &["check", "-f", "vhdx", path_str(&path)]);
    qemu_compare("vhdx", &path, "vhdx", &twin);
    // The file ends where its last block does, as QEMU leaves it (the growth ahead was cut back).
    let (ours, theirs) = (
        std::fs::metadata(&path).unwrap().len(),
        std::fs::metadata(&twin).unwrap().len(),
    );
    assert_eq!(ours, theirs);
}

/// Writes partly covering new blocks in each state that reads as zeros (not present, zero, unmapped): the rest
/// of the block reads as zeros, before and after reopening, and equals qemu-io's result.
#[test]
fn partly_covered_new_blocks_read_zeros_around_the_data() {
    let dir = tempdir();
    let path = empty_image(dir.path(), "partial.vhdx");
    let mut model = vec![0u8; SIZE as usize];
    // Blocks 1 and 2 get data, then become ZERO (write-zeroes) and UNMAPPED (discard); block 3 stays not present.
    let setup: &[(u64, u8, u64)] = &[(BLOCK, 0x11, BLOCK), (2 * BLOCK, 0x12, BLOCK)];
    {
        let disk = open(&path, false).unwrap();
        for &(offset, byte, len) in setup {
            disk.write_all_at(offset, &vec![byte; len as usize])
                .unwrap();
        }
        disk.write_zeroes(BLOCK, BLOCK, false).unwrap();
        disk.discard(2 * BLOCK, BLOCK).unwrap();
    }
    let twin = dir.path().join("partial-twin.vhdx");
    std::fs::copy(&path, &twin).unwrap();
    let writes: &[(u64, u8, u64)] = &[
        (BLOCK + 5000, 0x21, 3000),
        (2 * BLOCK + (3 << 20), 0x22, 4096),
        (3 * BLOCK + BLOCK - 512, 0x23, 512),
    ];
    {
        let disk = open(&path, false).unwrap();
        let mapper: &Vhdx = &disk;
        for &(offset, byte, len) in writes {
            assert_eq!(
                write_via_mapper(mapper, offset, &vec![byte; len as usize]),
                Mapped::Fast
            );
            model[offset as usize..(offset + len) as usize].fill(byte);
        }
        assert!(read_all(&disk) == model);
    }
    let disk = open(&path, true).unwrap();
    assert!(read_all(&disk) == model);
    assert_eq!(disk.check(RepairMode::None).unwrap().corruptions, 0);
    drop(disk);
    if have_qemu() {
        qemu_io("vhdx", &twin, &qemu_commands(writes));
        run("qemu-img", &["check", "-f", "vhdx", path_str(&path)]);
        qemu_compare("vhdx", &path, "vhdx", &twin);
        assert!(qemu_raw("vhdx", &path, dir.path()) == model);
    }
}

/// The first write of a session is fast: the data write GUID changes while it is mapped, before its data is
/// written; a writable session without writes keeps the GUID.
#[test]
fn the_first_write_after_open_changes_the_data_write_guid_while_mapping() {
    let dir = tempdir();
    let path = empty_image(dir.path(), "guid.vhdx");
    let before = open(&path, true).unwrap().data_write_guid();
    drop(open(&path, false).unwrap());
    assert_eq!(open(&path, true).unwrap().data_write_guid(), before);
    let changed = {
        let disk = open(&path, false).unwrap();
        let mapper: &Vhdx = &disk;
        let pieces = map_write(mapper, 4096, 4096);
        assert!(
            matches!(pieces[..], [WriteMapping::Host { .. }]),
            "{pieces:?}"
        );
        let changed = disk.data_write_guid();
        assert_ne!(changed, before);
        // Later writes, present block or new, keep it.
        assert_eq!(write_via_mapper(mapper, 8192, &[7; 4096]), Mapped::Fast);
        assert_eq!(write_via_mapper(mapper, 5 * BLOCK, &[8; 512]), Mapped::Fast);
        assert_eq!(disk.data_write_guid(), changed);
        changed
    };
    let disk = open(&path, true).unwrap();
    assert_eq!(disk.data_write_guid(), changed);
    let mut back = [0u8; 512];
    disk.read_exact_at(5 * BLOCK, &mut back).unwrap();
    assert_eq!(back, [8; 512]);
    drop(disk);
    if have_qemu() {
        run("qemu-img", &["check", "-f", "vhdx", path_str(&path)]);
    }
}

/// A differencing image with two partially present blocks (as Hyper-V leaves them; hand-built) whose sector
/// bitmaps differ: reads of sectors the bitmap marks present are host reads (fast), the others the parent's;
/// through the mapper, the synchronous path and a queue, twice (the bitmaps cached), against a model.
#[test]
fn partially_present_blocks_read_by_their_cached_sector_bitmaps() {
    const DIFF_SIZE: u64 = 8 << 20;
    const MB: u64 = 1 << 20;
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.vhdx");
    create(&base, DIFF_SIZE, &[("block_size", "1M")]);
    let parent_data = pattern(1, DIFF_SIZE as usize);
    open(&base, false)
        .unwrap()
        .write_all_at(0, &parent_data)
        .unwrap();
    let options = VhdxCreateOptions::from_key_values(
        None,
        &[
            ("backing_file".into(), "base.vhdx".into()),
            ("block_size".into(), "1M".into()),
        ],
    )
    .unwrap();
    Vhdx::create(&child, &options, &VhdxOpener).unwrap();
    // Payload blocks 0 and 1 at 8 and 9 MiB, the chunk's sector bitmap block at 10 MiB: 2048 sectors of 512
    // bytes per block, so block 1's bits start 256 bytes in.
    let child_data = pattern(2, 2 * MB as usize);
    let bits: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8)
        .collect();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&child)
            .unwrap();
        file.set_len(11 * MB).unwrap();
        file.write_all_at(&child_data, 8 * MB).unwrap();
        file.write_all_at(&bits, 10 * MB).unwrap();
        // BAT at 2 MiB: chunk ratio 4096, the bitmap entry is index 4096.
        file.write_all_at(&((8 * MB) | 7).to_le_bytes(), 2 * MB)
            .unwrap();
        file.write_all_at(&((9 * MB) | 7).to_le_bytes(), 2 * MB + 8)
            .unwrap();
        file.write_all_at(&((10 * MB) | 6).to_le_bytes(), 2 * MB + 4096 * 8)
            .unwrap();
    }
    let mut model = parent_data.clone();
    for sector in 0..4096usize {
        if bits[sector / 8] & (1 << (sector % 8)) != 0 {
            model[sector * 512..(sector + 1) * 512]
                .copy_from_slice(&child_data[sector * 512..(sector + 1) * 512]);
        }
    }
    let disk = open(&child, true).unwrap();
    let mapper: &Vhdx = &disk;
    // A run of present sectors is fast; one with absent sectors goes to the parent.
    let present = (0..4096u64)
        .find(|&s| bits[(s / 8) as usize] & (1 << (s % 8)) != 0)
        .unwrap();
    let absent = (0..4096u64)
        .find(|&s| bits[(s / 8) as usize] & (1 << (s % 8)) == 0)
        .unwrap();
    assert_eq!(read_via_mapper(mapper, present * 512, 512).1, Mapped::Fast);
    assert_eq!(read_via_mapper(mapper, absent * 512, 512).1, Mapped::Slow);
    for _ in 0..2 {
        for (offset, len) in pieces(2 * MB) {
            let (bytes, _) = read_via_mapper(mapper, offset, len);
            assert!(bytes[..] == model[offset as usize..(offset + len) as usize]);
        }
        assert!(read_all(&disk) == model);
        let mut queue = disk.create_async_io(DEPTH).unwrap();
        assert!(read_through(queue.as_mut(), DIFF_SIZE, arena(DIFF_SIZE)) == model);
    }
}

/// A block allocated while mapping is logged by the flush: a copy of the file taken before the flush (a crash)
/// is consistent and reads the block as before (zeros), a copy taken after it reads the data, for blk and QEMU.
#[test]
fn new_blocks_are_logged_by_the_flush() {
    let dir = tempdir();
    let path = empty_image(dir.path(), "flush.vhdx");
    let before = dir.path().join("before.vhdx");
    let after = dir.path().join("after.vhdx");
    {
        let disk = open(&path, false).unwrap();
        disk.write_all_at(3 * BLOCK + 4096, &[0x5a; 8192]).unwrap();
        std::fs::copy(&path, &before).unwrap();
        disk.flush().unwrap();
        std::fs::copy(&path, &after).unwrap();
    }
    let mut model = vec![0u8; SIZE as usize];
    for (copy, written) in [(&before, false), (&after, true)] {
        if written {
            model[(3 * BLOCK + 4096) as usize..(3 * BLOCK + 4096 + 8192) as usize].fill(0x5a);
        }
        if have_qemu() {
            let scratch = dir.path().join("scratch.vhdx");
            std::fs::copy(copy, &scratch).unwrap();
            run(
                "qemu-img",
                &["check", "-r", "all", "-f", "vhdx", path_str(&scratch)],
            );
            assert!(qemu_raw("vhdx", &scratch, dir.path()) == model);
        }
        // A writable open replays what the flush logged.
        let disk = open(copy, false).unwrap();
        assert_eq!(disk.check(RepairMode::None).unwrap().corruptions, 0);
        assert!(read_all(&disk) == model, "written: {written}");
    }
}
