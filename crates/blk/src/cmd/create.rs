//! `blk create`: qemu-img create, through the factory's [`create_disk_file`].

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, Result};
use blk_factory::{create_disk_file, CreateParams, ImageFormat};
use clap::Args;

use super::formatting::formatting_line;
use super::{
    open_disk, parse_format, parse_options, parse_size_arg, print_option_help, wants_option_help,
    OpenSpec,
};

/// Arguments of `blk create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format.
    #[arg(
        short = 'f',
        long = "format",
        value_name = "FMT",
        default_value = "raw"
    )]
    pub format: String,
    /// Format options, `key=value[,key=value...]` (e.g. `preallocation=full`).
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Backing file to record in the new image.
    #[arg(short = 'b', long = "backing", value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// Format of the backing file.
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Record the backing file without opening it (the size must be given).
    #[arg(short = 'u', long = "unsafe", visible_alias = "backing-unsafe")]
    pub unsafe_backing: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image to create (an existing file is overwritten).
    pub filename: PathBuf,
    /// Virtual size (`16M`, `1.5G`, bytes without suffix).
    pub size: Option<String>,
}

/// Creates the image `params` describe, then prints qemu-img's `Formatting ...` line unless `quiet` (with the
/// backing file's size when none was given). Nothing is printed when the creation fails (a bad option, a locked
/// target), as qemu-img prints nothing then.
pub fn create_image(params: &CreateParams, quiet: bool) -> Result<()> {
    create_disk_file(params).map_err(|e| e.with_path(&params.path))?;
    if !quiet {
        let size = match params.size {
            Some(size) => size,
            None => {
                let spec = OpenSpec {
                    format: Some(params.format.name()),
                    skip_backing: true,
                    ..OpenSpec::read_only(None, true)
                };
                open_disk(&params.path, spec)?.logical_size()
            }
        };
        println!("{}", formatting_line(params, Some(size)));
    }
    Ok(())
}

/// Runs `blk create`.
pub fn run(args: CreateArgs) -> Result<u8> {
    let path = &args.filename;
    let format: ImageFormat = args.format.parse().map_err(|e: Error| e.with_path(path))?;
    let backing_format =
        parse_format(args.backing_format.as_deref()).map_err(|e| e.with_path(path))?;
    if wants_option_help(&args.options) {
        return print_option_help(format);
    }
    let mut options = parse_options(&args.options).map_err(|e| e.with_path(path))?;
    let mut size = args
        .size
        .as_deref()
        .map(|s| parse_size_arg("image size", s))
        .transpose()?;
    if let Some(pos) = options.iter().position(|(k, _)| k == "size") {
        let (_, text) = options.remove(pos);
        let from_option = parse_size_arg("image size", &text)?;
        size = Some(size.unwrap_or(from_option));
    }
    if size.is_none() && (args.backing.is_none() || args.unsafe_backing) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Image creation needs a size parameter",
        )
        .with_path(path));
    }
    let params = CreateParams {
        path: path.clone(),
        format,
        size,
        options,
        backing_file: args.backing.clone(),
        backing_format,
        unsafe_backing: args.unsafe_backing,
    };
    create_image(&params, args.quiet)?;
    Ok(0)
}
