//! `convert --bitmaps`: qemu-img's `convert_check_bitmaps` (before anything is created: a single source
//! whose format keeps bitmaps, no inconsistent bitmap unless `--skip-broken-bitmaps`) and
//! `convert_copy_bitmaps` (after the data: each bitmap added to the target with its granularity and enabled
//! state, and its dirty granules set).

use std::path::{Path, PathBuf};

use blk_core::{BitmapAction, DirtyBitmapInfo, ImageAdmin, OpenedImage, Result, ResultExt};

use super::super::{invalid, open_image, with_hint, OpenSpec};

/// The source's bitmaps to copy: its open image and the consistent bitmaps, in directory order.
pub struct SourceBitmaps {
    image: OpenedImage,
    path: PathBuf,
    bitmaps: Vec<DirtyBitmapInfo>,
}

/// Checks the sources as qemu-img does before it creates the target, and lists the bitmaps to copy.
/// Inconsistent bitmaps are refused, or with `skip_broken` skipped with a warning (qemu-img names them in
/// reverse directory order, from its in-memory list).
pub fn check_source(
    sources: &[PathBuf],
    spec: OpenSpec<'_>,
    skip_broken: bool,
) -> Result<SourceBitmaps> {
    let [path] = sources else {
        return Err(invalid("Copying bitmaps only possible with single source"));
    };
    let image = open_image(path, spec)?;
    let Some(bitmaps) = image.admin.dirty_bitmaps() else {
        return Err(invalid("Source lacks bitmap support"));
    };
    let all = bitmaps.bitmaps().with_path(path)?;
    for b in all.iter().rev().filter(|b| b.inconsistent) {
        if !skip_broken {
            return Err(with_hint(
                invalid(format!("Cannot copy inconsistent bitmap '{}'", b.name)),
                "Try --skip-broken-bitmaps, or use 'blk bitmap --remove' to delete it",
            ));
        }
    }
    Ok(SourceBitmaps {
        image,
        path: path.clone(),
        bitmaps: all,
    })
}

/// Adds each consistent source bitmap to the target (same name, granularity and enabled state) with the
/// source's dirty granules, in one step; warns for each inconsistent one skipped.
pub fn copy(source: &SourceBitmaps, target: &dyn ImageAdmin, target_path: &Path) -> Result<()> {
    for b in source.bitmaps.iter().rev().filter(|b| b.inconsistent) {
        eprintln!("blk: warning: Skipping inconsistent bitmap '{}'", b.name);
    }
    let Some(from) = source.image.admin.dirty_bitmaps() else {
        return Ok(());
    };
    let Some(to) = target.dirty_bitmaps() else {
        return Ok(());
    };
    let mut actions = Vec::new();
    for b in source.bitmaps.iter().filter(|b| !b.inconsistent) {
        actions.push(BitmapAction::Add {
            name: b.name.clone(),
            granularity: Some(b.granularity),
            enabled: b.enabled,
        });
        actions.push(BitmapAction::MarkDirty {
            name: b.name.clone(),
            extents: from.dirty_extents(&b.name).with_path(&source.path)?,
        });
    }
    to.apply(&actions).with_path(target_path)
}
