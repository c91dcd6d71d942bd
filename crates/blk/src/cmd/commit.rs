//! `blk commit`: qemu-img commit. Copies what an image stores itself into its backing file (zero clusters as
//! zeros), growing the backing file when it is shorter, then empties the image unless `-d`.

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
    /// The image to commit into: only the image's own backing file is supported. Implies `-d`.
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
    if let Some(base) = &args.base {
        let same = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        if same(base) != same(&base_path) || same(base).is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "blk commits only into the image's own backing file ('{}')",
                    base_path.display()
                ),
            )
            .with_path(path));
        }
    }
    let Some(base_format) = info.backing_format.clone() else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the backing file's format is not recorded in the image (it is never probed)",
        )
        .with_path(path));
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
    let base = open_disk(&base_path, base_spec)?;
    copy_own_data(
        &*top.disk,
        &*base,
        size,
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

/// Copies every run `top` stores itself (depth 0) into `base`: data as data, zero runs as zeros that may be
/// unmapped (as QEMU's commit leaves holes there).
fn copy_own_data(
    top: &dyn DiskFile,
    base: &dyn DiskFile,
    size: u64,
    rate: Option<&RateLimit>,
    progress: bool,
) -> Result<()> {
    let bar = progress::bar(size, progress);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let extent = top.map(pos, (size - pos).min(CHUNK))?;
        let len = extent.length.max(1).min(size - pos);
        if extent.depth == 0 {
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
