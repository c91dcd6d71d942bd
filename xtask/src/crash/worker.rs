//! The child processes of the crash campaign, run as the hidden `xtask crash-worker` subcommand: the writer the
//! parent kills, and the verifier that reopens the image afterwards. Both use the library through
//! `blk-factory`.
//!
//! The writer reports on stdout, one line an event, *before* it starts an operation and *after* a flush
//! returns; the parent reads the pipe, which keeps what was written to it when the writer is killed, so the
//! parent knows exactly which operations may have started and which writes a completed flush covers:
//!
//! | line | meaning |
//! |---|---|
//! | `W id offset len` | a write of stamped sectors (see [`super::stamp`]) starts |
//! | `Z offset len` | a write of zeros starts |
//! | `D offset len` | a discard starts |
//! | `F` | a flush starts |
//! | `G size` | growing to `size` starts (flush, close, resize, reopen, flush) |
//! | `A` | the last `F` or `G` completed: everything announced before it is durable |
//! | `E message` | an operation failed (the writer then exits with status 1) |
//! | `X` | the writer finished its operations |

use std::io::Write;
use std::path::Path;

use blk_factory::{
    open_image, resize_disk_file, DiskFileParams, ImageFormat, NamedImagePolicy, OpenedImage,
    ResizeParams,
};

use super::scenario::Workload;
use super::stamp;
use crate::campaign::Rng;

/// Operations a writer run issues at most (the parent normally kills it long before).
pub const MAX_OPS: u64 = 4000;
/// The busy area most requests go to, so later writes overwrite earlier ones.
const HOT_BYTES: u64 = 8 << 20;
/// The largest request.
const MAX_REQUEST: u64 = 1 << 20;
/// Growing adds at most this much.
const MAX_GROWTH: u64 = 8 << 20;

/// `xtask crash-worker write IMAGE FORMAT SEED FIRST_ID MAX_SIZE [WORKLOAD]` or `... verify IMAGE FORMAT
/// OUT_RAW`; `WORKLOAD` is a [`Workload`] name (`mixed` when missing).
pub fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).ok_or("crash-worker: missing argument");
    let number = |i: usize| -> Result<u64, String> {
        arg(i)?
            .parse()
            .map_err(|_| format!("crash-worker: `{}` is not a number", args[i]))
    };
    let image = Path::new(arg(1)?);
    let format = ImageFormat::by_name(arg(2)?).ok_or("crash-worker: unknown format")?;
    match arg(0)?.as_str() {
        "write" => {
            let workload = match args.get(6) {
                None => Workload::Mixed,
                Some(name) => Workload::by_name(name).ok_or("crash-worker: unknown workload")?,
            };
            write(image, format, number(3)?, number(4)?, number(5)?, workload)
        }
        "verify" => verify(image, format, Path::new(arg(3)?)),
        other => Err(format!("crash-worker: unknown mode `{other}`")),
    }
}

fn params(image: &Path, format: ImageFormat, read_only: bool) -> DiskFileParams {
    DiskFileParams::new(image)
        .format(Some(format))
        .read_only(read_only)
        .named_images(NamedImagePolicy::AllowRecordedFormat)
}

fn open(image: &Path, format: ImageFormat, read_only: bool) -> Result<OpenedImage, String> {
    open_image(&params(image, format, read_only)).map_err(|e| e.to_string())
}

/// One event line on stdout, written with one `write` so a kill never splits it.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    let message = format!("{what}: {e}");
    report(&format!("E {}", message.replace('\n', " ")));
    message
}

/// A request inside a disk of `size` bytes, sector-aligned: mostly small and in the busy area.
fn request(rng: &mut Rng, size: u64) -> (u64, u64) {
    let sectors = size / 512;
    let start = match rng.below(10) {
        0..=6 => rng.below(HOT_BYTES.min(size) / 512),
        7 => rng.below(sectors / 128) * 128,
        _ => rng.below(sectors),
    };
    let len = match rng.below(10) {
        0..=5 => 1 + rng.below(8),
        6..=8 => 8 * (1 + rng.below(16)),
        _ => 1 + rng.below(MAX_REQUEST / 512),
    };
    let len = len.min(sectors - start);
    (start * 512, len * 512)
}

/// A request of the allocating workload: 4 to 16 KiB, 4 KiB aligned, anywhere on the disk.
fn allocating_request(rng: &mut Rng, size: u64) -> (u64, u64) {
    let start = rng.below(size / 4096) * 4096;
    let len = (4096 * (1 + rng.below(4))).min(size - start);
    (start, len)
}

fn write(
    image: &Path,
    format: ImageFormat,
    seed: u64,
    first_id: u64,
    max_size: u64,
    workload: Workload,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut opened = open(image, format, false).map_err(|e| fail("open", e))?;
    let can_grow = format.name() == "qcow2";
    let mut id = first_id;
    let mut buf = Vec::new();
    for _ in 0..MAX_OPS {
        let disk = &opened.disk;
        let size = disk.logical_size();
        let (offset, len, roll) = match workload {
            Workload::Mixed => {
                let (offset, len) = request(&mut rng, size);
                (offset, len, rng.below(100))
            }
            Workload::Allocating => {
                let (offset, len) = allocating_request(&mut rng, size);
                // 60% writes, 5% zeroes, 10% discards, 25% flushes (the arms below); never growing.
                let roll = match rng.below(100) {
                    0..=59 => 0,
                    60..=64 => 50,
                    65..=74 => 60,
                    _ => 70,
                };
                (offset, len, roll)
            }
        };
        let result = match roll {
            0..=49 => {
                report(&format!("W {id} {offset} {len}"));
                stamp::fill(&mut buf, id as u32, offset, len);
                id += 1;
                disk.write_all_at(offset, &buf)
            }
            50..=59 => {
                report(&format!("Z {offset} {len}"));
                disk.write_zeroes(offset, len, rng.chance(50))
            }
            60..=69 => {
                report(&format!("D {offset} {len}"));
                disk.discard(offset, len)
            }
            70..=91 => {
                report("F");
                let r = disk.flush();
                if r.is_ok() {
                    report("A");
                }
                r
            }
            _ if can_grow && size < max_size => {
                let new_size = (size + 512 * (1 + rng.below(MAX_GROWTH / 512))).min(max_size);
                report(&format!("G {new_size}"));
                disk.flush().map_err(|e| fail("flush before growing", e))?;
                drop(opened);
                let mut resize = ResizeParams::new(image, new_size);
                resize.format = Some(format);
                resize_disk_file(&resize).map_err(|e| fail("grow", e))?;
                opened = open(image, format, false).map_err(|e| fail("reopen", e))?;
                let r = opened.disk.flush();
                if r.is_ok() {
                    report("A");
                }
                r
            }
            _ => Ok(()),
        };
        result.map_err(|e| fail("request", e))?;
    }
    report("X");
    Ok(())
}

/// Reopens the image writable (the format's repairing open: lazy refcounts rebuilt, a VHDX log replayed),
/// flushes and closes it; then reads the whole disk read-only into `out` (raw) and prints `S size`.
fn verify(image: &Path, format: ImageFormat, out: &Path) -> Result<(), String> {
    {
        let opened = open(image, format, false).map_err(|e| fail("repairing open", e))?;
        opened
            .disk
            .flush()
            .map_err(|e| fail("flush after the repairing open", e))?;
    }
    let opened = open(image, format, true).map_err(|e| fail("read-only open", e))?;
    let size = opened.disk.logical_size();
    let mut file = std::fs::File::create(out).map_err(|e| fail("model file", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        opened
            .disk
            .read_exact_at(offset, &mut buf[..n])
            .map_err(|e| fail("read back", e))?;
        file.write_all(&buf[..n])
            .map_err(|e| fail("model file", e))?;
        offset += n as u64;
    }
    report(&format!("S {size}"));
    Ok(())
}
