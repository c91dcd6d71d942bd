//! Creating images.

use std::path::PathBuf;

use blk_core::{
    BackingFiles, CreateOptionInfo, CreateRequest, Error, ErrorKind, Operation, Result,
};

use crate::format::ImageFormat;
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

/// The checks [`create_disk_file`] makes of the backing file before the format creates anything (qemu-img's
/// checks before its `Formatting ...` line): a format without backing files refuses one, `-b` and `-o
/// backing_file` are not both given, the backing format is named, and (unless `unsafe_backing`) the backing
/// file opens. Returns the option list the format is given.
pub fn check_backing(params: &CreateParams) -> Result<Vec<(String, String)>> {
    let format = params.format;
    let ctx = |e: Error| {
        e.with_format(format.name())
            .with_path(&params.path)
            .with_operation(Operation::Create)
    };
    let backing_files = format.capabilities().backing_files;
    match backing_files {
        BackingFiles::None => {
            if params.backing_file.is_some() {
                return Err(ctx(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the {} format does not support backing files",
                        format.name()
                    ),
                )));
            }
            Ok(params.options.clone())
        }
        BackingFiles::AnyFormat | BackingFiles::OwnFormat => {
            let options = option_list(params, backing_files).map_err(ctx)?;
            if backing_files == BackingFiles::AnyFormat && !params.unsafe_backing {
                check_backing_opens(params, &options).map_err(ctx)?;
            }
            Ok(options)
        }
    }
}

/// Creates the image `params` describe.
///
/// A backing file (or differencing parent) is the user's own choice here, so it is opened read-only to learn
/// its size and identity, with the format given in [`CreateParams::backing_format`] (or `backing_fmt=` among
/// the options); without one, creation fails as in qemu-img rather than probing. Parents of formats whose
/// images name a parent of their own format (VHD, VHDX) are of the child's format.
pub fn create_disk_file(params: &CreateParams) -> Result<()> {
    let format = params.format;
    let ctx = |e: Error| {
        e.with_format(format.name())
            .with_path(&params.path)
            .with_operation(Operation::Create)
    };
    let options = check_backing(params)?;
    let opener = creation_opener();
    let request = CreateRequest {
        path: &params.path,
        size: params.size,
        options: &options,
        opener: &opener,
    };
    format.descriptor().create(&request).map_err(ctx)
}

/// The opener for the backing file a user names at creation: read-only, recorded format only.
fn creation_opener() -> FactoryOpener {
    FactoryOpener::new(
        NamedImagePolicy::AllowRecordedFormat,
        false,
        blk_core::LockMode::Auto,
    )
}

/// Opens the backing file an option list names (read-only, with its given format, relative to the new
/// image's directory) and closes it again: qemu-img's check that it exists and is what it claims to be.
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
/// unknown format as qemu-img does (parents of formats with [`BackingFiles::OwnFormat`] default to the child's
/// format).
fn option_list(
    params: &CreateParams,
    backing_files: BackingFiles,
) -> Result<Vec<(String, String)>> {
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
        if backing_files == BackingFiles::AnyFormat {
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
pub fn create_options(format: ImageFormat) -> &'static [CreateOptionInfo] {
    format.descriptor().create_options()
}
