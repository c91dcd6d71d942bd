//! `blk dd`: qemu-img dd. Creates the output image (format `-O`) and copies `count` blocks of `bs` bytes from
//! the input, starting `skip` blocks in.
//!
//! As in qemu-img, `count` limits the input to its first `count * bs` bytes *before* `skip` is applied, so the
//! output holds `count - skip` blocks.

use std::path::PathBuf;

use blk_core::{Result, ResultExt};
use blk_factory::{CreateParams, ImageFormat};
use clap::Args;

use super::create::create_image;
use super::{invalid, open_disk, parse_size_arg, refuse_overwriting_source, OpenSpec, CHUNK};

/// qemu-img's largest block size: `INT_MAX`.
const MAX_BS: u64 = i32::MAX as u64;

/// Arguments of `blk dd`.
#[derive(Debug, Args)]
pub struct DdArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// Format of the input (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Format of the output.
    #[arg(
        short = 'O',
        long = "output-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub output_format: String,
    /// Open the input without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// `bs=BLOCK_SIZE` (default 512), `count=BLOCKS`, `skip=BLOCKS`, `if=INPUT`, `of=OUTPUT`.
    #[arg(value_name = "OPERAND")]
    pub operands: Vec<String>,
}

/// The parsed operands.
#[derive(Debug, Default)]
struct Operands {
    bs: Option<u64>,
    count: Option<u64>,
    skip: Option<u64>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
}

fn parse_operands(operands: &[String]) -> Result<Operands> {
    let mut parsed = Operands::default();
    for operand in operands {
        let Some((key, value)) = operand.split_once('=') else {
            return Err(invalid(format!("unrecognized operand {operand}")));
        };
        match key {
            "bs" => {
                let bs = parse_size_arg("bs", value)?;
                if bs == 0 || bs > MAX_BS {
                    return Err(invalid(format!("invalid number: '{value}'")));
                }
                parsed.bs = Some(bs);
            }
            "count" => parsed.count = Some(parse_size_arg("count", value)?),
            "skip" => parsed.skip = Some(parse_size_arg("skip", value)?),
            "if" => parsed.input = Some(PathBuf::from(value)),
            "of" => parsed.output = Some(PathBuf::from(value)),
            _ => return Err(invalid(format!("unrecognized operand {key}"))),
        }
    }
    Ok(parsed)
}

/// Runs `blk dd`.
pub fn run(args: DdArgs) -> Result<u8> {
    let ops = parse_operands(&args.operands)?;
    let (Some(input), Some(output)) = (ops.input, ops.output) else {
        return Err(invalid("Must specify both input and output files"));
    };
    let out_format: ImageFormat = args
        .output_format
        .parse()
        .map_err(|e: blk_core::Error| e.with_path(&output))?;
    let bs = ops.bs.unwrap_or(512);
    let source = open_disk(
        &input,
        OpenSpec::read_only(args.format.as_deref(), args.force_share),
    )?;
    let mut size = source.logical_size();
    if let Some(limit) = ops.count.and_then(|c| c.checked_mul(bs)) {
        size = size.min(limit);
    }
    let start = match ops.skip {
        None => 0,
        Some(skip) => skip
            .checked_mul(bs)
            .ok_or_else(|| invalid("cannot skip to specified offset").with_path(&input))?,
    };
    refuse_overwriting_source(&output, &[&input])?;
    let params = CreateParams::new(&output, out_format, Some(size.saturating_sub(start)));
    create_image(&params, true)?;
    if start > size {
        // As qemu-img: the (empty) output is made, the skip is refused, and the exit status stays 0.
        super::report(&invalid("cannot skip to specified offset").with_path(&input));
        return Ok(0);
    }
    let target = open_disk(
        &output,
        OpenSpec {
            format: Some(out_format.name()),
            ..OpenSpec::default()
        },
    )?;
    // Whole blocks per step, at least one, about CHUNK bytes.
    let step = (CHUNK / bs).max(1) * bs;
    let mut buf = vec![0u8; step.min(size - start) as usize];
    let mut pos = start;
    while pos < size {
        let n = (size - pos).min(step);
        let data = &mut buf[..n as usize];
        source.read_exact_at(pos, data).with_path(&input)?;
        target.write_all_at(pos - start, data).with_path(&output)?;
        pos += n;
    }
    target.flush().with_path(&output)?;
    Ok(0)
}
