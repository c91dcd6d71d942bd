//! Creating images.

use std::path::PathBuf;

use blk_core::{CreateOptionInfo, Error, ErrorKind, Operation, Result};

use crate::format::ImageFormat;

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
        }
    }
}

/// Creates the image `params` describe.
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
        ImageFormat::Qcow2 | ImageFormat::Vpc | ImageFormat::Vhdx => {
            Err(ctx(format.not_compiled_in()))
        }
    }
}

/// The creation options `format` accepts (what `create -o help` lists).
pub fn create_options(format: ImageFormat) -> Result<&'static [CreateOptionInfo]> {
    match format {
        ImageFormat::Raw => Ok(blk_raw::CREATE_OPTIONS),
        ImageFormat::Qcow2 | ImageFormat::Vpc | ImageFormat::Vhdx => Err(format.not_compiled_in()),
    }
}
