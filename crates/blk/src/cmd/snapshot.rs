//! `blk snapshot`: qemu-img snapshot's listing (`-l`, the default) of a QCOW2 image's internal snapshots.
//! Creating, applying and deleting snapshots (`-c`, `-a`, `-d`) are refused: blk keeps internal snapshots
//! intact but does not change them.

use std::path::PathBuf;

use blk_core::{Error, ErrorKind, Result};
use clap::Args;

use super::{open_image, OpenSpec};
use crate::output::snapshot_list;

/// Arguments of `blk snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// List the snapshots (the default).
    #[arg(short = 'l')]
    pub list: bool,
    /// Create a snapshot (not supported).
    #[arg(short = 'c', value_name = "SNAPSHOT")]
    pub create: Option<String>,
    /// Revert the disk to a snapshot (not supported).
    #[arg(short = 'a', value_name = "SNAPSHOT")]
    pub apply: Option<String>,
    /// Delete a snapshot (not supported).
    #[arg(short = 'd', value_name = "SNAPSHOT")]
    pub delete: Option<String>,
    /// Open the image without taking a lock.
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
    if args.create.is_some() || args.apply.is_some() || args.delete.is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "blk lists internal snapshots but does not create, apply or delete them",
        )
        .with_path(path));
    }
    let spec = OpenSpec {
        skip_backing: true,
        ..OpenSpec::read_only(args.format.as_deref(), args.force_share)
    };
    let info = open_image(path, spec)?
        .image_info()
        .map_err(|e| e.with_path(path))?;
    print!("{}", snapshot_list(&info.snapshots));
    Ok(0)
}
