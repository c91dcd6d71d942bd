//! `blk convert`: qemu-img convert. Copies one or more source images (concatenated) into a target of any
//! format, in chunks through `DiskFile`, keeping the target sparse as qemu-img does:
//!
//! - ranges the source maps as zero or unallocated are not read; on a freshly created target they are skipped
//!   (it reads as zeros already), on an existing one (`-n`) they are zeroed with `write_zeroes`;
//! - in data ranges, zero runs of at least `-S` bytes (default 4 KiB) are treated the same way, using qemu's
//!   `is_allocated_sectors_min` rule (a leading zero run is always sparse, short runs after data stay data);
//! - `-S 0` writes every byte, zeros included, so the target is fully allocated.

use std::path::{Path, PathBuf};

use blk_core::{DiskFile, Error, ErrorKind, Result, ResultExt};
use blk_factory::{CreateParams, ImageFormat};
use clap::Args;
use indicatif::ProgressBar;

use super::create::create_image;
use super::scan::{is_zero, SECTOR};
use super::{
    cache_is_direct, invalid, map_extent, open_image, parse_options, print_option_help, progress,
    refuse_overwriting_source, wants_option_help, OpenSpec, CHUNK,
};

/// qemu-img's default `-S`: 8 sectors.
const DEFAULT_SPARSE: u64 = 4096;
/// qemu-img's largest `-S`: 32768 sectors.
const MAX_SPARSE: u64 = 16 << 20;

/// Arguments of `blk convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Format of the source images (probed when omitted).
    #[arg(short = 'f', long = "source-format", value_name = "FMT")]
    pub format: Option<String>,
    /// Format of the target image.
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub output_format: String,
    /// Target format options, `key=value[,key=value...]`.
    #[arg(short = 'o', long = "target-options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Do not create the target: it must exist and be large enough.
    #[arg(short = 'n', long = "no-create")]
    pub no_create: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Zero runs of at least this many bytes are not written (multiple of 512; 0 allocates everything).
    #[arg(short = 'S', long = "sparse-size", value_name = "SPARSE_SIZE")]
    pub sparse_size: Option<String>,
    /// Compress the target (formats that support it).
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Open the sources without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Cache mode of the target (`none` bypasses the host page cache).
    #[arg(short = 't', long = "target-cache", value_name = "CACHE")]
    pub target_cache: Option<String>,
    /// Cache mode of the sources.
    #[arg(short = 'T', long = "source-cache", value_name = "SRC_CACHE")]
    pub source_cache: Option<String>,
    /// Source images, then the target.
    #[arg(required = true, num_args = 2.., value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// How the target is written.
#[derive(Debug)]
struct Target<'a> {
    disk: &'a dyn DiskFile,
    path: &'a Path,
    /// `-S` in bytes; 0 writes everything.
    min_sparse: u64,
    /// Alignment of sparse decisions, in sectors (a power of two).
    alignment: u64,
    /// The target reads as zeros wherever nothing was written (freshly created, no backing file).
    zero_init: bool,
    zeros: Vec<u8>,
}

impl Target<'_> {
    /// Makes `len` bytes at `offset` read as zeros.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if self.min_sparse == 0 {
            // -S 0: allocate, as qemu-img does by writing the zeros as data.
            let mut done = 0;
            while done < len {
                let n = (len - done).min(self.zeros.len() as u64);
                self.disk
                    .write_all_at(offset + done, &self.zeros[..n as usize])
                    .with_path(self.path)?;
                done += n;
            }
            Ok(())
        } else if self.zero_init {
            Ok(())
        } else {
            self.disk
                .write_zeroes(offset, len, true)
                .with_path(self.path)
        }
    }

    /// Writes `data` at `offset`, leaving out zero runs as `-S` says.
    fn data(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.min_sparse == 0 {
            return self.disk.write_all_at(offset, data).with_path(self.path);
        }
        let sectors = data.len().div_ceil(SECTOR);
        let min = (self.min_sparse as usize / SECTOR).max(1);
        let first_sector = offset / SECTOR as u64;
        let mut pos = 0;
        while pos < sectors {
            let (allocated, n) = allocated_sectors_min(
                &data[pos * SECTOR..],
                sectors - pos,
                min,
                first_sector + pos as u64,
                self.alignment,
            );
            let start = pos * SECTOR;
            let end = ((pos + n) * SECTOR).min(data.len());
            if allocated {
                self.disk
                    .write_all_at(offset + start as u64, &data[start..end])
                    .with_path(self.path)?;
            } else {
                self.zero(offset + start as u64, (end - start) as u64)?;
            }
            pos += n;
        }
        Ok(())
    }
}

fn sector(buf: &[u8], i: usize) -> &[u8] {
    let start = (i * SECTOR).min(buf.len());
    &buf[start..((i + 1) * SECTOR).min(buf.len())]
}

/// qemu-img's `is_allocated_sectors`: whether the first of `n` sectors of `buf` holds data, and how many
/// sectors share its status, with run ends aligned to `alignment` sectors (data rounds up, zeros down).
fn allocated_sectors(buf: &[u8], n: usize, sector_num: u64, alignment: u64) -> (bool, usize) {
    if n == 0 {
        return (false, 0);
    }
    let mut zero = is_zero(sector(buf, 0));
    let mut i = 1;
    while i < n && is_zero(sector(buf, i)) == zero {
        i += 1;
    }
    if i == n {
        return (!zero, i);
    }
    let tail = ((sector_num + i as u64) % alignment) as usize;
    if tail != 0 {
        if zero && i <= tail {
            zero = false;
        }
        if zero {
            i -= tail;
        } else {
            i = (i + alignment as usize - tail).min(n);
        }
    }
    (!zero, i)
}

/// qemu-img's `is_allocated_sectors_min`: like [`allocated_sectors`], but a data run swallows zero runs
/// shorter than `min` sectors, so short holes do not split writes.
fn allocated_sectors_min(
    buf: &[u8],
    n: usize,
    min: usize,
    sector_num: u64,
    alignment: u64,
) -> (bool, usize) {
    let min = min.min(n);
    let (allocated, first) = allocated_sectors(buf, n, sector_num, alignment);
    if !allocated {
        return (false, first);
    }
    let mut used = first;
    let mut checked = first;
    while checked < n {
        let (allocated, run) = allocated_sectors(
            &buf[checked * SECTOR..],
            n - checked,
            sector_num + checked as u64,
            alignment,
        );
        checked += run;
        if allocated {
            used = checked;
        } else if run >= min {
            break;
        }
    }
    (true, used)
}

/// Copies all of `source` to `target` at `base`.
fn copy_source(
    source: &dyn DiskFile,
    source_path: &Path,
    target: &Target<'_>,
    base: u64,
    bar: &ProgressBar,
) -> Result<()> {
    let size = source.logical_size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < size {
        let want = (size - offset).min(CHUNK);
        let extent = map_extent(source, source_path, offset, want)?;
        let len = extent.length;
        if extent.reads_as_zero() {
            target.zero(base + offset, len)?;
        } else {
            let data = &mut buf[..len as usize];
            source.read_exact_at(offset, data).with_path(source_path)?;
            target.data(base + offset, data)?;
        }
        offset += len;
        bar.inc(len);
    }
    Ok(())
}

/// Parses `-S` as qemu-img does.
fn parse_sparse(text: Option<&str>) -> Result<u64> {
    let Some(text) = text else {
        return Ok(DEFAULT_SPARSE);
    };
    match blk_factory::parse_size(text) {
        Ok(n) if n % SECTOR as u64 == 0 && n <= MAX_SPARSE => Ok(n),
        _ => Err(invalid(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE}. \
             Select 0 to disable sparse detection (fully allocates output)."
        ))),
    }
}

/// Runs `blk convert`.
pub fn run(args: ConvertArgs) -> Result<u8> {
    if wants_option_help(&args.options) {
        let format: ImageFormat = args.output_format.parse()?;
        return print_option_help(format);
    }
    let Some((target_path, sources)) = args.files.split_last() else {
        return Err(invalid("Expecting at least one source and a target file"));
    };
    if sources.is_empty() {
        return Err(invalid("Expecting one image file name"));
    }
    let out_format: ImageFormat = args
        .output_format
        .parse()
        .map_err(|e: Error| e.with_path(target_path))?;
    let min_sparse = parse_sparse(args.sparse_size.as_deref())?;
    let options = parse_options(&args.options).map_err(|e| e.with_path(target_path))?;
    if args.compress {
        return Err(compression_unsupported(out_format).with_path(target_path));
    }
    let source_direct = cache_is_direct(args.source_cache.as_deref())?;
    let target_direct = cache_is_direct(args.target_cache.as_deref())?;

    let mut opened = Vec::with_capacity(sources.len());
    for path in sources {
        let spec = OpenSpec {
            format: args.format.as_deref(),
            read_only: true,
            force_share: args.force_share,
            direct: source_direct,
        };
        opened.push((open_image(path, spec)?, path));
    }
    let total = opened
        .iter()
        .try_fold(0u64, |acc, (d, _)| acc.checked_add(d.logical_size()))
        .ok_or_else(|| invalid("the sources' sizes add up to more than 16 EiB"))?;

    if !args.no_create {
        refuse_overwriting_source(target_path, sources)?;
        let params = CreateParams {
            path: target_path.clone(),
            format: out_format,
            size: Some(total),
            options,
            backing_file: None,
            backing_format: None,
        };
        // qemu-img convert creates silently.
        create_image(&params, true)?;
    }
    let spec = OpenSpec {
        format: Some(out_format.name()),
        read_only: false,
        force_share: false,
        direct: target_direct,
    };
    let target_disk = open_image(target_path, spec)?;
    if target_disk.logical_size() < total {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "output file is smaller than input file",
        )
        .with_path(target_path));
    }
    let min_sectors = (min_sparse / SECTOR as u64).max(1);
    let target = Target {
        disk: &*target_disk,
        path: target_path,
        min_sparse,
        alignment: 1u64 << min_sectors.ilog2(),
        zero_init: !args.no_create,
        zeros: if min_sparse == 0 {
            vec![0u8; CHUNK as usize]
        } else {
            Vec::new()
        },
    };
    let bar = progress::bar(total, args.progress && !args.quiet);
    let mut base = 0;
    for (disk, path) in &opened {
        copy_source(&**disk, path, &target, base, &bar)?;
        base += disk.logical_size();
    }
    target.disk.flush().with_path(target_path)?;
    bar.finish();
    Ok(0)
}

/// `-c` for a target format: qemu-img's error for formats without compressed clusters; for the others,
/// `DiskFile` has no compressed-write path yet.
fn compression_unsupported(format: ImageFormat) -> Error {
    match format {
        ImageFormat::Qcow2 => Error::new(
            ErrorKind::Unsupported,
            "blk cannot write compressed clusters yet",
        ),
        _ => Error::new(
            ErrorKind::Unsupported,
            "Compression not supported for this file format",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(buf: &[u8], min: usize, alignment: u64) -> Vec<(bool, usize)> {
        let sectors = buf.len().div_ceil(SECTOR);
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < sectors {
            let (a, n) = allocated_sectors_min(
                &buf[pos * SECTOR..],
                sectors - pos,
                min,
                pos as u64,
                alignment,
            );
            assert!(n > 0);
            out.push((a, n));
            pos += n;
        }
        out
    }

    #[test]
    fn sparse_runs_follow_qemu() {
        // 16 sectors: data, 2 zero, data, 10 zero, data (sector 15).
        let mut buf = vec![0u8; 16 * SECTOR];
        for s in [0usize, 3, 15] {
            buf[s * SECTOR] = 1;
        }
        assert_eq!(runs(&buf, 8, 1), vec![(true, 4), (false, 11), (true, 1)]);
        // A leading zero run is sparse whatever its length.
        let mut buf = vec![0u8; 4 * SECTOR];
        buf[SECTOR] = 1;
        assert_eq!(runs(&buf, 8, 1), vec![(false, 1), (true, 1), (false, 2)]);
        // Alignment 8: data ends round up, zero runs start aligned.
        let mut buf = vec![0u8; 32 * SECTOR];
        buf[0] = 1;
        assert_eq!(runs(&buf, 8, 8), vec![(true, 8), (false, 24)]);
        // A partial last sector.
        let buf = vec![7u8; 1000];
        assert_eq!(runs(&buf, 8, 8), vec![(true, 2)]);
    }

    #[test]
    fn sparse_sizes() {
        assert_eq!(parse_sparse(None).unwrap(), 4096);
        assert_eq!(parse_sparse(Some("0")).unwrap(), 0);
        assert_eq!(parse_sparse(Some("1k")).unwrap(), 1024);
        assert!(parse_sparse(Some("1000")).is_err());
        assert!(parse_sparse(Some("32M")).is_err());
    }
}
