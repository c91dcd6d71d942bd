//! `blk snapshot`: qemu-img snapshot. Lists (`-l`, the default), creates (`-c`), deletes (`-d`) and applies
//! (`-a`) a QCOW2 image's internal snapshots.

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, LockMode, Result, SnapshotSelector};
use blk_factory::{change_snapshots, SnapshotOp, SnapshotParams};
use clap::Args;

use super::{open_image, parse_format, OpenSpec};
use crate::output::snapshot_list;

/// Arguments of `blk snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// List the snapshots (the default).
    #[arg(short = 'l', long = "list")]
    pub list: bool,
    /// Create a disk-only snapshot of the current disk with this name.
    #[arg(short = 'c', long = "create", value_name = "SNAPSHOT")]
    pub create: Option<String>,
    /// Revert the current disk to a snapshot (ID or name).
    #[arg(short = 'a', long = "apply", value_name = "SNAPSHOT")]
    pub apply: Option<String>,
    /// Delete a snapshot (ID or name).
    #[arg(short = 'd', long = "delete", value_name = "SNAPSHOT")]
    pub delete: Option<String>,
    /// Open the image without taking a lock (listing only).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Quiet (accepted for qemu-img compatibility: the list is printed anyway, as qemu-img does).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `blk snapshot`.
pub fn run(args: SnapshotArgs) -> Result<u8> {
    let path = &args.filename;
    let actions = [
        args.list,
        args.create.is_some(),
        args.apply.is_some(),
        args.delete.is_some(),
    ];
    if actions.iter().filter(|&&a| a).count() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "Cannot mix '-l', '-a', '-c', '-d'",
        ));
    }
    let (op, verb, name) = if let Some(name) = &args.create {
        (SnapshotOp::Create(name.clone()), "create", name)
    } else if let Some(name) = &args.apply {
        (
            SnapshotOp::Apply(SnapshotSelector::parse(name)),
            "apply",
            name,
        )
    } else if let Some(name) = &args.delete {
        (
            SnapshotOp::Delete(SnapshotSelector::parse(name)),
            "delete",
            name,
        )
    } else {
        return list(&args);
    };
    let params = SnapshotParams {
        path: path.clone(),
        format: parse_format(args.format.as_deref()).map_err(|e| e.with_path(path))?,
        op,
        lock: LockMode::Auto,
    };
    super::warn_if_probed_raw(path, args.format.as_deref());
    change_snapshots(&params).map_err(|e| {
        // The reason is said once: the format's own message may already be qemu's whole sentence.
        let prefix = format!("Could not {verb} snapshot '{name}'");
        let message = if e.message().starts_with(&prefix) {
            e.message().to_string()
        } else {
            format!("{prefix}: {}", e.message())
        };
        Error::new(e.kind(), message).with_path(path)
    })?;
    Ok(0)
}

/// `-l`: qemu's `Snapshot list:` table, nothing when there are no snapshots.
fn list(args: &SnapshotArgs) -> Result<u8> {
    let path = &args.filename;
    let spec = OpenSpec {
        skip_backing: true,
        ..OpenSpec::read_only(args.format.as_deref(), args.force_share)
    };
    let info = open_image(path, spec)?
        .admin
        .image_info()
        .map_err(|e| e.with_path(path))?;
    print!("{}", snapshot_list(&info.snapshots));
    Ok(0)
}
