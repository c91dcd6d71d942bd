//! [`FORMAT`]: the VHD's registration with the factory (qemu's `vpc`, alias `vhd`): detection by the footer
//! cookie, open, create, and the creation options.

use std::path::Path;

use blk_core::{
    BackingFiles, CreateOptionInfo, CreateRequest, Error, ErrorKind, FormatCapabilities,
    FormatDescriptor, FormattingOption, OpenOptions, OpenedImage, Operation, OptionPrint,
    ProbeInput, Result, PROBE_MAGIC,
};

use crate::footer::{FOOTER_COOKIE, FOOTER_SIZE};
use crate::options::{VhdCreateOptions, VhdOpenOptions, CREATE_OPTIONS};
use crate::vhd::Vhd;
use crate::FORMAT_NAME;

/// The VHD format's descriptor.
pub const FORMAT: &dyn FormatDescriptor = &VpcFormat;

/// The VHD format (see [`FORMAT`]).
#[derive(Debug, Clone, Copy)]
struct VpcFormat;

/// qemu's option list for vpc, as its `Formatting ...` line prints it.
static FORMATTING_OPTIONS: &[FormattingOption] = &[
    FormattingOption::new("size", OptionPrint::Size, None),
    FormattingOption::new("subformat", OptionPrint::Text, None),
    FormattingOption::new("force_size", OptionPrint::Text, None),
];

impl FormatDescriptor for VpcFormat {
    fn name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["vhd"]
    }

    /// A differencing disk's parent, nothing else.
    fn capabilities(&self) -> FormatCapabilities {
        FormatCapabilities {
            backing_files: BackingFiles::OwnFormat,
            ..FormatCapabilities::NONE
        }
    }

    /// The footer cookie at offset 0 (dynamic and differencing disks keep a footer copy there: the file must
    /// then hold footer copy, dynamic header and footer) or in the last 512 bytes (every VHD).
    fn probe(&self, input: &ProbeInput<'_>) -> Result<u32> {
        let len = input.len;
        if input.head.get(..FOOTER_COOKIE.len()) == Some(&FOOTER_COOKIE[..]) {
            let needed = 3 * FOOTER_SIZE;
            if len < needed {
                return Err(Error::new(
                    ErrorKind::InvalidFormat,
                    format!(
                        "truncated {FORMAT_NAME} image: the file has {len} bytes, its headers need at least {needed}"
                    ),
                )
                .with_format(FORMAT_NAME)
                .with_offset(len));
            }
            return Ok(PROBE_MAGIC);
        }
        if len >= FOOTER_SIZE {
            let mut tail = [0u8; 8];
            if input.file.read_at(len - FOOTER_SIZE, &mut tail)? == tail.len()
                && tail == *FOOTER_COOKIE
            {
                return Ok(PROBE_MAGIC);
            }
        }
        Ok(0)
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage> {
        let open = VhdOpenOptions::new(options.host, options.opener.clone());
        let image = Vhd::open(path, &open)?;
        Ok(OpenedImage::new(image, options.backend.clone()))
    }

    fn create(&self, request: &CreateRequest<'_>) -> Result<()> {
        let ctx = |e: Error| {
            e.with_format(FORMAT_NAME)
                .with_path(request.path)
                .with_operation(Operation::Create)
        };
        let options =
            VhdCreateOptions::from_key_values(request.size, request.options).map_err(ctx)?;
        Vhd::create(request.path, &options, request.opener).map_err(ctx)
    }

    fn create_options(&self) -> &'static [CreateOptionInfo] {
        CREATE_OPTIONS
    }

    fn formatting_options(&self) -> &'static [FormattingOption] {
        FORMATTING_OPTIONS
    }
}
