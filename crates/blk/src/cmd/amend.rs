//! `blk amend`: qemu-img amend, through the factory's [`amend_disk_file`].

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, LockMode, Result};
use blk_factory::{amend_disk_file, AmendParams, ImageFormat};
use clap::Args;

use super::{parse_format, parse_options, wants_option_help};

/// Arguments of `blk amend`.
#[derive(Debug, Args)]
pub struct AmendArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// The options to change, `key=value[,key=value...]` (`-o help` lists them).
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Show progress (0% before, 100% after: amending is quick).
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Allow changes qemu-img guards with `--force` (accepted).
    #[arg(long = "force")]
    pub force: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `blk amend`.
pub fn run(args: AmendArgs) -> Result<u8> {
    let path = &args.filename;
    if args.options.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Must specify options (-o)",
        ));
    }
    let format = parse_format(args.format.as_deref()).map_err(|e| e.with_path(path))?;
    if wants_option_help(&args.options) {
        let format = match format {
            Some(format) => format,
            None => blk_factory::detect_format(path)?,
        };
        return print_amend_help(format);
    }
    let params = AmendParams {
        path: path.clone(),
        format,
        options: parse_options(&args.options).map_err(|e| e.with_path(path))?,
        lock: LockMode::Auto,
    };
    // qemu-img's progress of an amend: 0% before, 100% after.
    let bar = super::progress::bar(1, args.progress && !args.quiet);
    amend_disk_file(&params).map_err(|e| e.with_path(path))?;
    bar.finish();
    Ok(0)
}

/// Prints qemu-img's `Amend options for 'FMT':` list (or fails when the format cannot amend).
pub fn print_amend_help(format: ImageFormat) -> Result<u8> {
    if !format.capabilities().amend {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "Format driver '{}' does not support option amendment",
                format.name()
            ),
        ));
    }
    println!("Amend options for '{}':", format.name());
    let amendable = format.descriptor().amend_options();
    for option in blk_factory::create_options(format) {
        if amendable.contains(&option.name) {
            println!("{}", option.help_line());
        }
    }
    Ok(0)
}
