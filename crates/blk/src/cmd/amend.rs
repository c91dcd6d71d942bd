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
    /// Allow changes qemu-img guards with `--force`: overwriting an active LUKS key slot, erasing the last one.
    #[arg(long = "force")]
    pub force: bool,
    /// Cache mode of the image (checked; amend flushes its metadata writes before it returns in every mode).
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
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
    super::cache_is_direct(args.cache.as_deref())?;
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
        // `--image-opts ...,encrypt.key-secret=ID` unlocks an encrypted image.
        key_secret: super::image_opts::key_secret(path)?,
        force: args.force,
    };
    // qemu-img amend opens the image writable, which repairs a dirty image and reports the repair: that open
    // is made here, where the report can be printed (the amend's own open then finds the image clean).
    let opened_format = format.or_else(|| blk_factory::detect_format(path).ok());
    if let Some(format) = opened_format.filter(|f| f.capabilities().amend) {
        let spec = super::OpenSpec {
            format: Some(format.name()),
            skip_backing: true,
            ..super::OpenSpec::default()
        };
        drop(super::open_image(path, spec)?);
    } else {
        super::warn_if_probed_raw(path, args.format.as_deref());
    }
    // qemu-img's progress of an amend: 0% before, 100% after.
    let bar = super::progress::bar(1, args.progress && !args.quiet);
    amend_disk_file(&params).map_err(|e| {
        // qemu-img says why on a second line.
        const CREATION_ONLY: &str = ": this option is only supported for image creation";
        match e.message().split_once(CREATION_ONLY) {
            Some((first, _)) => super::with_hint(
                Error::new(e.kind(), first).with_path(path),
                "This option is only supported for image creation",
            ),
            None => e.with_path(path),
        }
    })?;
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
    let descriptor = format.descriptor();
    let amendable = descriptor.amend_options();
    let mut options: Vec<&blk_core::CreateOptionInfo> = blk_factory::create_options(format)
        .iter()
        .filter(|o| amendable.contains(&o.name))
        .chain(descriptor.amend_only_options())
        .collect();
    // qemu-img lists them by name.
    options.sort_by_key(|o| o.name);
    for option in options {
        println!("{}", option.help_line());
    }
    Ok(0)
}
