//! `blk convert`: qemu-img convert. Copies one or more source images (concatenated) into a target of any
//! format, in chunks through `DiskFile`, keeping the target sparse as qemu-img does:
//!
//! - ranges the source maps as zero or unallocated are not read; on a freshly created target they are skipped
//!   (it reads as zeros already), on an existing one (`-n`) they are zeroed with `write_zeroes`;
//! - in data ranges, zero runs of at least `-S` bytes (default 4 KiB) are treated the same way, using qemu's
//!   `is_allocated_sectors_min` rule (a leading zero run is always sparse, short runs after data stay data);
//! - `-S 0` writes every byte, zeros included, so the target is fully allocated;
//! - `-B` creates the target over a backing file and copies only what the sources' top layers allocate (the
//!   rest is assumed to be in the new backing file, as qemu-img assumes);
//! - `-c` writes whole clusters through [`ImageAdmin::write_compressed`], leaving all-zero clusters out;
//! - `--bitmaps` copies the source's persistent dirty bitmaps (name, granularity, enabled, dirty granules)
//!   after the data, refusing inconsistent ones unless `--skip-broken-bitmaps` (see `bitmaps`).

use std::path::{Path, PathBuf};

use blk_core::{
    AsyncDiskFile, DiskFile, Error, ErrorKind, Extent, ExtentKind, ImageAdmin, Result, ResultExt,
    SnapshotSelector,
};
use blk_factory::{CreateParams, ImageFormat};
use clap::Args;

mod bitmaps;

use super::create::create_image;
use super::rate_limit::RateLimit;
use super::scan::{is_zero, SECTOR};
use super::sparse::{allocated_sectors_min, parse_sparse};
use super::{
    cache_is_direct, invalid, map_extent, open_disk, open_image, parse_format, parse_options,
    print_option_help, progress, refuse_overwriting_source, wants_option_help, OpenSpec, CHUNK,
};

/// Arguments of `blk convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Format of the source images (probed when omitted).
    #[arg(short = 'f', long = "source-format", value_name = "FMT")]
    pub format: Option<String>,
    /// Format of the target image.
    #[arg(
        short = 'O',
        long = "target-format",
        visible_alias = "output-format",
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
    /// Create the target over this backing file, copying only what the sources' top layers allocate.
    #[arg(short = 'B', long = "backing", value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// Format of the `-B` backing file (required with `-B`: it is never probed).
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Open the sources without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Convert this internal snapshot of the (single) source instead of its current disk:
    /// `snapshot.id=ID[,snapshot.name=NAME]`, `snapshot.name=NAME` or an ID or name.
    #[arg(short = 'l', long = "source-snapshot", value_name = "SNAPSHOT_PARAM")]
    pub snapshot: Option<String>,
    /// Parallel requests qemu-img would use (1 to 16): validated as qemu-img does; blk copies in large
    /// sequential chunks, so the value does not change the result.
    #[arg(short = 'm', long = "parallel", value_name = "NUM_COROUTINES")]
    pub coroutines: Option<String>,
    /// Allow out-of-order writes to the target (accepted: blk's writes are in order, which is always allowed).
    #[arg(short = 'W', long = "oob-writes")]
    pub out_of_order: bool,
    /// With `-n`: the existing target already reads as zeros, so zero runs are not written.
    #[arg(long = "target-is-zero")]
    pub target_is_zero: bool,
    /// Copy offloading (accepted as in qemu-img; refused with `-c` and `-S`, as there).
    #[arg(short = 'C', long = "copy-range-offloading")]
    pub copy_offload: bool,
    /// Keep copying past read errors of the sources: what cannot be read is retried one 512-byte sector at a
    /// time, and sectors that still fail are written as zeros, each reported on stderr.
    #[arg(long = "salvage")]
    pub salvage: bool,
    /// Limit the copy to this many bytes of data per second (`16M`; zeros are not counted).
    #[arg(short = 'r', long = "rate", value_name = "RATE")]
    pub rate: Option<String>,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Copy the persistent dirty bitmaps of the (single) source.
    #[arg(long = "bitmaps")]
    pub bitmaps: bool,
    /// With `--bitmaps`: skip inconsistent bitmaps (with a warning) instead of failing.
    #[arg(long = "skip-broken-bitmaps")]
    pub skip_broken_bitmaps: bool,
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
    /// The target's administration: compressed writes.
    admin: &'a dyn ImageAdmin,
    path: &'a Path,
    /// `-S` in bytes; 0 writes everything.
    min_sparse: u64,
    /// Alignment of sparse decisions, in sectors (a power of two).
    alignment: u64,
    /// The target reads as zeros wherever nothing was written (freshly created, no backing file).
    zero_init: bool,
    zeros: Vec<u8>,
    /// `-r`: the data written is paced to this rate.
    rate: Option<RateLimit>,
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
        if let Some(rate) = &self.rate {
            rate.pace(data.len() as u64);
        }
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

/// One source image of a convert.
struct Source<'a> {
    disk: &'a dyn DiskFile,
    path: &'a Path,
    /// `--salvage`: read errors are reported and read as zeros.
    salvage: bool,
}

/// qemu-img's unit of `--salvage`: a failed read is retried one sector at a time.
const SALVAGE_SECTOR: usize = 512;

/// Reads `buf.len()` bytes at `offset` of `disk`; with `salvage`, a failed read is retried one sector at a
/// time and the sectors that still fail read as zeros, each reported as qemu-img reports it.
fn read_source(
    disk: &dyn DiskFile,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
    salvage: bool,
) -> Result<()> {
    match disk.read_exact_at(offset, buf) {
        Err(_) if salvage => {
            for (i, sector) in buf.chunks_mut(SALVAGE_SECTOR).enumerate() {
                let at = offset + (i * SALVAGE_SECTOR) as u64;
                if let Err(e) = disk.read_exact_at(at, sector) {
                    eprintln!(
                        "blk: warning: error while reading offset {at}: {}",
                        super::strerror(e.errno())
                    );
                    sector.fill(0);
                }
            }
            Ok(())
        }
        result => result.with_path(path),
    }
}

/// Copies all of `source` to `target` at `base`. With `top_only` (`-B`), ranges the source's top layer does
/// not allocate are left to the target's backing file. With `--salvage`, a range whose allocation cannot be
/// read is copied as data, one sector at a time.
fn copy_source(
    source: &Source<'_>,
    target: &Target<'_>,
    base: u64,
    top_only: bool,
    bar: &progress::Progress,
) -> Result<()> {
    let size = source.disk.logical_size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < size {
        let want = (size - offset).min(CHUNK);
        let (len, skip, zero) = match map_extent(source.disk, source.path, offset, want) {
            Ok(extent) => (
                extent.length,
                top_only && !in_top_layer(&extent),
                extent.reads_as_zero(),
            ),
            Err(_) if source.salvage => (want.min(SALVAGE_SECTOR as u64), false, false),
            Err(e) => return Err(e),
        };
        if skip {
            // Left unallocated: the target's backing file answers.
        } else if zero {
            target.zero(base + offset, len)?;
            if target.min_sparse == 0 {
                bar.inc(len);
            }
        } else {
            let data = &mut buf[..len as usize];
            read_source(source.disk, source.path, offset, data, source.salvage)?;
            target.data(base + offset, data)?;
            bar.inc(len);
        }
        offset += len;
    }
    Ok(())
}

/// Whether a source run is allocated in the source's own top layer (qemu-img's test for `-B`).
fn in_top_layer(extent: &Extent) -> bool {
    extent.depth == 0 && extent.kind != ExtentKind::Unallocated
}

/// The sources of a convert, concatenated into one guest address space.
struct Sources<'a> {
    disks: Vec<(&'a dyn DiskFile, &'a Path, u64)>,
    /// `--salvage`: read errors are reported and read as zeros.
    salvage: bool,
}

impl Sources<'_> {
    /// Reads `buf.len()` bytes at concatenated offset `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        for &(disk, path, base) in &self.disks {
            let size = disk.logical_size();
            let pos = offset + done as u64;
            if done == buf.len() {
                break;
            }
            if pos >= base + size || pos < base {
                continue;
            }
            let n = ((base + size - pos) as usize).min(buf.len() - done);
            read_source(
                disk,
                path,
                pos - base,
                &mut buf[done..done + n],
                self.salvage,
            )?;
            done += n;
        }
        Ok(())
    }

    /// Whether any byte of `len` bytes at concatenated `offset` is allocated in a source's top layer.
    fn top_allocated(&self, offset: u64, len: u64) -> Result<bool> {
        for &(disk, path, base) in &self.disks {
            let size = disk.logical_size();
            let start = offset.max(base);
            let end = (offset + len).min(base + size);
            let mut pos = start;
            while pos < end {
                let extent = map_extent(disk, path, pos - base, end - pos)?;
                if in_top_layer(&extent) {
                    return Ok(true);
                }
                pos += extent.length;
            }
        }
        Ok(false)
    }
}

/// `-c`: copies `total` bytes of `sources` one compression unit at a time; all-zero units are left out (or
/// zeroed when the target does not read as zeros), the rest go through [`ImageAdmin::write_compressed`].
fn copy_compressed(
    sources: &Sources<'_>,
    target: &Target<'_>,
    unit: u64,
    total: u64,
    top_only: bool,
    bar: &progress::Progress,
) -> Result<()> {
    let unit_len = usize::try_from(unit)
        .ok()
        .filter(|&n| n > 0 && n <= 64 << 20)
        .ok_or_else(|| invalid(format!("unusable compression unit of {unit} bytes")))?;
    let mut buf = vec![0u8; unit_len];
    let mut offset = 0;
    while offset < total {
        let len = unit.min(total - offset);
        let data = &mut buf[..len as usize];
        if !top_only || sources.top_allocated(offset, len)? {
            sources.read(offset, data)?;
            if is_zero(data) {
                target.zero(offset, len)?;
            } else {
                if let Some(rate) = &target.rate {
                    rate.pace(len);
                }
                target
                    .admin
                    .write_compressed(offset, data)
                    .with_path(target.path)?;
            }
        }
        offset += len;
        bar.inc(len);
    }
    Ok(())
}

/// What `-p` counts, as qemu-img counts it: the bytes [`copy_source`] copies as data (and, with `-S 0`, the
/// zeros it writes), not the ranges left sparse or to the backing file.
fn progress_total(
    sources: &[(Box<dyn AsyncDiskFile>, &PathBuf)],
    top_only: bool,
    min_sparse: u64,
) -> Result<u64> {
    let mut total = 0u64;
    for (source, path) in sources {
        let size = source.logical_size();
        let mut offset = 0;
        while offset < size {
            let extent = map_extent(&**source, path, offset, (size - offset).min(CHUNK))?;
            let counted = if top_only && !in_top_layer(&extent) {
                false
            } else {
                !extent.reads_as_zero() || min_sparse == 0
            };
            if counted {
                total = total.saturating_add(extent.length);
            }
            offset += extent.length;
        }
    }
    Ok(total)
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
    if let Some(text) = &args.coroutines {
        match text.parse::<u32>() {
            Ok(1..=16) => {}
            Ok(_) => {
                return Err(invalid(
                    "Invalid number of coroutines specified. Must be between 1 and 16.",
                ))
            }
            Err(_) => {
                return Err(invalid(format!(
                    "Invalid number of coroutines specified: '{text}'."
                )))
            }
        }
    }
    if args.target_is_zero && !args.no_create {
        return Err(invalid("--target-is-zero requires use of -n flag"));
    }
    if args.skip_broken_bitmaps && !args.bitmaps {
        return Err(invalid("Use of --skip-broken-bitmaps requires --bitmaps"));
    }
    if args.copy_offload && args.compress {
        return Err(invalid("Cannot enable copy offloading when -c is used"));
    }
    if args.copy_offload && args.sparse_size.is_some() {
        return Err(invalid("Cannot enable copy offloading when -S is used"));
    }
    if args.copy_offload && args.salvage {
        return Err(invalid("Cannot use copy offloading in salvaging mode"));
    }
    let min_sparse = parse_sparse(args.sparse_size.as_deref())?;
    let rate = RateLimit::parse(args.rate.as_deref())?;
    let options = parse_options(&args.options).map_err(|e| e.with_path(target_path))?;
    // As qemu-img (`img_add_key_secrets`): the target is opened with the secret its options name.
    for (key, id) in &options {
        if key.ends_with("key-secret") {
            super::objects::secret(id).map_err(|e| e.with_path(target_path))?;
            super::image_opts::remember_key_secret(target_path, id);
        }
    }
    let backing_format =
        parse_format(args.backing_format.as_deref()).map_err(|e| e.with_path(target_path))?;
    if args.backing.is_some() {
        if backing_format.is_none() {
            return Err(invalid(
                "Use of backing file requires explicit backing format",
            ));
        }
        if args.no_create {
            return Err(invalid("Can't use -n with -B: the target already exists"));
        }
    }
    let source_direct = cache_is_direct(args.source_cache.as_deref())?;
    let target_direct = cache_is_direct(args.target_cache.as_deref())?;

    let snapshot = args.snapshot.as_deref().map(SnapshotSelector::parse);
    if snapshot.is_some() && sources.len() > 1 {
        return Err(invalid("No support for concatenating multiple snapshot"));
    }
    let mut opened = Vec::with_capacity(sources.len());
    for path in sources {
        let spec = OpenSpec {
            format: args.format.as_deref(),
            read_only: true,
            force_share: args.force_share,
            direct: source_direct,
            check_mode: false,
            skip_backing: false,
            snapshot: snapshot.as_ref(),
        };
        opened.push((open_disk(path, spec)?, path));
    }
    let source_bitmaps = if args.bitmaps {
        let spec = OpenSpec {
            format: args.format.as_deref(),
            read_only: true,
            force_share: args.force_share,
            direct: source_direct,
            check_mode: false,
            skip_backing: true,
            snapshot: snapshot.as_ref(),
        };
        Some(bitmaps::check_source(
            sources,
            spec,
            args.skip_broken_bitmaps,
        )?)
    } else {
        None
    };
    let total = opened
        .iter()
        .try_fold(0u64, |acc, (d, _)| acc.checked_add(d.logical_size()))
        .ok_or_else(|| invalid("the sources' sizes add up to more than 16 EiB"))?;

    let compression_unsupported = || {
        Error::new(
            ErrorKind::Unsupported,
            "Compression not supported for this file format",
        )
        .with_path(target_path)
    };
    // As qemu-img: refused before the target is created.
    if args.compress && !out_format.supports_compression() {
        return Err(compression_unsupported());
    }
    if !args.no_create {
        refuse_overwriting_source(target_path, sources)?;
        let params = CreateParams {
            path: target_path.clone(),
            format: out_format,
            size: Some(total),
            options,
            backing_file: args.backing.clone(),
            backing_format,
            unsafe_backing: false,
        };
        // qemu-img convert creates silently.
        create_image(&params, true)?;
    }
    let spec = OpenSpec {
        format: Some(out_format.name()),
        read_only: false,
        force_share: false,
        check_mode: false,
        skip_backing: false,
        snapshot: None,
        direct: target_direct,
    };
    let target_image = open_image(target_path, spec)?;
    if source_bitmaps.is_some() && target_image.admin.dirty_bitmaps().is_none() {
        return Err(invalid(format!(
            "Format driver '{}' does not support bitmaps",
            out_format.name()
        )));
    }
    let target_disk = &*target_image.disk;
    if target_disk.logical_size() < total {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "output file is smaller than input file",
        )
        .with_path(target_path));
    }
    let min_sectors = (min_sparse / SECTOR as u64).max(1);
    let target = Target {
        disk: target_disk,
        admin: &*target_image.admin,
        path: target_path,
        min_sparse,
        alignment: 1u64 << min_sectors.ilog2(),
        zero_init: args.target_is_zero || (!args.no_create && target_image.admin.has_zero_init()),
        zeros: if min_sparse == 0 {
            vec![0u8; CHUNK as usize]
        } else {
            Vec::new()
        },
        rate,
    };
    let top_only = args.backing.is_some();
    let show_progress = args.progress && !args.quiet;
    let bar = if show_progress && !args.compress {
        progress::bar(progress_total(&opened, top_only, min_sparse)?, true)
    } else {
        progress::bar(total, show_progress)
    };
    if args.compress {
        let Some(unit) = target_image.admin.compressed_write_size() else {
            return Err(compression_unsupported());
        };
        let mut disks = Vec::with_capacity(opened.len());
        let mut base = 0;
        for (disk, path) in &opened {
            disks.push((&**disk as &dyn DiskFile, path.as_path(), base));
            base += disk.logical_size();
        }
        let sources = Sources {
            disks,
            salvage: args.salvage,
        };
        copy_compressed(&sources, &target, unit, total, top_only, &bar)?;
    } else {
        let mut base = 0;
        for (disk, path) in &opened {
            let source = Source {
                disk: &**disk,
                path,
                salvage: args.salvage,
            };
            copy_source(&source, &target, base, top_only, &bar)?;
            base += disk.logical_size();
        }
    }
    target.disk.flush().with_path(target_path)?;
    if let Some(source) = &source_bitmaps {
        bitmaps::copy(source, &*target_image.admin, target_path)?;
    }
    bar.finish();
    Ok(0)
}
