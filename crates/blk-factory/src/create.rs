//! Creating images.

use std::path::PathBuf;

use blk_core::{CreateOptionInfo, Error, ErrorKind, Operation, Result};

use crate::format::ImageFormat;
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
use crate::named::{FactoryOpener, NamedImagePolicy};

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    /// The new image's path (an existing file is overwritten, as qemu-img does).
    pub path: PathBuf,
    /// The format to create.
    pub format: ImageFormat,
    /// The virtual size; may be omitted when a backing file gives it.
    pub size: Option<u64>,
    /// Format options, as qemu-img's `-o key=value,...`.
    pub options: Vec<(String, String)>,
    /// The backing file to record, for formats that have one.
    pub backing_file: Option<String>,
    /// The backing file's format to record.
    pub backing_format: Option<ImageFormat>,
    /// qemu-img's `-u`: record the backing file without opening it (the size must then be given). Without it,
    /// a QCOW2 backing file must open (read-only, with its given format), as qemu-img checks.
    pub unsafe_backing: bool,
}

impl CreateParams {
    /// Parameters for an image of `format` and `size` at `path`, without options or backing file.
    pub fn new(path: impl Into<PathBuf>, format: ImageFormat, size: Option<u64>) -> CreateParams {
        CreateParams {
            path: path.into(),
            format,
            size,
            options: Vec::new(),
            backing_file: None,
            backing_format: None,
            unsafe_backing: false,
        }
    }
}

/// Creates the image `params` describe.
///
/// A backing file (or differencing parent) is the user's own choice here, so it is opened read-only to learn
/// its size and identity, with the format given in [`CreateParams::backing_format`] (or `backing_fmt=` among
/// the options); without one, creation fails as in qemu-img rather than probing. VHD and VHDX parents are
/// always of the child's format.
pub fn create_disk_file(params: &CreateParams) -> Result<()> {
    let format = params.format;
    let ctx = |e: Error| {
        e.with_format(format.name())
            .with_path(&params.path)
            .with_operation(Operation::Create)
    };
    match format {
        ImageFormat::Raw => {
            if params.backing_file.is_some() {
                return Err(ctx(Error::new(
                    ErrorKind::InvalidInput,
                    "the raw format does not support backing files",
                )));
            }
            let options = blk_raw::RawCreateOptions::from_key_values(params.size, &params.options)
                .map_err(ctx)?;
            let raw = blk_raw::Raw::create(&params.path, &options).map_err(ctx)?;
            blk_core::DiskFile::flush(&raw).map_err(ctx)
        }
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => {
            let options = option_list(params).map_err(ctx)?;
            if !params.unsafe_backing {
                check_backing_opens(params, &options).map_err(ctx)?;
            }
            let options = blk_qcow::Qcow2CreateOptions::from_key_values(params.size, &options)
                .map_err(ctx)?;
            blk_qcow::Qcow2::create(&params.path, &options, &creation_opener()).map_err(ctx)
        }
        #[cfg(feature = "vhd")]
        ImageFormat::Vpc => {
            let options = option_list(params).map_err(ctx)?;
            let options =
                blk_vhd::VhdCreateOptions::from_key_values(params.size, &options).map_err(ctx)?;
            blk_vhd::Vhd::create(&params.path, &options, &creation_opener()).map_err(ctx)
        }
        #[cfg(feature = "vhdx")]
        ImageFormat::Vhdx => {
            let options = option_list(params).map_err(ctx)?;
            let options =
                blk_vhdx::VhdxCreateOptions::from_key_values(params.size, &options).map_err(ctx)?;
            blk_vhdx::Vhdx::create(&params.path, &options, &creation_opener()).map_err(ctx)
        }
        #[allow(unreachable_patterns)] // every format compiled in
        _ => Err(ctx(format.not_compiled_in())),
    }
}

/// The opener for the backing file a user names at creation: read-only, recorded format only.
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
fn creation_opener() -> FactoryOpener {
    FactoryOpener::new(
        NamedImagePolicy::AllowRecordedFormat,
        false,
        blk_core::LockMode::Auto,
    )
}

/// Opens the backing file an option list names (read-only, with its given format, relative to the new
/// image's directory) and closes it again: qemu-img's check that it exists and is what it claims to be.
#[cfg(feature = "qcow2")]
fn check_backing_opens(params: &CreateParams, options: &[(String, String)]) -> Result<()> {
    let value = |key: &str| {
        options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let Some(name) = value("backing_file") else {
        return Ok(());
    };
    let image = blk_core::NamedImage {
        path: blk_core::resolve_relative_to(&params.path, std::path::Path::new(&name)),
        format: value("backing_fmt"),
        role: blk_core::NamedImageRole::Backing,
        read_only: true,
        depth: 1,
    };
    use blk_core::ImageOpener as _;
    creation_opener().open_named(&image).map(drop).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("Could not open backing file: {e}"),
        )
    })
}

/// The `-o` list with `-b`/`-F` folded in as `backing_file=`/`backing_fmt=`, refusing a backing file of
/// unknown format as qemu-img does (differencing VHD and VHDX parents default to the child's format).
#[cfg(any(feature = "qcow2", feature = "vhd", feature = "vhdx"))]
fn option_list(params: &CreateParams) -> Result<Vec<(String, String)>> {
    let mut options = params.options.clone();
    let has = |options: &[(String, String)], key: &str| options.iter().any(|(k, _)| k == key);
    if let Some(backing) = &params.backing_file {
        if has(&options, "backing_file") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "backing_file given both with -b and -o",
            ));
        }
        options.push(("backing_file".to_string(), backing.clone()));
    }
    if let Some(format) = params.backing_format {
        if has(&options, "backing_fmt") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "backing_fmt given both with -F and -o",
            ));
        }
        options.push(("backing_fmt".to_string(), format.name().to_string()));
    }
    if has(&options, "backing_file") && !has(&options, "backing_fmt") {
        if params.format == ImageFormat::Qcow2 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "Backing file specified without backing format (give it with -F; blk never probes it)",
            ));
        }
        options.push(("backing_fmt".to_string(), params.format.name().to_string()));
    }
    Ok(options)
}

/// The creation options `format` accepts (what `create -o help` lists).
pub fn create_options(format: ImageFormat) -> Result<&'static [CreateOptionInfo]> {
    match format {
        ImageFormat::Raw => Ok(blk_raw::CREATE_OPTIONS),
        #[cfg(feature = "qcow2")]
        ImageFormat::Qcow2 => Ok(blk_qcow::CREATE_OPTIONS),
        #[cfg(feature = "vhd")]
        ImageFormat::Vpc => Ok(blk_vhd::CREATE_OPTIONS),
        #[cfg(feature = "vhdx")]
        ImageFormat::Vhdx => Ok(blk_vhdx::CREATE_OPTIONS),
        #[allow(unreachable_patterns)] // every format compiled in
        _ => Err(format.not_compiled_in()),
    }
}
