//! `blk resize`: qemu-img resize, through the factory's [`resize_disk_file`].

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, LockMode, Result};
use blk_factory::{resize_disk_file, ResizeParams};
use clap::Args;

use super::{open_disk, parse_format, OpenSpec};

/// Arguments of `blk resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Allow a smaller size: the data past the new end is lost.
    #[arg(long = "shrink")]
    pub shrink: bool,
    /// How the added space is allocated (`off`, `falloc`, `full`; raw images).
    #[arg(long = "preallocation", value_name = "PREALLOC")]
    pub preallocation: Option<String>,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image.
    pub filename: PathBuf,
    /// The new size (`10G`), or a change of size (`+1G`, `-512M`; put `--` before a negative change).
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

/// Runs `blk resize`.
pub fn run(args: ResizeArgs) -> Result<u8> {
    let path = &args.filename;
    let format = parse_format(args.format.as_deref()).map_err(|e| e.with_path(path))?;
    let size = new_size(&args)?;
    let params = ResizeParams {
        path: path.clone(),
        format,
        size,
        shrink: args.shrink,
        preallocation: args.preallocation.clone(),
        lock: LockMode::Auto,
    };
    resize_disk_file(&params).map_err(|e| e.with_path(path))?;
    if !args.quiet {
        println!("Image resized.");
    }
    Ok(0)
}

/// The absolute size `args.size` asks for; a relative one (`+N`, `-N`) is applied to the current size.
fn new_size(args: &ResizeArgs) -> Result<u64> {
    let text = args.size.as_str();
    let (sign, number) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => (0, text),
    };
    // qemu-img reads the size as the `size` option of the image, with that option's messages.
    let amount = blk_core::parse_size_param("size", number)?;
    let positive = |size: Option<u64>| {
        size.filter(|&s| s > 0).ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, "New image size must be positive")
                .with_path(&args.filename)
        })
    };
    if sign == 0 {
        return positive(Some(amount));
    }
    let spec = OpenSpec {
        format: args.format.as_deref(),
        skip_backing: true,
        ..OpenSpec::read_only(None, false)
    };
    let current = open_disk(&args.filename, spec)?.logical_size();
    let size = if sign > 0 {
        current.checked_add(amount)
    } else {
        current.checked_sub(amount)
    };
    positive(size)
}
