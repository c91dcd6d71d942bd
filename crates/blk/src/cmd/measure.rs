//! `blk measure`: qemu-img measure, through the factory's [`blk_factory::measure()`]: how big a new raw or
//! QCOW2 image would be, for a size or for a copy of an image.

use std::path::PathBuf;

use blk_core::{Result, SnapshotSelector};
use blk_factory::{ImageFormat, MeasureParams, MeasureSource};
use clap::Args;

use super::{invalid, open_image, parse_options, parse_size_arg, OpenSpec};
use crate::output::{to_json_pretty, Json, OutputFormat};

/// Arguments of `blk measure`.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct MeasureArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Output format.
    #[arg(
        long = "output",
        value_enum,
        default_value_t,
        value_name = "human|json"
    )]
    pub output: OutputFormat,
    /// Format of the image to be created.
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub target_format: String,
    /// Creation options of the image to be created, `key=value[,key=value...]` (as `create -o`).
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Format of the input image (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Measure this internal snapshot of the input image (`snapshot.id=ID`, `snapshot.name=NAME`, or an ID or
    /// name) instead of its current disk.
    #[arg(short = 'l', long = "snapshot", value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// Open the input image without taking a lock (shared with a running VM).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Size of a new, empty image to measure (instead of an input image).
    #[arg(long = "size", value_name = "N", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// The input image (at most one).
    pub filenames: Vec<PathBuf>,
}

/// Runs `blk measure`: prints qemu-img's `required size` / `fully allocated size` (/ `bitmaps size`) lines or
/// its JSON object.
pub fn run(args: MeasureArgs) -> Result<u8> {
    let size = args.size.as_deref().map(parse_measure_size).transpose()?;
    if args.filenames.len() > 1 {
        return Err(invalid("At most one filename argument is allowed."));
    }
    let filename = args.filenames.first();
    if filename.is_none() && (args.format.is_some() || args.snapshot.is_some()) {
        return Err(invalid(
            "--image-opts, -f, and -l require a filename argument.",
        ));
    }
    if size.is_some() && filename.is_some() {
        return Err(invalid("--size N cannot be used together with a filename."));
    }
    let input = match filename {
        Some(path) => {
            let snapshot = args.snapshot.as_deref().map(SnapshotSelector::parse);
            let spec = OpenSpec {
                snapshot: snapshot.as_ref(),
                ..OpenSpec::read_only(args.format.as_deref(), args.force_share)
            };
            Some(open_image(path, spec)?)
        }
        None => None,
    };
    let source = match (&input, size) {
        (Some(image), _) => MeasureSource::Image {
            disk: &*image.disk,
            admin: &*image.admin,
        },
        (None, Some(size)) => MeasureSource::Size(size),
        (None, None) => {
            return Err(invalid(
                "Either --size N or one filename must be specified.",
            ))
        }
    };
    let format: ImageFormat = args
        .target_format
        .parse()
        .map_err(|_| invalid(format!("Unknown file format '{}'", args.target_format)))?;
    // qemu-img measure has no `-o help`: `help` and `?` are rejected as unknown options.
    if let Some(help) = args
        .options
        .iter()
        .flat_map(|l| l.split(','))
        .find(|item| *item == "help" || *item == "?")
    {
        return Err(invalid(format!(
            "Invalid options for file format '{}': Invalid parameter '{help}'",
            format.name()
        )));
    }
    let params = MeasureParams {
        format,
        options: parse_options(&args.options)?,
        source,
    };
    let measured = blk_factory::measure(&params)?;
    match args.output {
        OutputFormat::Human => {
            println!("required size: {}", measured.required);
            println!("fully allocated size: {}", measured.fully_allocated);
            if let Some(bitmaps) = measured.bitmaps {
                println!("bitmaps size: {bitmaps}");
            }
        }
        OutputFormat::Json => {
            let mut entries = vec![
                ("required".to_string(), Json::U64(measured.required)),
                (
                    "fully-allocated".to_string(),
                    Json::U64(measured.fully_allocated),
                ),
            ];
            if let Some(bitmaps) = measured.bitmaps {
                entries.push(("bitmaps".to_string(), Json::U64(bitmaps)));
            }
            println!("{}", to_json_pretty(&Json::Map(entries)));
        }
    }
    Ok(0)
}

/// `--size N`: qemu-img's sizes, at most `i64::MAX`, with its two messages.
fn parse_measure_size(text: &str) -> Result<u64> {
    if text.trim_start().starts_with('-') {
        return Err(invalid(
            "Invalid image size specified. Must be between 0 and 9223372036854775807.",
        ));
    }
    let size = parse_size_arg("image size", text)?;
    if size > i64::MAX as u64 {
        return Err(invalid(
            "Invalid image size specified. Must be between 0 and 9223372036854775807.",
        ));
    }
    Ok(size)
}
