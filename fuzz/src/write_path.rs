//! The write-path harnesses (`write_qcow2`, `write_vhd`, `write_vhdx`): a fresh image of the format created
//! in a temporary directory by `blk-factory` (options chosen by the input's first byte: QCOW2 version,
//! cluster size, extended L2, lazy refcounts, refcount width, a raw backing file; VHD and VHDX subformat and
//! block size), opened writable, then the rest of the input drives guest writes (aligned and not), zero
//! writes, discards, flushes, reads and reopens (QCOW2: sometimes growing the image first) against an
//! in-memory model of the disk.
//!
//! Every read must match the model (a discarded range may read as before or as zeros, or the backing file:
//! it is unknown until written again), no request on a valid image may fail, and at the end, closed and
//! reopened, the image must read back whole as the model says and check clean (no corruption, leak or
//! check error). Replayed over `corpus/write_*` by `crates/blk-factory/tests/write_fuzz_corpus.rs`.

use std::path::Path;

use blk_core::{AsyncDiskFile, RepairMode};
use blk_factory::{
    create_disk_file, open_image, resize_disk_file, CreateParams, DiskFileParams, ImageFormat,
    NamedImagePolicy, OpenedImage, ResizeParams,
};

/// Virtual size of the image.
const SIZE: u64 = 2 << 20;
/// Operations at most.
const MAX_OPS: usize = 64;
/// The backing file's byte (QCOW2 with a backing file).
const BACKING_BYTE: u8 = 0x3c;

/// The format under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Qcow2,
    Vhd,
    Vhdx,
}

/// Any bytes as a run of guest requests on a new QCOW2 image.
pub fn write_qcow2(data: &[u8]) {
    run(Target::Qcow2, data);
}

/// Any bytes as a run of guest requests on a new VHD image.
pub fn write_vhd(data: &[u8]) {
    run(Target::Vhd, data);
}

/// Any bytes as a run of guest requests on a new VHDX image.
pub fn write_vhdx(data: &[u8]) {
    run(Target::Vhdx, data);
}

/// The guest's view: bytes, and the ranges that are unknown (a discard makes them unknown until written).
struct Model {
    bytes: Vec<u8>,
    /// Unknown byte ranges `[start, end)`, disjoint.
    unknown: Vec<(usize, usize)>,
}

impl Model {
    /// Removes `[start, end)` from the unknown ranges.
    fn know(&mut self, start: usize, end: usize) {
        let mut kept = Vec::with_capacity(self.unknown.len() + 1);
        for &(a, b) in &self.unknown {
            if b <= start || a >= end {
                kept.push((a, b));
                continue;
            }
            if a < start {
                kept.push((a, start));
            }
            if b > end {
                kept.push((end, b));
            }
        }
        self.unknown = kept;
    }

    fn write(&mut self, offset: u64, buf: &[u8]) {
        let start = offset as usize;
        self.bytes[start..start + buf.len()].copy_from_slice(buf);
        self.know(start, start + buf.len());
    }

    fn forget(&mut self, offset: u64, len: u64) {
        let (start, end) = (offset as usize, (offset + len) as usize);
        self.know(start, end);
        self.unknown.push((start, end));
    }

    fn grow(&mut self, size: u64) {
        self.bytes.resize(size as usize, 0);
    }

    fn assert_reads(&self, disk: &dyn AsyncDiskFile, offset: u64, len: u64, what: &str) {
        let mut buf = vec![0u8; len as usize];
        disk.read_exact_at(offset, &mut buf)
            .unwrap_or_else(|e| panic!("{what}: read {offset}+{len} failed: {e}"));
        let (start, end) = (offset as usize, (offset + len) as usize);
        // The known parts of [start, end), compared as slices.
        let mut holes: Vec<(usize, usize)> = self
            .unknown
            .iter()
            .filter(|&&(a, b)| b > start && a < end)
            .map(|&(a, b)| (a.max(start), b.min(end)))
            .collect();
        holes.sort_unstable();
        let mut at = start;
        for (a, b) in holes.into_iter().chain([(end, end)]) {
            if a > at {
                let (got, want) = (&buf[at - start..a - start], &self.bytes[at..a]);
                if got != want {
                    let i = got.iter().zip(want).position(|(x, y)| x != y).unwrap_or(0);
                    panic!(
                        "{what}: byte {} reads {:#x}, the model says {:#x}",
                        at + i,
                        got[i],
                        want[i]
                    );
                }
            }
            at = at.max(b);
        }
    }
}

/// The input as a stream of numbers.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u24(&mut self) -> Option<u64> {
        Some(u64::from(self.byte()?) << 16 | u64::from(self.byte()?) << 8 | u64::from(self.byte()?))
    }
}

/// The create options `selector` picks, and whether a backing file is used.
fn create_options(target: Target, selector: u8) -> (ImageFormat, Vec<(String, String)>, bool) {
    let o = |k: &str, v: &str| (k.to_string(), v.to_string());
    let bit = |n: u8| selector >> n & 1 == 1;
    match target {
        Target::Qcow2 => {
            let cluster = ["512", "4096", "65536", "2097152"][usize::from(selector & 3)];
            let mut options = vec![o("cluster_size", cluster)];
            if bit(2) {
                options.push(o("compat", "0.10"));
            } else {
                if bit(3) {
                    options.push(o("lazy_refcounts", "on"));
                }
                if bit(4) && selector & 3 >= 2 {
                    options.push(o("extended_l2", "on"));
                }
            }
            options.push(o(
                "refcount_bits",
                ["16", "1", "64", "16"][usize::from(selector >> 5 & 3)],
            ));
            let format = ImageFormat::by_name("qcow2").expect("built with qcow2");
            (format, options, bit(7))
        }
        Target::Vhd => {
            let subformat = if bit(0) { "fixed" } else { "dynamic" };
            let format = ImageFormat::by_name("vpc").expect("built with vhd");
            (format, vec![o("subformat", subformat)], false)
        }
        Target::Vhdx => {
            let subformat = if bit(0) { "fixed" } else { "dynamic" };
            let block = ["1M", "2M", "8M", "1M"][usize::from(selector >> 1 & 3)];
            let format = ImageFormat::by_name("vhdx").expect("built with vhdx");
            (
                format,
                vec![o("subformat", subformat), o("block_size", block)],
                false,
            )
        }
    }
}

fn open(path: &Path, format: ImageFormat, read_only: bool) -> OpenedImage {
    let params = DiskFileParams::new(path)
        .format(Some(format))
        .read_only(read_only)
        .named_images(NamedImagePolicy::AllowRecordedFormat);
    open_image(&params).unwrap_or_else(|e| panic!("open of a valid image failed: {e}"))
}

fn run(target: Target, data: &[u8]) {
    let mut input = Input(data);
    let Some(selector) = input.byte() else {
        return;
    };
    // In memory where the machine has /dev/shm: the flushes are then cheap, and the harness runs faster.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = dir else {
        return;
    };
    let (format, options, backing) = create_options(target, selector);
    let path = dir.path().join("disk.img");
    let mut params = CreateParams::new(&path, format, Some(SIZE));
    params.options = options;
    if backing {
        let base = dir.path().join("base.raw");
        if std::fs::write(&base, vec![BACKING_BYTE; SIZE as usize]).is_err() {
            return;
        }
        params.backing_file = Some("base.raw".into());
        params.backing_format = Some(ImageFormat::RAW);
    }
    // Combinations the format refuses are not this harness's business.
    if create_disk_file(&params).is_err() {
        return;
    }
    let mut image = open(&path, format, false);
    let size = image.disk.logical_size();
    let mut model = Model {
        bytes: vec![if backing { BACKING_BYTE } else { 0 }; size as usize],
        unknown: Vec::new(),
    };
    for op in 0..MAX_OPS {
        let (Some(kind), Some(at), Some(n)) = (input.byte(), input.u24(), input.byte()) else {
            break;
        };
        let size = image.disk.logical_size();
        let unaligned = kind & 0x80 != 0;
        let (offset, len) = if unaligned {
            let offset = (at * 7) % size;
            (offset, (1 + u64::from(n) * 97).min(size - offset))
        } else {
            let offset = (at * 512) % size;
            (offset, (512 * (1 + u64::from(n))).min(size - offset))
        };
        let what = format!("op {op} ({kind:#x} at {offset}+{len})");
        let disk = &*image.disk;
        match kind & 7 {
            0..=2 => {
                let buf: Vec<u8> = (0..len).map(|i| (i as u8) ^ (op as u8) ^ 0xa5).collect();
                disk.write_all_at(offset, &buf)
                    .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
                model.write(offset, &buf);
            }
            3 => {
                disk.write_zeroes(offset, len, kind & 8 != 0)
                    .unwrap_or_else(|e| panic!("{what}: write_zeroes failed: {e}"));
                model.write(offset, &vec![0; len as usize]);
            }
            4 => {
                disk.discard(offset, len)
                    .unwrap_or_else(|e| panic!("{what}: discard failed: {e}"));
                model.forget(offset, len);
            }
            5 => disk
                .flush()
                .unwrap_or_else(|e| panic!("{what}: flush failed: {e}")),
            6 => model.assert_reads(disk, offset, len, &what),
            _ => {
                disk.flush()
                    .unwrap_or_else(|e| panic!("{what}: flush failed: {e}"));
                drop(image);
                if target == Target::Qcow2 && kind & 8 != 0 {
                    let mut resize = ResizeParams::new(&path, size + (1 << 20));
                    resize.format = Some(format);
                    resize_disk_file(&resize)
                        .unwrap_or_else(|e| panic!("{what}: grow failed: {e}"));
                    model.grow(size + (1 << 20));
                }
                image = open(&path, format, false);
                model.assert_reads(&*image.disk, offset, len, &what);
            }
        }
    }
    image
        .disk
        .flush()
        .unwrap_or_else(|e| panic!("final flush failed: {e}"));
    drop(image);
    let image = open(&path, format, true);
    let size = image.disk.logical_size();
    assert_eq!(size, model.bytes.len() as u64, "size after reopening");
    model.assert_reads(&*image.disk, 0, size, "after reopening");
    match image.admin.check(RepairMode::None) {
        Ok(report) => assert!(
            report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0,
            "check after the run: {report:?}"
        ),
        // VHD has no check in some builds; anything else must check.
        Err(e) => assert!(target == Target::Vhd, "check failed: {e}"),
    }
}
