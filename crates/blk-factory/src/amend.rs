//! [`amend_disk_file`]: `qemu-img amend`, for the formats that can amend their options (QCOW2).

use std::path::PathBuf;

use blk_core::{Error, LockMode, Operation, Result};

use crate::format::ImageFormat;
use crate::offline::{context, image_format, open_for_change_unlocked, require};

/// What [`amend_disk_file`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmendParams {
    /// The image.
    pub path: PathBuf,
    /// Its format; `None` detects it.
    pub format: Option<ImageFormat>,
    /// qemu-img's `-o key=value` list.
    pub options: Vec<(String, String)>,
    /// Advisory locking while the image is changed.
    pub lock: LockMode,
    /// The secret that unlocks an encrypted image (QCOW2's `encrypt.key-secret`), needed to open it writable.
    pub key_secret: Option<blk_core::Secret>,
    /// qemu-img's `--force` (QCOW2: overwrite an active LUKS key slot, erase the last active one).
    pub force: bool,
}

/// Changes the options of the image `params` names in place, as `qemu-img amend` does: for QCOW2 `compat`,
/// `lazy_refcounts`, `refcount_bits`, LUKS key slots (`encrypt.state`, `encrypt.new-secret`, ...) and `size` (a grow, done after the rest; the
/// backing file is changed with `rebase`, as QEMU says). Formats without amendable options fail with qemu-img's "Format driver ... does
/// not support option amendment". The image must not be in use; its backing file is not opened.
///
/// ```
/// use blk_factory::{amend_disk_file, create_disk_file, AmendParams, CreateParams, ImageFormat};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.qcow2");
/// let mut create = CreateParams::new(&path, "qcow2".parse::<ImageFormat>()?, Some(1 << 20));
/// create.options = vec![("compat".into(), "0.10".into())];
/// create_disk_file(&create)?;
/// amend_disk_file(&AmendParams {
///     path: path.clone(),
///     format: None,
///     options: vec![("compat".into(), "1.1".into()), ("lazy_refcounts".into(), "on".into())],
///     lock: blk_core::LockMode::Auto,
///     key_secret: None,
///     force: false,
/// })?;
/// # Ok(())
/// # }
/// ```
pub fn amend_disk_file(params: &AmendParams) -> Result<()> {
    let format = image_format(&params.path, params.format, Operation::Write)?;
    let ctx = |e: Error| context(e, &params.path, format, Operation::Write);
    require(format.capabilities().amend, || {
        format!(
            "Format driver '{}' does not support option amendment",
            format.name()
        )
    })
    .map_err(ctx)?;
    let (sizes, rest): (Vec<_>, Vec<_>) = params
        .options
        .iter()
        .cloned()
        .partition(|(k, _)| k == "size");
    let size = match sizes.last() {
        Some((key, value)) => Some(blk_core::parse_size_param(key, value).map_err(ctx)?),
        None => None,
    };
    {
        let image =
            open_for_change_unlocked(&params.path, format, params.lock, params.key_secret.clone())
                .map_err(ctx)?;
        image
            .admin
            .amend_with_force(&rest, params.force)
            .map_err(ctx)?;
    }
    if let Some(size) = size {
        let resize = crate::ResizeParams {
            format: Some(format),
            lock: params.lock,
            ..crate::ResizeParams::new(&params.path, size)
        };
        crate::resize_disk_file(&resize)?;
    }
    Ok(())
}
