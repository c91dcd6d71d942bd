//! `blk check`: qemu-img check. Exit codes: 0 clean, 1 check not completed, 2 corruptions, 3 leaks only,
//! 63 the format has nothing to check.

use std::path::PathBuf;

use blk_core::{CheckReport, ErrorKind, RepairMode, Result};
use clap::{Args, ValueEnum};

use super::{cache_is_direct, display_path, open_image, ImageArgs, OpenSpec};
use crate::output::{to_json_pretty, Json, OutputFormat};

/// Exit code for formats without a consistency check (qemu-img's).
const NOT_SUPPORTED: u8 = 63;

/// `-r`: what to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Repair {
    /// Leaked clusters only.
    Leaks,
    /// Leaks and corruptions.
    All,
}

/// Arguments of `blk check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// The image and how to show it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Repair what the check finds (opens the image writable).
    #[arg(short = 'r', long = "repair", value_enum)]
    pub repair: Option<Repair>,
    /// Print nothing; the exit code tells.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Cache mode.
    #[arg(short = 'T', long = "cache", value_name = "SRC_CACHE")]
    pub cache: Option<String>,
    /// The image.
    pub filename: PathBuf,
}

/// The qemu-img check JSON object (zero counters left out, as qemu-img does).
pub fn report_json(filename: &str, format: &str, r: &CheckReport) -> Json {
    let mut m: Vec<(String, Json)> = vec![
        ("filename".into(), Json::Str(filename.to_string())),
        ("format".into(), Json::Str(format.to_string())),
        ("check-errors".into(), Json::U64(r.check_errors)),
    ];
    let optional = [
        ("image-end-offset", r.image_end_offset.unwrap_or(0)),
        ("corruptions", r.corruptions),
        ("leaks", r.leaks),
        ("corruptions-fixed", r.corruptions_fixed),
        ("leaks-fixed", r.leaks_fixed),
        ("total-clusters", r.total_clusters.unwrap_or(0)),
        ("allocated-clusters", r.allocated_clusters.unwrap_or(0)),
        ("fragmented-clusters", r.fragmented_clusters.unwrap_or(0)),
        ("compressed-clusters", r.compressed_clusters.unwrap_or(0)),
    ];
    let mut optional = optional.map(|(key, value)| (key.to_string(), value));
    if format == VPC {
        // VHD has blocks, not clusters (and no compression).
        for (key, _) in &mut optional {
            *key = key.replace("-clusters", "-blocks");
        }
    }
    for (key, value) in optional {
        if value != 0 {
            m.push((key, Json::U64(value)));
        }
    }
    Json::Map(m)
}

/// The format name of VHD images, whose statistics are blocks, not clusters.
const VPC: &str = "vpc";

/// qemu-img's human summary of a check of an image of `format` (VHD's statistics in its own terms).
pub fn report_human(r: &CheckReport, format: &str) -> String {
    let mut out = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            out.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            out.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            out.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            ));
        }
    }
    let total = r.total_clusters.unwrap_or(0);
    let allocated = r.allocated_clusters.unwrap_or(0);
    if format == VPC {
        // VHD's own terms: its BAT's blocks (qemu-img has no check for vpc to follow).
        if total != 0 {
            out.push_str(&format!(
                "{allocated}/{total} = {:.2}% allocated blocks, {} of them out of order in the file\n",
                allocated as f64 * 100.0 / total as f64,
                r.fragmented_clusters.unwrap_or(0),
            ));
        }
    } else if total != 0 && allocated != 0 {
        out.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            allocated,
            total,
            allocated as f64 * 100.0 / total as f64,
            r.fragmented_clusters.unwrap_or(0) as f64 * 100.0 / allocated as f64,
            r.compressed_clusters.unwrap_or(0) as f64 * 100.0 / allocated as f64,
        ));
    }
    if let Some(end) = r.image_end_offset.filter(|&e| e != 0) {
        out.push_str(&format!("Image end offset: {end}\n"));
    }
    out
}

/// Runs `blk check`.
pub fn run(args: CheckArgs) -> Result<u8> {
    let path = &args.filename;
    let direct = cache_is_direct(args.cache.as_deref())?;
    let mode = match args.repair {
        None => RepairMode::None,
        Some(Repair::Leaks) => RepairMode::Leaks,
        Some(Repair::All) => RepairMode::All,
    };
    let spec = OpenSpec {
        format: args.image.format.as_deref(),
        read_only: mode == RepairMode::None,
        force_share: args.image.force_share,
        direct,
        check_mode: true,
        skip_backing: false,
        snapshot: None,
    };
    let image = open_image(path, spec)?;
    let admin = &*image.admin;
    let mut report = match admin.check(mode) {
        Ok(report) => report,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("blk: This image format does not support checks");
            return Ok(NOT_SUPPORTED);
        }
        Err(e) => return Err(e.with_path(path)),
    };
    for message in &report.messages {
        eprintln!("{message}");
    }
    if report.stopped {
        // qemu-img prints no report when the check itself fails.
        eprintln!("blk: Check failed: Input/output error");
        return Ok(1);
    }
    if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
        let (leaks_fixed, corruptions_fixed) = (report.leaks_fixed, report.corruptions_fixed);
        if args.image.output == OutputFormat::Human && !args.quiet {
            println!(
                "The following inconsistencies were found and repaired:\n\n    {leaks_fixed} leaked clusters\n    {corruptions_fixed} corruptions\n\nDouble checking the fixed image now..."
            );
        }
        report = admin
            .check(RepairMode::None)
            .map_err(|e| e.with_path(path))?;
        for message in &report.messages {
            eprintln!("{message}");
        }
        report.leaks_fixed = leaks_fixed;
        report.corruptions_fixed = corruptions_fixed;
    }
    if !args.quiet {
        let format = admin.image_info().map_err(|e| e.with_path(path))?.format;
        match args.image.output {
            OutputFormat::Human => print!("{}", report_human(&report, format)),
            OutputFormat::Json => {
                println!(
                    "{}",
                    to_json_pretty(&report_json(&display_path(path), format, &report))
                );
            }
        }
    }
    if report.check_errors > 0 {
        eprintln!("blk: Check failed");
        return Ok(1);
    }
    Ok(if report.corruptions > 0 {
        2
    } else if report.leaks > 0 {
        3
    } else {
        0
    })
}
