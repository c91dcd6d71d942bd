//! `blk bench`: qemu-img bench on blk's asynchronous queues.
//!
//! The flags, defaults, offset sequence, output lines, error messages and exit codes are qemu-img bench's
//! (QEMU 10.0): `-c 75000 -d 64 -s 4096`, `-S` defaulting to the buffer size, `-t writeback`, reads unless `-w`,
//! offsets `o, o+S, o+2S, ...` wrapped modulo the image size. `-i` takes qemu's `threads`, `native` and
//! `io_uring`, and blk's names `sync` (= threads) and `aio` (= native); when the backend asked for is not
//! available, a warning on stderr says why and which one runs instead. Two extras: `--random SEED` (offsets
//! from a seeded generator, aligned to the buffer size, inside the image) and `--queues N` (N threads, each
//! with its own handle from `try_clone_async` and its own queue, the count split between them, one result
//! line).
//!
//! | module | what it holds |
//! |---|---|
//! | [`offsets`] | [`offsets::OffsetSequence`]: qemu's stepped offsets, or seeded random ones |
//! | [`io_loop`] | [`io_loop::PreparedQueue`]: one queue's batched submit / wait / reap loop, the flush rule |
//!
//! `--random` replaces the stepped sequence, so `-o` and `-S` are only printed; with `--queues`, queue `i` of
//! `N` takes requests `i, i+N, ...` of the stepped sequence (or its own random stream) and applies the flush
//! rule to its own share.
//!
//! Deviations from qemu-img: `-i` wins over `-n` whatever their order; `--image-opts` is not taken; a run
//! needing more than [`io_loop::MAX_BUFFER_MEMORY`] of buffers per queue is refused; the last flush of a run
//! is waited for inside the timed run (qemu-img stops its clock first).

pub mod io_loop;
pub mod offsets;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use blk_core::{AsyncDiskFile, LockMode, Result};
use blk_factory::{choose_backend, Backend, DiskFileParams, NamedImagePolicy};
use clap::Args;

use self::io_loop::{FlushRule, PreparedQueue, QueueJob};
use self::offsets::OffsetSequence;
use super::{invalid, parse_format};

/// The most queues `--queues` takes.
pub const MAX_QUEUES: i64 = 64;

/// `i32::MAX`: qemu-img's bound for counts and sizes (they are C `int`s).
const INT_MAX: i64 = i32::MAX as i64;

/// Arguments of `blk bench` (qemu-img bench's, plus `--random` and `--queues`).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// Number of I/O requests to perform (75000).
    #[arg(
        short = 'c',
        long = "count",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub count: Option<String>,
    /// Number of requests in flight at once (64).
    #[arg(
        short = 'd',
        long = "depth",
        value_name = "DEPTH",
        allow_hyphen_values = true
    )]
    pub depth: Option<String>,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Issue a flush after this number of requests (write tests only).
    #[arg(
        long = "flush-interval",
        value_name = "INTERVAL",
        allow_hyphen_values = true
    )]
    pub flush_interval: Option<String>,
    /// Do not wait for the requests in flight before a flush.
    #[arg(long = "no-drain")]
    pub no_drain: bool,
    /// The I/O backend: `threads` or `sync`, `native` or `aio`, `io_uring`.
    #[arg(short = 'i', long = "aio", value_name = "AIO")]
    pub aio: Option<String>,
    /// Use native AIO (as `-i native`; needs `-t none`).
    #[arg(short = 'n', long = "native")]
    pub native: bool,
    /// The offset of the first request.
    #[arg(
        short = 'o',
        long = "offset",
        value_name = "OFFSET",
        allow_hyphen_values = true
    )]
    pub offset: Option<String>,
    /// The byte written by write tests (0).
    #[arg(long = "pattern", value_name = "PATTERN", allow_hyphen_values = true)]
    pub pattern: Option<String>,
    /// Quiet (accepted; like qemu-img bench, the result lines are printed anyway).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The size of each request (4096).
    #[arg(
        short = 's',
        long = "buffer-size",
        value_name = "BUFFER_SIZE",
        allow_hyphen_values = true
    )]
    pub buffer_size: Option<String>,
    /// How far each request's offset is from the previous one (the buffer size).
    #[arg(
        short = 'S',
        long = "step-size",
        value_name = "STEP_SIZE",
        allow_hyphen_values = true
    )]
    pub step_size: Option<String>,
    /// Cache mode: `none` (O_DIRECT), `writeback` (default), `writethrough`, `directsync`, `unsafe`.
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Write instead of read.
    #[arg(short = 'w', long = "write")]
    pub write: bool,
    /// Open the image without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// blk extra: offsets from a generator seeded with SEED (aligned to the buffer size, inside the image).
    #[arg(long = "random", value_name = "SEED", allow_hyphen_values = true)]
    pub random: Option<String>,
    /// blk extra: run N queues on N threads (each its own handle and queue), splitting the count.
    #[arg(long = "queues", value_name = "N", allow_hyphen_values = true)]
    pub queues: Option<String>,
    /// The image.
    #[arg(value_name = "FILENAME")]
    pub files: Vec<PathBuf>,
}

/// What a cache mode means for the run.
#[derive(Debug, Clone, Copy)]
struct CacheMode {
    direct: bool,
    fua: bool,
    flushes_reach_disk: bool,
}

/// qemu's cache modes (`-t`).
fn parse_cache_mode(mode: Option<&str>) -> Result<CacheMode> {
    let (direct, fua, flushes_reach_disk) = match mode.unwrap_or("writeback") {
        "none" | "off" => (true, false, true),
        "writeback" => (false, false, true),
        "writethrough" => (false, true, true),
        "directsync" => (true, true, true),
        "unsafe" => (false, false, false),
        _ => return Err(invalid("Invalid cache mode")),
    };
    Ok(CacheMode {
        direct,
        fua,
        flushes_reach_disk,
    })
}

/// A backend by the name or alias its crate registered (qemu's `-i` names, `threads`, `native`,
/// `io_uring`, and blk's, `sync`, `aio`).
fn parse_aio(name: &str) -> Result<Backend> {
    Backend::by_name(name).ok_or_else(|| invalid(format!("Invalid aio option: {name}")))
}

/// "Invalid WHAT specified. Must be between MIN and MAX.", qemu's range message.
fn out_of_range(what: &str, min: i64, max: i64) -> blk_core::Error {
    invalid(format!(
        "Invalid {what} specified. Must be between {min} and {max}."
    ))
}

/// "Invalid WHAT specified: 'TEXT'.", qemu's message for something that is not a number.
fn not_a_number(what: &str, text: &str) -> blk_core::Error {
    invalid(format!("Invalid {what} specified: '{text}'."))
}

/// Parses an integer as C's `strtoll(text, NULL, 0)` does (leading blanks, a sign, `0x` hex, `0` octal), the
/// whole text, within `min..=max`.
pub fn parse_int(what: &str, text: &str, min: i64, max: i64) -> Result<i64> {
    let trimmed = text.trim_start();
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number(what, text));
    }
    let value = match u64::from_str_radix(digits, radix) {
        Ok(v) => i128::from(v),
        // Too many digits for 64 bits: out of range either way.
        Err(_) => return Err(out_of_range(what, min, max)),
    };
    let value = if negative { -value } else { value };
    if value < i128::from(min) || value > i128::from(max) {
        return Err(out_of_range(what, min, max));
    }
    // Within min..=max, both i64.
    Ok(value as i64)
}

/// Parses a size in qemu's syntax (`4k`, `1.5M`, `0x1000`) within `min..=max`, with qemu-img's messages.
pub fn parse_size_within(what: &str, text: &str, min: i64, max: i64) -> Result<i64> {
    if text.trim_start().starts_with('-') {
        return Err(out_of_range(what, min, max));
    }
    match blk_factory::parse_size(text) {
        Ok(value) if value >= min as u64 && value <= max as u64 => Ok(value as i64),
        Ok(_) => Err(out_of_range(what, min, max)),
        Err(e) if e.message().ends_with("out of range") => Err(out_of_range(what, min, max)),
        Err(_) => Err(not_a_number(what, text)),
    }
}

/// The validated settings of a run.
#[derive(Debug)]
struct Settings {
    count: u64,
    depth: u64,
    buffer_size: u64,
    step: u64,
    offset: u64,
    pattern: u8,
    flush_interval: u64,
    cache: CacheMode,
    backend: Backend,
    seed: Option<u64>,
    queues: u64,
    path: PathBuf,
}

/// Checks the arguments in qemu-img's order: each option's value, then the file name, then the flush
/// options.
fn settings(args: &BenchArgs) -> Result<Settings> {
    let int = |what, text: &Option<String>, min, max, default| {
        text.as_deref()
            .map_or(Ok(default), |t| parse_int(what, t, min, max))
    };
    let size = |what, text: &Option<String>, min, max, default| {
        text.as_deref()
            .map_or(Ok(default), |t| parse_size_within(what, t, min, max))
    };
    let count = int("request count", &args.count, 1, INT_MAX, 75000)?;
    let depth = int("queue depth", &args.depth, 1, INT_MAX, 64)?;
    // qemu-img's `-n` is `-i native`: Linux AIO.
    let native = Backend::by_name("native");
    let mut backend = match native {
        Some(native) if args.native => native,
        _ if args.native => return Err(invalid("Invalid aio option: native")),
        _ => Backend::SYNC,
    };
    if let Some(name) = &args.aio {
        backend = parse_aio(name)?;
    }
    let offset = size("offset", &args.offset, 0, i64::MAX, 0)?;
    let buffer_size = size("buffer size", &args.buffer_size, 1, INT_MAX, 4096)?;
    let step = size("step size", &args.step_size, 0, INT_MAX, 0)?;
    let cache = parse_cache_mode(args.cache.as_deref())?;
    let pattern = int("pattern byte", &args.pattern, 0, 255, 0)?;
    let flush_interval = int("flush interval", &args.flush_interval, 0, INT_MAX, 0)?;
    let seed = args
        .random
        .as_deref()
        .map(|t| parse_int("random seed", t, 0, i64::MAX))
        .transpose()?;
    let queues = int("queue count", &args.queues, 1, MAX_QUEUES, 1)?;
    let [path] = args.files.as_slice() else {
        return Err(invalid("Expecting one image file name"));
    };
    if flush_interval > 0 && !args.write {
        return Err(invalid("--flush-interval is only available in write tests"));
    }
    if flush_interval > 0 && flush_interval < depth {
        return Err(invalid("Flush interval can't be smaller than depth"));
    }
    if native == Some(backend) && !cache.direct {
        return Err(invalid(format!(
            "Could not open '{}': aio=native was specified, but it requires cache.direct=on, which was \
             not specified.",
            path.display()
        )));
    }
    // Every value was checked non-negative above.
    Ok(Settings {
        count: count as u64,
        depth: depth as u64,
        buffer_size: buffer_size as u64,
        step: if step == 0 { buffer_size } else { step } as u64,
        offset: offset as u64,
        pattern: pattern as u8,
        flush_interval: flush_interval as u64,
        cache,
        backend,
        seed: seed.map(|s| s as u64),
        queues: queues as u64,
        path: path.clone(),
    })
}

/// Runs `blk bench`.
pub fn run(args: BenchArgs) -> Result<u8> {
    let settings = settings(&args)?;
    let path = &settings.path;
    let format = parse_format(args.format.as_deref()).map_err(|e| e.with_path(path))?;
    let params = DiskFileParams::new(path)
        .format(format)
        .read_only(!args.write)
        .direct(settings.cache.direct)
        .lock(if args.force_share {
            LockMode::None
        } else {
            LockMode::Auto
        })
        .backend(settings.backend)
        .named_images(NamedImagePolicy::AllowRecordedFormat);
    let params = super::image_opts::with_runtime_options(params);
    if args.write {
        if args.force_share {
            return Err(super::invalid(format!(
                "Could not open '{}': force-share=on can only be used with read-only images",
                super::display_path(path)
            )));
        }
        super::warn_if_probed_raw(path, args.format.as_deref());
    }
    let disk = blk_factory::open_disk_file(&params)
        .map_err(|e| super::image_opts::open_error(path, e.with_path(path)))?;
    let choice = choose_backend(settings.backend);
    // As qemu-img, nothing about the backend when the one asked for runs; a fallback is a warning naming why.
    if choice.backend != settings.backend {
        for note in &choice.notes {
            eprintln!("blk: warning: {note}");
        }
    }

    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        settings.count,
        if args.write { "write" } else { "read" },
        settings.buffer_size,
        settings.depth,
        settings.offset,
        settings.step
    );
    if settings.flush_interval > 0 {
        println!("Sending flush every {} requests", settings.flush_interval);
    }
    // The line above must come out before any failure message, as qemu-img's does on a terminal.
    let _ = std::io::stdout().flush();

    let seconds = run_queues(disk.as_ref(), &settings, args.write, !args.no_drain)?;
    println!("Run completed in {seconds:.3} seconds.");
    Ok(0)
}

/// Runs the queues of the bench on their threads; returns the time from the moment every queue is ready
/// until the last one finished.
fn run_queues(disk: &dyn AsyncDiskFile, s: &Settings, write: bool, drain: bool) -> Result<f64> {
    let image_size = disk.logical_size();
    let jobs: Vec<QueueJob> = (0..s.queues)
        .map(|queue| QueueJob {
            count: s.count / s.queues + u64::from(queue < s.count % s.queues),
            depth: s.depth,
            buffer_size: s.buffer_size as usize,
            write,
            pattern: s.pattern,
            offsets: match s.seed {
                Some(seed) => OffsetSequence::random(seed, image_size, s.buffer_size, queue),
                None => OffsetSequence::stepped(s.offset, s.step, image_size, queue, s.queues),
            },
            flush: FlushRule {
                interval: s.flush_interval,
                drain,
                submit: s.cache.flushes_reach_disk,
            },
            fua: s.cache.fua,
        })
        .filter(|job| job.count > 0)
        .collect();
    // Handles for every queue but the first, which uses `disk` itself.
    let mut handles: Vec<Box<dyn AsyncDiskFile>> = Vec::with_capacity(jobs.len());
    for _ in 1..jobs.len() {
        handles.push(disk.try_clone_async()?);
    }
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(jobs.len() + 1);
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            let disk: &dyn AsyncDiskFile = match i.checked_sub(1) {
                None => disk,
                Some(h) => match handles.get(h) {
                    Some(handle) => handle.as_ref(),
                    None => disk,
                },
            };
            let (stop, ready) = (&stop, &ready);
            workers.push(scope.spawn(move || {
                let prepared = PreparedQueue::new(disk, job);
                ready.wait();
                let result = prepared.and_then(|queue| queue.run(stop));
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                result
            }));
        }
        ready.wait();
        let start = Instant::now();
        let mut first_error = None;
        for worker in workers {
            let result = worker.join().unwrap_or_else(|_| {
                Err(blk_core::Error::new(
                    blk_core::ErrorKind::Io,
                    "a bench queue thread panicked",
                ))
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        match first_error {
            Some(e) => Err(e),
            None => Ok(seconds),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_like_strtoll() {
        assert_eq!(parse_int("x", "010", 0, 100).unwrap(), 8);
        assert_eq!(parse_int("x", "0x10", 0, 100).unwrap(), 16);
        assert_eq!(parse_int("x", "+5", 0, 100).unwrap(), 5);
        assert_eq!(parse_int("x", "0", 0, 100).unwrap(), 0);
        assert_eq!(
            parse_int("request count", "-1", 1, INT_MAX)
                .unwrap_err()
                .message(),
            "Invalid request count specified. Must be between 1 and 2147483647."
        );
        assert_eq!(
            parse_int("request count", "1.5", 1, INT_MAX)
                .unwrap_err()
                .message(),
            "Invalid request count specified: '1.5'."
        );
        for bad in ["", "1k", "0x", "08", "--1"] {
            assert!(parse_int("x", bad, 0, 100).is_err(), "{bad}");
        }
        assert!(parse_int("x", "99999999999999999999999", 0, 100)
            .unwrap_err()
            .message()
            .contains("Must be between"));
    }

    #[test]
    fn sizes_parse_like_cvtnum() {
        assert_eq!(parse_size_within("s", "1.5k", 1, INT_MAX).unwrap(), 1536);
        assert_eq!(parse_size_within("s", "0x10", 1, INT_MAX).unwrap(), 16);
        assert_eq!(
            parse_size_within("buffer size", "2G", 1, INT_MAX)
                .unwrap_err()
                .message(),
            "Invalid buffer size specified. Must be between 1 and 2147483647."
        );
        assert_eq!(
            parse_size_within("offset", "-1", 0, i64::MAX)
                .unwrap_err()
                .message(),
            "Invalid offset specified. Must be between 0 and 9223372036854775807."
        );
        assert_eq!(
            parse_size_within("buffer size", "1x", 1, INT_MAX)
                .unwrap_err()
                .message(),
            "Invalid buffer size specified: '1x'."
        );
    }

    #[test]
    fn aio_and_cache_names() {
        assert_eq!(parse_aio("threads").unwrap(), Backend::SYNC);
        assert_eq!(parse_aio("sync").unwrap(), Backend::SYNC);
        assert_eq!(parse_aio("aio").unwrap().name(), "aio");
        assert_eq!(parse_aio("native").unwrap().name(), "aio");
        assert_eq!(parse_aio("io_uring").unwrap().name(), "io_uring");
        assert!(parse_aio("bogus").is_err());
        assert!(parse_cache_mode(Some("none")).unwrap().direct);
        assert!(parse_cache_mode(Some("directsync")).unwrap().fua);
        assert!(!parse_cache_mode(Some("unsafe")).unwrap().flushes_reach_disk);
        assert!(!parse_cache_mode(None).unwrap().direct);
        assert!(parse_cache_mode(Some("bogus")).is_err());
    }
}
