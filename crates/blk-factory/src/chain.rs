//! Opening a chain of images (backing files of backing files, differencing parents of parents) iteratively,
//! as QEMU opens a 70-deep chain: no recursion through the formats, and nothing held per level but the open
//! images themselves.
//!
//! First a walk down the chain: each image is opened with an opener that, asked for the image's backing file
//! or parent, notes the request and refuses it, so the image's open fails there and releases everything; the
//! noted file is the next level. Each level's file is identified by device and inode: reaching the same file
//! twice is a loop, reported with the files that close it; a chain of more than [`MAX_CHAIN_DEPTH`] backing
//! levels is refused as too deep (not as a loop). The walk ends at an image that opens without asking for
//! one: the base, kept open.
//!
//! Then the chain is opened bottom-up: each image above the base opens with an opener that hands it the image
//! below, already open (and checks that it asks for the same file), so no open nests in another.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use blk_core::{
    DiskFile, Error, ErrorKind, ImageOpener, NamedImage, NamedImageRole, OpenedImage, Operation,
    Result,
};

use crate::format::ImageFormat;
use crate::named::{FactoryOpener, MAX_CHAIN_DEPTH};
use crate::open::DiskFileParams;

/// A file's identity: (device, inode).
type FileId = (u64, u64);

fn file_id(path: &Path) -> Result<FileId> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(e).with_path(path).with_operation(Operation::Open))?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether `role` is a chain level (a backing file or a parent), not a data file.
fn is_level(role: NamedImageRole) -> bool {
    matches!(role, NamedImageRole::Backing | NamedImageRole::Parent)
}

/// The walk's opener: data files as the factory opens them; a backing file or parent noted and refused.
#[derive(Debug)]
struct NotingOpener {
    factory: FactoryOpener,
    noted: Mutex<Option<NamedImage>>,
}

impl ImageOpener for NotingOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if !is_level(image.role) {
            return self.factory.open_named(image);
        }
        // Formats try several candidate names and go on past a missing one: answer as the real open would.
        file_id(&image.path)?;
        if image.format.is_none() {
            // The factory's refusal (no recorded format): the real open would fail the same way.
            return self.factory.open_named(image);
        }
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        *noted = Some(image.clone());
        Err(Error::new(
            ErrorKind::Io,
            "noted the backing file for an iterative open",
        ))
    }

    fn skips_backing(&self) -> bool {
        self.factory.skips_backing()
    }
}

/// The final opener: hands the image the level below, already open, once.
#[derive(Debug)]
struct ChainOpener {
    factory: FactoryOpener,
    below: Mutex<Option<Box<dyn DiskFile>>>,
    below_id: FileId,
}

impl ImageOpener for ChainOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if !is_level(image.role) {
            return self.factory.open_named(image);
        }
        if file_id(&image.path)? != self.below_id {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the image names another backing file than a moment ago (changed while opened?)",
            )
            .with_path(&image.path)
            .with_operation(Operation::Open));
        }
        let mut below = self.below.lock().unwrap_or_else(|p| p.into_inner());
        below.take().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "the backing file was asked for twice",
            )
            .with_path(&image.path)
            .with_operation(Operation::Open)
        })
    }

    fn skips_backing(&self) -> bool {
        self.factory.skips_backing()
    }
}

/// One image of the chain.
#[derive(Debug)]
struct Level {
    params: DiskFileParams,
    format: ImageFormat,
    id: FileId,
}

/// The parameters of a backing level named by `image` under an image opened with `top`.
fn level_params(top: &DiskFileParams, image: &NamedImage, format: ImageFormat) -> DiskFileParams {
    let mut params = DiskFileParams::new(&image.path)
        .format(Some(format))
        .read_only(image.read_only)
        .direct(top.direct)
        .lock(top.lock)
        .named_images(top.named_images)
        .backend(top.backend);
    params.chain_depth = top.chain_depth;
    params
}

/// Opens the image `params` describe (of `format`) with its whole chain, iteratively; `open_one` opens one image
/// with a given opener.
pub(crate) fn open_chain(
    params: &DiskFileParams,
    format: ImageFormat,
    open_one: impl Fn(&DiskFileParams, ImageFormat, Arc<dyn ImageOpener>) -> Result<OpenedImage>,
) -> Result<OpenedImage> {
    let mut levels = vec![Level {
        params: params.clone(),
        format,
        id: file_id(&params.path)?,
    }];
    // Walk down until an image opens without asking for a backing file: the base.
    let mut base = loop {
        let Some(level) = levels.last() else {
            return Err(Error::new(ErrorKind::Io, "an empty chain"));
        };
        let noting = Arc::new(NotingOpener {
            factory: FactoryOpener::for_params(&level.params),
            noted: Mutex::new(None),
        });
        let opened = open_one(&level.params, level.format, noting.clone());
        let noted = noting
            .noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let next = match (opened, noted) {
            (Ok(image), None) => break image,
            (Err(e), None) => return Err(e),
            // Asked for (whether or not the open went on without it): the next level, opened below. The
            // refusal's error is ours.
            (_, Some(next)) => next,
        };
        let depth = levels.len();
        let ctx = |e: Error| e.with_path(&next.path).with_operation(Operation::Open);
        if depth > MAX_CHAIN_DEPTH as usize {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the backing chain is longer than {MAX_CHAIN_DEPTH} images below '{}' (blk's cap)",
                    params.path.display()
                ),
            )));
        }
        let id = file_id(&next.path)?;
        if let Some(first) = levels.iter().position(|l| l.id == id) {
            let namer = &levels[depth - 1].params.path;
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "backing chain loop: '{}' (level {}) names '{}' as its backing file, which is '{}' (level {first}, device {} inode {}) again",
                    namer.display(),
                    depth - 1,
                    next.path.display(),
                    levels[first].params.path.display(),
                    id.0,
                    id.1
                ),
            )));
        }
        let format_name = next.format.as_deref().unwrap_or_default();
        let format: ImageFormat = format_name.parse().map_err(ctx)?;
        let params = level_params(params, &next, format);
        levels.push(Level { params, format, id });
    };
    // Bottom-up: each image gets the one below, already open.
    let mut below_id = levels.pop().map(|l| l.id).unwrap_or_default();
    while let Some(level) = levels.pop() {
        let opener = Arc::new(ChainOpener {
            factory: FactoryOpener::for_params(&level.params),
            below: Mutex::new(Some(base.disk)),
            below_id,
        });
        base = open_one(&level.params, level.format, opener)?;
        below_id = level.id;
    }
    Ok(base)
}
