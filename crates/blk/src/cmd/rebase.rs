//! `blk rebase`: qemu-img rebase. Changes the backing file a QCOW2 image records; without `-u` ("safe mode")
//! it first copies into the image every cluster where the old backing chain and the new backing file differ,
//! so the guest sees the same disk afterwards.

use std::path::PathBuf;

use blk_core::{DiskFile, Error, ErrorKind, ExtentKind, LockMode, Result};
use blk_factory::{change_backing_file, ChangeBackingParams};
use clap::Args;

use super::{cache_is_direct, open_disk, open_image, parse_format, progress, OpenSpec, CHUNK};

/// Arguments of `blk rebase`.
#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// The new backing file (relative names are relative to the image's directory); `""` removes it.
    #[arg(
        short = 'b',
        long = "backing",
        value_name = "BACKING_FILE",
        default_value = ""
    )]
    pub backing: String,
    /// The new backing file's format (required with a backing file).
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Only record the new backing file ("unsafe mode"): the guest data is not compared or copied.
    #[arg(short = 'u', long = "unsafe", visible_alias = "backing-unsafe")]
    pub unsafe_mode: bool,
    /// Cache mode of the image (`none` is O_DIRECT).
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Cache mode of the backing files.
    #[arg(short = 'T', long = "backing-cache", value_name = "SRC_CACHE")]
    pub source_cache: Option<String>,
    /// Write the clusters copied into the image compressed (formats that store compressed clusters).
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show progress.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Open without taking a lock (unsafe mode only).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `blk rebase`.
pub fn run(args: RebaseArgs) -> Result<u8> {
    let path = &args.filename;
    let format = parse_format(args.format.as_deref()).map_err(|e| e.with_path(path))?;
    let backing_format =
        parse_format(args.backing_format.as_deref()).map_err(|e| e.with_path(path))?;
    let backing = Some(args.backing.clone()).filter(|b| !b.is_empty());
    let could_not = |e: Error| {
        Error::new(
            e.kind(),
            format!(
                "Could not change the backing file to '{}': {}",
                args.backing,
                // The reason once, naming the file it is about when that is not the image itself.
                match e.path().filter(|p| *p != path.as_path()) {
                    Some(other) => format!("{}: {}", other.display(), e.message()),
                    None => e.message().to_string(),
                }
            ),
        )
        .with_path(path)
    };
    if backing.is_some() && backing_format.is_none() {
        // Checked before anything is copied (qemu-img copies first and fails at the end).
        return Err(could_not(Error::new(
            ErrorKind::InvalidInput,
            "backing format must be specified",
        )));
    }
    if args.force_share && !args.unsafe_mode {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "-U can only be used with -u (unsafe mode)",
        )
        .with_path(path));
    }
    if !args.unsafe_mode {
        copy_differences(&args, backing.as_deref())?;
    }
    let params = ChangeBackingParams {
        path: path.clone(),
        format,
        backing_file: backing,
        backing_format,
        lock: if args.force_share {
            LockMode::None
        } else {
            LockMode::Auto
        },
    };
    change_backing_file(&params).map_err(could_not)?;
    Ok(0)
}

/// Safe mode: copies into the image, in whole clusters, the guest data of every range the image does not
/// allocate itself where the old backing chain and the new backing file (zeros past its end, or everywhere
/// without one) read differently.
fn copy_differences(args: &RebaseArgs, backing: Option<&str>) -> Result<()> {
    let path = &args.filename;
    let spec = OpenSpec {
        format: args.format.as_deref(),
        direct: cache_is_direct(args.cache.as_deref())?,
        ..OpenSpec::default()
    };
    let image = open_image(path, spec)?;
    let new_backing = match backing {
        Some(name) => {
            let full = blk_core::resolve_relative_to(path, std::path::Path::new(name));
            let spec = OpenSpec {
                format: args.backing_format.as_deref(),
                read_only: true,
                direct: cache_is_direct(args.source_cache.as_deref())?,
                ..OpenSpec::default()
            };
            Some(open_disk(&full, spec)?)
        }
        None => None,
    };
    let size = image.disk.logical_size();
    let cluster = image
        .admin
        .image_info()
        .map_err(|e| e.with_path(path))?
        .cluster_size
        .unwrap_or(64 << 10)
        .max(512);
    if args.compress && image.admin.compressed_write_size().is_none() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "Compression not supported for this file format",
        )
        .with_path(path));
    }
    let admin = args.compress.then_some(&*image.admin);
    let image = &*image.disk;
    let step = (CHUNK / cluster).max(1) * cluster;
    let bar = progress::bar(size, args.progress && !args.quiet);
    let mut old = vec![0u8; step as usize];
    let mut new = vec![0u8; step as usize];
    let mut pos = 0;
    while pos < size {
        let extent = image
            .map(pos, (size - pos).min(step))
            .map_err(|e| e.with_path(path))?;
        let len = extent.length.max(1).min(size - pos);
        let own = extent.depth == 0 && extent.kind != ExtentKind::Unallocated;
        if !own {
            // `len <= step`, a usize.
            let old = &mut old[..len as usize];
            let new = &mut new[..len as usize];
            image
                .read_exact_at(pos, old)
                .map_err(|e| e.with_path(path))?;
            match &new_backing {
                Some(disk) => read_zero_padded(&**disk, pos, new)?,
                None => new.fill(0),
            }
            copy_differing_clusters(image, admin, pos, old, new, cluster)
                .map_err(|e| e.with_path(path))?;
        }
        pos += len;
        bar.set_position(pos);
    }
    bar.finish();
    image.flush().map_err(|e| e.with_path(path))
}

/// Reads `buf.len()` bytes at `offset` of `disk`, zeros past its end.
fn read_zero_padded(disk: &dyn DiskFile, offset: u64, buf: &mut [u8]) -> Result<()> {
    let inside = disk
        .logical_size()
        .saturating_sub(offset)
        .min(buf.len() as u64) as usize;
    if inside > 0 {
        disk.read_exact_at(offset, &mut buf[..inside])?;
    }
    buf[inside..].fill(0);
    Ok(())
}

/// Writes the runs of whole clusters (clipped to the run at `offset`) where `old` and `new` differ, with the
/// old data; compressed, one cluster at a time, when `compressed` is given (`-c`; `offset` and `old.len()` are
/// whole clusters, or end at the end of the disk).
fn copy_differing_clusters(
    image: &dyn DiskFile,
    compressed: Option<&dyn blk_core::ImageAdmin>,
    offset: u64,
    old: &[u8],
    new: &[u8],
    cluster: u64,
) -> Result<()> {
    let end = offset + old.len() as u64;
    let mut at = offset;
    while at < end {
        let unit_end = ((at / cluster + 1) * cluster).min(end);
        let (a, b) = ((at - offset) as usize, (unit_end - offset) as usize);
        if old[a..b] != new[a..b] {
            match compressed {
                Some(admin) => admin.write_compressed(at, &old[a..b])?,
                None => image.write_all_at(at, &old[a..b])?,
            }
        }
        at = unit_end;
    }
    Ok(())
}
