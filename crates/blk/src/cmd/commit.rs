//! `blk commit`: qemu-img commit. Copies what an image stores itself into its backing file (zero clusters as
//! zeros), growing the backing file when it is shorter, then empties the image unless `-d`. With `-b BASE`
//! deeper in the backing chain, what the image and the images between it and BASE store (read through the
//! chain, as the image shows it) goes into BASE, and every image above BASE is left as it was (`-b` implies
//! `-d`), as QEMU's commit does.

use std::path::PathBuf;

use blk_core::{DiskFile, Error, ErrorKind, ExtentKind, LockMode, Result};
use blk_factory::{resize_disk_file, ResizeParams};
use clap::Args;

use super::rate_limit::RateLimit;
use super::{cache_is_direct, open_disk, open_image, progress, OpenSpec, CHUNK};

/// Arguments of `blk commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Cache mode (`none` is O_DIRECT).
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// The image to commit into: any image of the backing chain (by default the image's own backing file).
    /// Implies `-d`.
    #[arg(short = 'b', long = "base", value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// Do not empty the image after the commit.
    #[arg(short = 'd', long = "drop")]
    pub keep: bool,
    /// Show progress.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// I/O rate limit in bytes per second (size suffixes allowed): the data copied is paced to it.
    #[arg(short = 'r', long = "rate", value_name = "RATE")]
    pub rate: Option<String>,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `blk commit`.
pub fn run(args: CommitArgs) -> Result<u8> {
    let path = &args.filename;
    let rate = RateLimit::parse(args.rate.as_deref())?;
    let direct = cache_is_direct(args.cache.as_deref())?;
    // The image alone (its backing file is opened writable below, not read-only through the image).
    let spec = OpenSpec {
        format: args.format.as_deref(),
        direct,
        skip_backing: true,
        ..OpenSpec::default()
    };
    let top = open_image(path, spec)?;
    let info = top.admin.image_info().map_err(|e| e.with_path(path))?;
    let Some(base_path) = info.full_backing_filename.clone() else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Image does not have a backing file",
        )
        .with_path(path));
    };
    let Some(base_format) = info.backing_format.clone() else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the backing file's format is not recorded in the image (it is never probed)",
        )
        .with_path(path));
    };
    // The base: the backing file, or the image `-b` names at some depth of the chain.
    let (base_path, base_format, base_depth) = match &args.base {
        None => (base_path, base_format, 1),
        Some(base) => find_in_chain(
            path,
            base,
            (base_path, base_format, info.backing_filename.clone()),
            direct,
        )?,
    };
    let size = top.disk.logical_size();
    let base_spec = OpenSpec {
        format: Some(&base_format),
        direct,
        ..OpenSpec::default()
    };
    // As QEMU's commit: a shorter backing file grows to the image's size first.
    let base_size = open_disk(
        &base_path,
        OpenSpec {
            read_only: true,
            ..base_spec
        },
    )?
    .logical_size();
    if base_size < size {
        let params = ResizeParams {
            format: base_format.parse().ok(),
            lock: LockMode::Auto,
            ..ResizeParams::new(&base_path, size)
        };
        resize_disk_file(&params).map_err(|e| e.with_path(&base_path))?;
    }
    // Deeper than the backing file: the chain above the base read as the image shows it (no lock taken: the
    // base is opened writable below, and only ranges stored above it are read).
    let chain = if base_depth > 1 {
        Some(open_disk(
            path,
            OpenSpec {
                direct,
                ..OpenSpec::read_only(args.format.as_deref(), true)
            },
        )?)
    } else {
        None
    };
    let base = open_disk(&base_path, base_spec)?;
    copy_own_data(
        chain.as_deref().unwrap_or(&*top.disk),
        &*base,
        size,
        base_depth,
        rate.as_ref(),
        args.progress && !args.quiet,
    )
    .map_err(|e| e.with_path(path))?;
    base.flush().map_err(|e| e.with_path(&base_path))?;
    drop(base);
    if !args.keep && args.base.is_none() {
        top.admin.make_empty().map_err(|e| e.with_path(path))?;
        top.disk.flush().map_err(|e| e.with_path(path))?;
    }
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

/// Where `-b BASE` lies in the backing chain below `path` (whose backing file is `backing`, of format
/// `backing_format`, recorded as `recorded`): its path, format and depth (1: the backing file). As QEMU's
/// `bdrv_find_backing_image`: a layer matches when BASE is the name its overlay records, or names the same
/// file taken relative to the overlay's directory; an image not in the chain is an error ("Did not find ...
/// in the backing chain of ...").
fn find_in_chain(
    path: &std::path::Path,
    base: &std::path::Path,
    (backing, backing_format, recorded): (PathBuf, String, Option<String>),
    direct: bool,
) -> Result<(PathBuf, String, usize)> {
    /// Deeper chains are not walked (the factory refuses to open them anyway).
    const MAX_DEPTH: usize = 64;
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    let (mut overlay, mut layer, mut format, mut recorded) =
        (path.to_path_buf(), backing, backing_format, recorded);
    for depth in 1..=MAX_DEPTH {
        let relative = overlay
            .parent()
            .map_or_else(|| base.to_path_buf(), |dir| dir.join(base));
        let same_file = canonical(&relative).is_some_and(|b| canonical(&layer) == Some(b));
        if same_file || recorded.as_deref().map(std::path::Path::new) == Some(base) {
            return Ok((layer, format, depth));
        }
        let spec = OpenSpec {
            direct,
            skip_backing: true,
            ..OpenSpec::read_only(Some(&format), true)
        };
        let info = open_image(&layer, spec)?
            .admin
            .image_info()
            .map_err(|e| e.with_path(&layer))?;
        match (info.full_backing_filename, info.backing_format) {
            (Some(next), Some(next_format)) => {
                overlay = std::mem::replace(&mut layer, next);
                format = next_format;
                recorded = info.backing_filename;
            }
            _ => break,
        }
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "Did not find '{}' in the backing chain of '{}'",
            base.display(),
            path.display()
        ),
    ))
}

/// Copies every run `top` stores above the base at `base_depth` (depth below it: 0 is the image itself) into
/// `base`: data as data, zero runs as zeros that may be unmapped (as QEMU's commit leaves holes there).
fn copy_own_data(
    top: &dyn DiskFile,
    base: &dyn DiskFile,
    size: u64,
    base_depth: usize,
    rate: Option<&RateLimit>,
    progress: bool,
) -> Result<()> {
    let bar = progress::bar(size, progress);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let extent = top.map(pos, (size - pos).min(CHUNK))?;
        let len = extent.length.max(1).min(size - pos);
        if (extent.depth as usize) < base_depth {
            match extent.kind {
                ExtentKind::Unallocated => {}
                ExtentKind::Zero => base.write_zeroes(pos, len, true)?,
                ExtentKind::Data | ExtentKind::AllocatedZero => {
                    // `len <= CHUNK`, a usize.
                    let data = &mut buf[..len as usize];
                    top.read_exact_at(pos, data)?;
                    if let Some(rate) = rate {
                        rate.pace(len);
                    }
                    base.write_all_at(pos, data)?;
                }
            }
        }
        pos += len;
        bar.set_position(pos);
    }
    bar.finish();
    Ok(())
}
