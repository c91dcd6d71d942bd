//! `blk create`: qemu-img create, through the factory's [`create_disk_file`].

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, OptionPrint, Result};
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

/// Creates the image `params` describe and prints qemu-img's `Formatting ...` line unless `quiet` (with the
/// backing file's size when none was given). As in qemu-img, a refused backing file or an option the format
/// does not have (or whose value does not parse) fails before the line; a value the format refuses (a cluster
/// size, a size too large) or a file that cannot be made fails after it.
pub fn create_image(params: &CreateParams, quiet: bool) -> Result<()> {
    // qemu-img checks the backing file, then prints its `Formatting ...` line once the options parse, then
    // lets the format create the image: a format's refusal comes after the line.
    blk_factory::check_backing(params).map_err(|e| backing_error(params, e))?;
    let announced = !quiet && params.size.is_some() && options_parse(params);
    if let Err(e) = create_disk_file(params) {
        if announced {
            println!("{}", formatting_line(params, params.size));
        }
        return Err(e.with_path(&params.path));
    }
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

/// Whether every `-o` option is one the format (or the file protocol) has and its value parses as its type, as
/// qemu's option parser checks before the `Formatting ...` line.
fn options_parse(params: &CreateParams) -> bool {
    let infos = blk_factory::create_options(params.format);
    let own = params.format.descriptor().formatting_options();
    params.options.iter().all(|(key, value)| {
        let Some(info) = infos.iter().find(|o| o.name == key) else {
            return false;
        };
        let print = own
            .iter()
            .chain(blk_core::FILE_FORMATTING_OPTIONS)
            .find(|o| o.name == key)
            .map(|o| o.print);
        match (info.value_type, print) {
            (t, _) if t.starts_with("bool") => matches!(
                value.as_str(),
                "on" | "off" | "yes" | "no" | "true" | "false" | "y" | "n"
            ),
            (_, Some(OptionPrint::Size)) => blk_core::parse_size_param(key, value).is_ok(),
            (_, Some(OptionPrint::Number)) => value.parse::<u64>().is_ok(),
            _ => true,
        }
    })
}

/// A backing-file error with qemu-img's second line: the format it would have probed, or that the backing
/// image could not be opened.
fn backing_error(params: &CreateParams, err: Error) -> Error {
    let backing = params.backing_file.clone().or_else(|| {
        params
            .options
            .iter()
            .rev()
            .find(|(k, _)| k == "backing_file")
            .map(|(_, v)| v.clone())
    });
    let message = err.message();
    if message.starts_with("Backing file specified without backing format") {
        let detected = backing.and_then(|name| {
            let path = blk_core::resolve_relative_to(&params.path, std::path::Path::new(&name));
            blk_factory::detect_format(&path).ok()
        });
        if let Some(format) = detected {
            return super::with_hint(err, format!("Detected format of {}.", format.name()));
        }
    } else if message.starts_with("Could not open backing file") {
        return super::with_hint(err, "Could not open backing image.");
    }
    err
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
    let backing_option = options.iter().any(|(k, _)| k == "backing_file");
    if size.is_none() && ((args.backing.is_none() && !backing_option) || args.unsafe_backing) {
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
