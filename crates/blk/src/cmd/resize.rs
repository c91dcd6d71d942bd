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

/// qemu-img's warning under a refused shrink.
const SHRINK_WARNING: &str =
    "blk: warning: Shrinking an image will delete all data beyond the shrunken \
    image's end. Before performing such an operation, make sure there is no important data there.";

/// Runs `blk resize`.
pub fn run(args: ResizeArgs) -> Result<u8> {
    let path = &args.filename;
    // qemu-img reads the mode with its options, before it looks at the image (whether the format takes the
    // mode is the format's say).
    if let Some(mode) = args.preallocation.as_deref() {
        if !matches!(mode, "off" | "metadata" | "falloc" | "full") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("Invalid preallocation mode '{mode}'"),
            ));
        }
    }
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
    super::warn_if_probed_raw(path, args.format.as_deref());
    resize_disk_file(&params).map_err(|e| {
        let shrinking = e.message().starts_with("Use the --shrink option");
        let e = e.with_path(path);
        if shrinking {
            // qemu-img's warning under the error, as its own `blk: warning:` line.
            super::with_hint(e, SHRINK_WARNING)
        } else {
            e
        }
    })?;
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
