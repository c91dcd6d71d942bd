//! The gate for files named inside images: the factory's [`ImageOpener`].

use blk_core::{DiskFile, Error, ErrorKind, ImageOpener, LockMode, NamedImage, Operation, Result};

use crate::format::ImageFormat;
use crate::open::{open_disk_file, DiskFileParams};

/// The most backing levels (backing files of backing files ..., differencing parents of parents) below the image
/// opened: a chain of up to `MAX_CHAIN_DEPTH + 1` images opens (QEMU opens a 70-deep one; blk's chains are
/// opened iteratively, so the cap bounds memory and descriptors, one image each, not the stack). Every command
/// uses this one rule; loops are detected apart, by file identity, and reported as loops.
pub const MAX_CHAIN_DEPTH: u32 = 1024;

/// Whether files named inside an image may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamedImagePolicy {
    /// Refuse them: the safe default for images from untrusted users.
    #[default]
    Deny,
    /// Open them read-only, with the format the image records (never probed), up to [`MAX_CHAIN_DEPTH`] deep.
    AllowRecordedFormat,
}

/// The factory's [`ImageOpener`]: applies a [`NamedImagePolicy`] and opens through the factory.
#[derive(Debug, Clone)]
pub struct FactoryOpener {
    policy: NamedImagePolicy,
    direct: bool,
    lock: LockMode,
    /// The depth of the image whose named files this opener opens.
    base_depth: u32,
    /// Whether the image is opened without its backing file.
    skip_backing: bool,
}

impl FactoryOpener {
    /// An opener applying `policy`; named files inherit `direct` and `lock` from the image that names them.
    pub fn new(policy: NamedImagePolicy, direct: bool, lock: LockMode) -> FactoryOpener {
        FactoryOpener {
            policy,
            direct,
            lock,
            base_depth: 0,
            skip_backing: false,
        }
    }

    /// The opener for the files named inside the image `params` open.
    pub fn for_params(params: &DiskFileParams) -> FactoryOpener {
        FactoryOpener {
            base_depth: params.chain_depth,
            skip_backing: params.skip_backing,
            ..FactoryOpener::new(params.named_images, params.direct, params.lock)
        }
    }
}

impl ImageOpener for FactoryOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        let ctx = |e: Error| e.with_path(&image.path).with_operation(Operation::Open);
        if self.policy == NamedImagePolicy::Deny {
            return blk_core::DenyNamedImages.open_named(image);
        }
        // Formats count depth from the image naming the file (1 for its direct backing file); the chain's
        // depth adds this opener's own place in it.
        let depth = self.base_depth.saturating_add(image.depth.max(1));
        if depth > MAX_CHAIN_DEPTH {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                format!("the chain of images is deeper than {MAX_CHAIN_DEPTH} levels (blk's cap)"),
            )));
        }
        let Some(format_name) = image.format.as_deref() else {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                format!("{:?} file has no recorded format; give it explicitly (formats of named files are never probed)", image.role),
            )));
        };
        let format: ImageFormat = format_name.parse().map_err(ctx)?;
        let mut params = DiskFileParams::new(&image.path)
            .format(Some(format))
            .read_only(image.read_only)
            .direct(self.direct)
            .lock(self.lock)
            .named_images(self.policy);
        params.chain_depth = depth;
        let disk = open_disk_file(&params)?;
        Ok(disk)
    }

    fn skips_backing(&self) -> bool {
        self.skip_backing
    }
}
