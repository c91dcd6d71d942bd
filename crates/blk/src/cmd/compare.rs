//! `blk compare`: qemu-img compare, with its messages and exit codes (0 identical, 1 different, 2 open error,
//! 3 allocation-map error, 4 read error).
//!
//! Runs both images map as zero are skipped without reading; a run one image maps as zero only needs the other
//! image read. Without `-s`, images of different sizes are equal when the larger one's extra part reads as
//! zeros.

use std::path::{Path, PathBuf};

use blk_core::{DiskFile, Error, Extent, ExtentKind, Result};
use clap::Args;

use super::scan::{first_different_sector, first_nonzero_sector};
use super::{cache_is_direct, map_extent, open_disk, progress, report, OpenSpec, CHUNK};

/// Exit code: the images are different (or differ in size with `-s`).
const DIFFERENT: u8 = 1;
/// Exit code: an image could not be opened.
const OPEN_ERROR: u8 = 2;
/// Exit code: an allocation map could not be read.
const MAP_ERROR: u8 = 3;
/// Exit code: image data could not be read.
const READ_ERROR: u8 = 4;

/// Arguments of `blk compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Format of the first image (probed when omitted).
    #[arg(short = 'f', long = "a-format", value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second image (probed when omitted).
    #[arg(short = 'F', long = "b-format", value_name = "FMT")]
    pub format_b: Option<String>,
    /// Strict mode: different sizes or allocation states make the images different.
    #[arg(short = 's', long = "strict")]
    pub strict: bool,
    /// Print nothing; the exit code tells.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Open the images without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Cache mode of both images.
    #[arg(
        short = 'T',
        long = "source-cache",
        visible_alias = "cache",
        value_name = "SRC_CACHE"
    )]
    pub cache: Option<String>,
    /// The first image.
    pub file_a: PathBuf,
    /// The second image.
    pub file_b: PathBuf,
}

/// Why a comparison stopped early: a verdict (exit code, message already printed) or an error with its code.
enum Stop {
    Verdict(u8),
    Failed(u8, Error),
}

type Step<T> = std::result::Result<T, Stop>;

/// One image being compared.
struct Side<'a> {
    disk: &'a dyn DiskFile,
    path: &'a Path,
}

impl Side<'_> {
    fn map(&self, offset: u64, len: u64) -> Step<Extent> {
        map_extent(self.disk, self.path, offset, len).map_err(|e| Stop::Failed(MAP_ERROR, e))
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Step<()> {
        self.disk
            .read_exact_at(offset, buf)
            .map_err(|e| Stop::Failed(READ_ERROR, e.with_path(self.path)))
    }
}

/// The status bits qemu-img's strict mode compares, including its end-of-file bit (the run reaches the end
/// of an image of `size` bytes).
fn status(extent: &Extent, size: u64) -> (ExtentKind, bool, bool, bool) {
    (
        extent.kind,
        extent.host_offset.is_some(),
        extent.compressed,
        extent.offset + extent.length >= size,
    )
}

struct Comparison {
    quiet: bool,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
    bar: progress::Progress,
}

impl Comparison {
    fn say(&self, text: &str) {
        if !self.quiet {
            println!("{text}");
        }
    }

    fn mismatch(&self, offset: u64) -> Stop {
        self.say(&format!("Content mismatch at offset {offset}!"));
        Stop::Verdict(DIFFERENT)
    }

    /// Checks that `len` bytes of `side` at `offset` read as zeros.
    fn check_empty(&mut self, side: &Side<'_>, offset: u64, len: u64) -> Step<()> {
        let buf = &mut self.buf_a[..len as usize];
        side.read(offset, buf)?;
        match first_nonzero_sector(buf) {
            Some(at) => Err(self.mismatch(offset + at as u64)),
            None => Ok(()),
        }
    }

    fn compare(&mut self, a: &Side<'_>, b: &Side<'_>, strict: bool) -> Step<()> {
        let size_a = a.disk.logical_size();
        let size_b = b.disk.logical_size();
        if strict && size_a != size_b {
            self.say("Strict mode: Image size mismatch!");
            return Err(Stop::Verdict(DIFFERENT));
        }
        let common = size_a.min(size_b);
        let mut offset = 0;
        while offset < common {
            let ea = a.map(offset, common - offset)?;
            let eb = b.map(offset, common - offset)?;
            let mut chunk = ea.length.min(eb.length);
            if strict && status(&ea, size_a) != status(&eb, size_b) {
                self.say(&format!(
                    "Strict mode: Offset {offset} block status mismatch!"
                ));
                return Err(Stop::Verdict(DIFFERENT));
            }
            match (ea.reads_as_zero(), eb.reads_as_zero()) {
                (true, true) => {}
                (false, true) => {
                    chunk = chunk.min(CHUNK);
                    self.check_empty(a, offset, chunk)?;
                }
                (true, false) => {
                    chunk = chunk.min(CHUNK);
                    self.check_empty(b, offset, chunk)?;
                }
                (false, false) => {
                    chunk = chunk.min(CHUNK);
                    let n = chunk as usize;
                    a.read(offset, &mut self.buf_a[..n])?;
                    b.read(offset, &mut self.buf_b[..n])?;
                    if let Some(at) = first_different_sector(&self.buf_a[..n], &self.buf_b[..n]) {
                        return Err(self.mismatch(offset + at as u64));
                    }
                }
            }
            offset += chunk;
            self.bar.inc(chunk);
        }
        if size_a != size_b {
            self.say("Warning: Image size mismatch!");
            let (over, total) = if size_a > size_b {
                (a, size_a)
            } else {
                (b, size_b)
            };
            while offset < total {
                let extent = over.map(offset, total - offset)?;
                let mut chunk = extent.length;
                if !extent.reads_as_zero() {
                    chunk = chunk.min(CHUNK);
                    self.check_empty(over, offset, chunk)?;
                }
                offset += chunk;
                self.bar.inc(chunk);
            }
        }
        Ok(())
    }
}

/// Runs `blk compare`.
pub fn run(args: CompareArgs) -> Result<u8> {
    // qemu-img compare's exit code for every error before the comparison is 2.
    let direct = match cache_is_direct(args.cache.as_deref()) {
        Ok(direct) => direct,
        Err(_) => {
            report(&super::invalid(format!(
                "Invalid source cache option: {}",
                args.cache.as_deref().unwrap_or_default()
            )));
            return Ok(OPEN_ERROR);
        }
    };
    let open = |path: &Path, format: Option<&str>| {
        let spec = OpenSpec {
            format,
            read_only: true,
            force_share: args.force_share,
            direct,
            check_mode: false,
            skip_backing: false,
            snapshot: None,
        };
        open_disk(path, spec)
    };
    let disk_a = match open(&args.file_a, args.format_a.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            report(&e);
            return Ok(OPEN_ERROR);
        }
    };
    let disk_b = match open(&args.file_b, args.format_b.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            report(&e);
            return Ok(OPEN_ERROR);
        }
    };
    let a = Side {
        disk: &*disk_a,
        path: &args.file_a,
    };
    let b = Side {
        disk: &*disk_b,
        path: &args.file_b,
    };
    let total = a.disk.logical_size().max(b.disk.logical_size());
    let mut cmp = Comparison {
        quiet: args.quiet,
        buf_a: vec![0u8; CHUNK as usize],
        buf_b: vec![0u8; CHUNK as usize],
        bar: progress::bar(total, args.progress && !args.quiet),
    };
    let result = cmp.compare(&a, &b, args.strict);
    let code = match result {
        Ok(()) => {
            cmp.say("Images are identical.");
            0
        }
        Err(Stop::Verdict(code)) => code,
        Err(Stop::Failed(code, err)) => {
            report(&err);
            code
        }
    };
    // qemu-img ends its progress lines after the verdict, without a last 100% line.
    cmp.bar.end();
    Ok(code)
}
