//! The open image: how images are opened (`OpenSettings` from qemu-io's options, `open`'s options and
//! `--image-opts` strings), qemu-io's refusals (`-U` without `-r`, `native` without `-n`), `-s`'s temporary
//! overlay, and what the commands need to know about the image.

use std::path::{Path, PathBuf};

use blk_core::{DiskFile, LockMode, OpenedImage, Result};
use blk_factory::{
    create_disk_file, Backend, CreateParams, DiskFileParams, ImageFormat, NamedImagePolicy,
};

use super::IoArgs;
use crate::cmd::probe_guard;
use crate::cmd::{invalid, parse_cache, parse_format, parse_options};

/// How images are opened: the command line's options, which `open` starts from.
#[derive(Debug, Clone)]
pub struct OpenSettings {
    /// `-f`: the format name; `None` probes.
    pub format: Option<String>,
    /// `-r`.
    pub read_only: bool,
    /// `-U`: no lock (read-only opens only).
    pub force_share: bool,
    /// `-n`, `-t none`: bypass the host page cache.
    pub direct: bool,
    /// `-i`, `-k`: the queues' backend.
    pub backend: Backend,
    /// `-C`.
    pub copy_on_read: bool,
    /// `-s`: writes go to a temporary overlay, deleted at close.
    pub snapshot: bool,
    /// `-d ignore`/`off`: discards (and the unmapping of zero writes) are dropped.
    pub ignore_discards: bool,
}

/// qemu's `bdrv_parse_aio`: `threads`, `native` or `io_uring`, as the backends blk has.
pub fn parse_aio(name: &str) -> Result<Backend> {
    match name {
        "threads" | "native" | "io_uring" => Backend::by_name(name).ok_or_else(|| {
            invalid(format!(
                "aio={name} was specified, but this build of blk has no such backend"
            ))
        }),
        _ => Err(invalid(format!("Invalid aio option: {name}"))),
    }
}

/// qemu's `bdrv_parse_discard_flags`: whether discards are ignored.
pub fn parse_discard(mode: &str) -> Result<bool> {
    match mode {
        "off" | "ignore" => Ok(true),
        "on" | "unmap" => Ok(false),
        _ => Err(invalid(format!("Invalid discard option: {mode}"))),
    }
}

impl OpenSettings {
    /// The settings `blk io`'s options give, checked as qemu-io checks them before opening.
    pub fn from_args(args: &IoArgs) -> Result<OpenSettings> {
        if args.image_opts.image_opts && args.format.is_some() {
            return Err(invalid("--image-opts and -f are mutually exclusive"));
        }
        let mut direct = args.nocache;
        if let Some(mode) = &args.cache {
            direct = parse_cache(mode)?;
        }
        let mut backend = Backend::AUTO;
        if args.native_aio {
            backend = parse_aio("native")?;
        }
        if let Some(name) = &args.aio {
            backend = parse_aio(name)?;
        }
        let ignore_discards = args.discard.as_deref().map(parse_discard).transpose()?;
        Ok(OpenSettings {
            format: args.format.clone(),
            read_only: args.read_only,
            force_share: args.force_share,
            direct,
            backend,
            copy_on_read: args.copy_on_read,
            snapshot: args.snapshot,
            ignore_discards: ignore_discards.unwrap_or(false),
        })
    }
}

/// The open image and what the commands need to know about it.
pub struct Image {
    /// The image.
    pub opened: OpenedImage,
    /// Its path as given, for messages.
    pub path: PathBuf,
    /// The file opened: `path`, or with `-s` the temporary overlay.
    pub file: PathBuf,
    /// The format's qemu name (`qcow2`, `raw`, `vpc`, `vhdx`).
    pub format: &'static str,
    /// The format's cluster (block) size, 0 without one.
    pub cluster_size: u64,
    /// How it was opened.
    pub settings: OpenSettings,
    /// The format was probed and found raw: writes may not make it look like another format.
    pub probed_raw: bool,
    /// With `-s`: the temporary overlay the image is, deleted when the image is dropped (after it, as fields
    /// drop in order).
    pub overlay: Option<tempfile::TempPath>,
}

impl Image {
    /// The guest disk.
    pub fn disk(&self) -> &dyn DiskFile {
        &*self.opened.disk
    }

    /// Whether ranges can be unallocated in this image itself and read from a backing file or as zeros (as
    /// qemu's formats with backing files); other formats count every byte as allocated, as qemu does.
    pub fn has_unallocated(&self) -> bool {
        self.format == "qcow2"
    }
}

/// With `-s`: a temporary QCOW2 overlay over `path` (its format as `settings` say or probed), as qemu's
/// `snapshot=on` makes in the temporary directory; the path is deleted when dropped.
fn temporary_overlay(path: &Path, settings: &OpenSettings) -> Result<tempfile::TempPath> {
    let format = match parse_format(settings.format.as_deref())? {
        Some(format) => format,
        None => blk_factory::detect_format(path)?,
    };
    let backing = std::fs::canonicalize(path)?;
    let overlay = tempfile::Builder::new()
        .prefix("vl.")
        .tempfile_in(std::env::temp_dir())?
        .into_temp_path();
    let qcow2 = ImageFormat::by_name("qcow2")
        .ok_or_else(|| invalid("snapshot mode needs the QCOW2 format, which this build lacks"))?;
    let mut params = CreateParams::new(overlay.to_path_buf(), qcow2, None);
    params.backing_file = Some(backing.to_string_lossy().into_owned());
    params.backing_format = Some(format);
    create_disk_file(&params)?;
    Ok(overlay)
}

/// Opens the temporary overlay of `-s` over `path` (writable, locked, QCOW2), keeping it until the image is
/// dropped.
pub fn open_overlay(
    overlay: tempfile::TempPath,
    path: &Path,
    settings: &OpenSettings,
) -> Result<Image> {
    let overlay_settings = OpenSettings {
        format: Some("qcow2".into()),
        read_only: false,
        force_share: false,
        snapshot: false,
        ..settings.clone()
    };
    let mut image = open_image(&overlay, &overlay_settings)?;
    image.path = path.to_path_buf();
    image.settings = settings.clone();
    image.overlay = Some(overlay);
    Ok(image)
}

/// qemu-io's `can't open device PATH: <error>`, or `can't open: <error>` for a runtime option's value of an
/// image named by an `--image-opts` string (qemu-io has no device name then).
pub fn cant_open(path: &Path, err: blk_core::Error) -> blk_core::Error {
    if err.kind() == blk_core::ErrorKind::InvalidInput
        && !crate::cmd::image_opts::runtime_options(path).is_empty()
    {
        return blk_core::Error::new(err.kind(), format!("can't open: {}", err.message()));
    }
    blk_core::Error::new(
        err.kind(),
        format!("can't open device {}: {err}", path.display()),
    )
}

/// Opens `path` as `settings` say, with qemu-io's refusals.
pub fn open_image(path: &Path, settings: &OpenSettings) -> Result<Image> {
    if settings.snapshot {
        let overlay = temporary_overlay(path, settings).map_err(|e| e.with_path(path))?;
        return open_overlay(overlay, path, settings);
    }
    if settings.force_share && !settings.read_only {
        return Err(invalid(
            "force-share=on can only be used with read-only images",
        ));
    }
    if Some(settings.backend) == Backend::by_name("native") && !settings.direct {
        return Err(invalid(
            "aio=native was specified, but it requires cache.direct=on, which was not specified.",
        ));
    }
    let format = parse_format(settings.format.as_deref()).map_err(|e| e.with_path(path))?;
    let params = DiskFileParams::new(path)
        .format(format)
        .read_only(settings.read_only)
        .direct(settings.direct)
        .lock(if settings.force_share {
            LockMode::None
        } else {
            LockMode::Auto
        })
        .backend(settings.backend)
        .named_images(NamedImagePolicy::AllowRecordedFormat);
    let params = crate::cmd::image_opts::with_runtime_options(params);
    let opened = blk_factory::open_image(&params).map_err(|e| e.with_path(path))?;
    crate::cmd::report_open_repair(&opened);
    let info = opened.admin.image_info().map_err(|e| e.with_path(path))?;
    let probed_raw = settings.format.is_none() && info.format == "raw";
    // As QEMU's raw driver: the warning only when the image is writable.
    if probed_raw && !settings.read_only {
        probe_guard::warn_probed_raw(path);
    }
    Ok(Image {
        opened,
        path: path.to_path_buf(),
        file: path.to_path_buf(),
        format: info.format,
        cluster_size: info.cluster_size.unwrap_or(0),
        settings: settings.clone(),
        probed_raw,
        overlay: None,
    })
}

/// Applies qemu option-string keys (`--image-opts`, `open -o`) to `settings`; returns the file name given.
pub fn apply_image_options(text: &str, settings: &mut OpenSettings) -> Result<Option<PathBuf>> {
    let mut path = None;
    for (key, value) in parse_options(&[text.to_string()])? {
        let on = matches!(value.as_str(), "on" | "true" | "yes");
        match key.as_str() {
            "driver" if value == "file" => settings.format = Some("raw".into()),
            "driver" => settings.format = Some(value),
            "file.filename" | "filename" | "file" => path = Some(PathBuf::from(value)),
            "file.driver" if value == "file" => {}
            "read-only" => settings.read_only = on,
            "force-share" => settings.force_share = on,
            "cache.direct" => settings.direct = on,
            "cache.no-flush" | "discard" | "detect-zeroes" => {}
            "file.aio" | "aio" => settings.backend = parse_aio(&value)?,
            _ => return Err(invalid(format!("Invalid option '{key}'"))),
        }
    }
    Ok(path)
}
