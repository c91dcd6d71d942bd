//! `blk create`: qemu-img create, through the factory's [`create_disk_file`].

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, Result};
use blk_factory::{create_disk_file, CreateParams, ImageFormat};
use clap::Args;

use super::{
    display_path, parse_format, parse_options, parse_size_arg, print_option_help, wants_option_help,
};

/// Arguments of `blk create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
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
    #[arg(short = 'u', long = "unsafe")]
    pub unsafe_backing: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image to create (an existing file is overwritten).
    pub filename: PathBuf,
    /// Virtual size (`16M`, `1.5G`, bytes without suffix).
    pub size: Option<String>,
}

/// The parameters `create` hands the factory, shared with `convert` and `dd`.
pub fn create_image(params: &CreateParams, quiet: bool) -> Result<()> {
    create_disk_file(params).map_err(|e| e.with_path(&params.path))?;
    if !quiet {
        println!("{}", formatting_line(params));
    }
    Ok(())
}

/// qemu-img's `Formatting 'FILE', fmt=raw size=N ...` line (options in the order given).
pub fn formatting_line(params: &CreateParams) -> String {
    let mut line = format!(
        "Formatting '{}', fmt={}",
        display_path(&params.path),
        params.format.name()
    );
    if let Some(size) = params.size {
        line.push_str(&format!(" size={size}"));
    }
    if let Some(backing) = &params.backing_file {
        line.push_str(&format!(" backing_file={backing}"));
    }
    if let Some(format) = params.backing_format {
        line.push_str(&format!(" backing_fmt={format}"));
    }
    for (key, value) in &params.options {
        if key != "size" {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
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
