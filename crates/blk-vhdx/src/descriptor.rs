//! [`FORMAT`]: vhdx's registration with the factory (probe, open, create, creation options).

use std::path::Path;

use blk_core::{
    BackingFiles, CreateOptionInfo, CreateRequest, Error, ErrorKind, FormatCapabilities,
    FormatDescriptor, FormattingOption, OpenOptions, OpenedImage, Operation, OptionPrint,
    ProbeInput, Result, PROBE_MAGIC,
};

use crate::header::FILE_SIGNATURE;
use crate::{Vhdx, VhdxCreateOptions, VhdxOpenOptions, CREATE_OPTIONS, FORMAT_NAME};

/// A VHDX file holds at least the identifier, two headers and two region tables (64 KiB each).
const MIN_FILE_LEN: u64 = 5 * 64 * 1024;

/// The VHDX format, as the factory sees it: recognised by its file type identifier, with differencing images
/// whose parent is a VHDX image too; no resize or measure (as in qemu-img).
///
/// ```
/// use std::sync::Arc;
/// use blk_core::{CreateRequest, DenyNamedImages, DiskFile, HostOpenOptions, OpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.vhdx");
/// let options = [("block_size".to_string(), "1M".to_string())];
/// let request = CreateRequest { path: &path, size: Some(8 << 20), options: &options, opener: &DenyNamedImages };
/// blk_vhdx::FORMAT.create(&request)?;
/// let image = blk_vhdx::FORMAT.open(&path, &OpenOptions::new(HostOpenOptions::default()))?;
/// image.disk.write_all_at(0, b"hello")?;
/// assert_eq!(image.admin.image_info()?.cluster_size, Some(1 << 20));
/// # Ok(())
/// # }
/// ```
pub const FORMAT: &dyn FormatDescriptor = &VhdxFormat;

/// The type behind [`FORMAT`].
#[derive(Debug)]
struct VhdxFormat;

/// qemu 10's option list for vhdx, in its order, with the defaults it prints.
const FORMATTING_OPTIONS: &[FormattingOption] = &[
    FormattingOption::new("size", OptionPrint::Size, None),
    FormattingOption::new("log_size", OptionPrint::Size, Some("1048576")),
    FormattingOption::new("block_size", OptionPrint::Size, Some("0")),
    FormattingOption::new("subformat", OptionPrint::Text, None),
    FormattingOption::new("block_state_zero", OptionPrint::Text, None),
];

impl FormatDescriptor for VhdxFormat {
    fn name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn capabilities(&self) -> FormatCapabilities {
        FormatCapabilities {
            backing_files: BackingFiles::OwnFormat,
            ..FormatCapabilities::NONE
        }
    }

    /// The file type identifier `vhdxfile` at offset 0; a file carrying it but too short for the headers and
    /// region tables is a truncated image.
    fn probe(&self, input: &ProbeInput<'_>) -> Result<u32> {
        if !input.head.starts_with(FILE_SIGNATURE) {
            return Ok(0);
        }
        if input.len < MIN_FILE_LEN {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "truncated {FORMAT_NAME} image: the file has {} bytes, its headers need at least {MIN_FILE_LEN}",
                    input.len
                ),
            )
            .with_format(FORMAT_NAME)
            .with_offset(input.len));
        }
        Ok(PROBE_MAGIC)
    }

    /// Opens the image (check mode as asked); a differencing image's parent through `options.opener`.
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage> {
        let mut vhdx_options = VhdxOpenOptions::new(options.host, options.opener.clone());
        vhdx_options.check_mode = options.check_mode;
        let image = Vhdx::open(path, &vhdx_options)?;
        Ok(OpenedImage::new(image, options.backend.clone()))
    }

    /// Parses the options (`backing_file` makes a differencing image, whose parent `request.opener` opens).
    fn create(&self, request: &CreateRequest<'_>) -> Result<()> {
        let options = VhdxCreateOptions::from_key_values(request.size, request.options).map_err(
            |e: Error| {
                e.with_format(FORMAT_NAME)
                    .with_path(request.path)
                    .with_operation(Operation::Create)
            },
        )?;
        Vhdx::create(request.path, &options, request.opener)
    }

    fn create_options(&self) -> &'static [CreateOptionInfo] {
        CREATE_OPTIONS
    }

    fn formatting_options(&self) -> &'static [FormattingOption] {
        FORMATTING_OPTIONS
    }
}
