//! [`FORMAT`]: the QCOW2 format as the factory sees it: detection, open, create, measure, resize and what it can
//! do, with qemu-img's messages.

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    BackingFiles, CreateOptionInfo, CreateRequest, Error, ErrorKind, FormatCapabilities,
    FormatDescriptor, FormattingOption, HostOpenOptions, Measure, MeasureSource, OpenOptions,
    OpenedImage, Operation, OptionPrint, ProbeInput, ResizeRequest, Result, PROBE_MAGIC,
};

use crate::image::options::{
    Preallocation, Qcow2CreateOptions, Qcow2OpenOptions, CREATE_OPTIONS, RUNTIME_OPTIONS,
};
use crate::offline::resize::Qcow2ResizeOptions;
use crate::{Qcow2, FORMAT_NAME};

/// The QCOW2 format's registration with the factory.
pub const FORMAT: &dyn FormatDescriptor = &Qcow2Format;

/// QCOW2's magic, `QFI\xfb`, at offset 0.
const MAGIC: &[u8] = b"QFI\xfb";
/// The smallest QCOW2 header (version 2).
const MIN_HEADER: u64 = 72;

/// qemu 10's option list for qcow2, in its order, for the `Formatting ...` line.
const FORMATTING_OPTIONS: &[FormattingOption] = &[
    FormattingOption::new("encryption", OptionPrint::Text, None),
    FormattingOption::new("encrypt.format", OptionPrint::Text, None),
    FormattingOption::new("encrypt.key-secret", OptionPrint::Text, None),
    FormattingOption::new("encrypt.cipher-alg", OptionPrint::Text, None),
    FormattingOption::new("encrypt.cipher-mode", OptionPrint::Text, None),
    FormattingOption::new("encrypt.ivgen-alg", OptionPrint::Text, None),
    FormattingOption::new("encrypt.ivgen-hash-alg", OptionPrint::Text, None),
    FormattingOption::new("encrypt.hash-alg", OptionPrint::Text, None),
    FormattingOption::new("encrypt.iter-time", OptionPrint::Number, None),
    FormattingOption::new("cluster_size", OptionPrint::Size, Some("65536")),
    FormattingOption::new("extended_l2", OptionPrint::Text, Some("off")),
    FormattingOption::new("preallocation", OptionPrint::Text, None),
    FormattingOption::new("compression_type", OptionPrint::Text, Some("zlib")),
    FormattingOption::new("size", OptionPrint::Size, None),
    FormattingOption::new("compat", OptionPrint::Text, None),
    FormattingOption::new("backing_file", OptionPrint::Text, None),
    FormattingOption::new("backing_fmt", OptionPrint::Text, None),
    FormattingOption::new("data_file", OptionPrint::Text, None),
    FormattingOption::new("data_file_raw", OptionPrint::Text, None),
    FormattingOption::new("lazy_refcounts", OptionPrint::Text, Some("off")),
    FormattingOption::new("refcount_bits", OptionPrint::Number, Some("16")),
];

/// The options `amend` can change, as qemu-img's `amend -o help` lists them for qcow2.
const AMEND_OPTIONS: &[&str] = &[
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "encrypt.iter-time",
    "lazy_refcounts",
    "refcount_bits",
    "size",
];

/// The LUKS keyslot options only `amend` has, as qemu-img lists them.
const AMEND_ONLY_OPTIONS: &[CreateOptionInfo] = &[
    CreateOptionInfo {
        name: "encrypt.keyslot",
        value_type: "num",
        help: "Select a single keyslot to modify explicitly",
    },
    CreateOptionInfo {
        name: "encrypt.new-secret",
        value_type: "str",
        help: "New secret to set in the matching keyslots. Empty string to erase",
    },
    CreateOptionInfo {
        name: "encrypt.old-secret",
        value_type: "str",
        help: "Select all keyslots that match this password",
    },
    CreateOptionInfo {
        name: "encrypt.state",
        value_type: "str",
        help: "Select new state of affected keyslots (active/inactive)",
    },
];

/// The descriptor behind [`FORMAT`].
#[derive(Debug)]
struct Qcow2Format;

impl FormatDescriptor for Qcow2Format {
    fn name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn capabilities(&self) -> FormatCapabilities {
        FormatCapabilities {
            backing_files: BackingFiles::AnyFormat,
            compression: true,
            internal_snapshots: true,
            amend: true,
            change_backing_file: true,
            resize: true,
            measure: true,
        }
    }

    fn runtime_options(&self) -> &'static [&'static str] {
        RUNTIME_OPTIONS
    }

    fn probe(&self, input: &ProbeInput<'_>) -> Result<u32> {
        if !input.head.starts_with(MAGIC) {
            return Ok(0);
        }
        if input.len < MIN_HEADER {
            return Err(Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "truncated {FORMAT_NAME} image: the file has {} bytes, its headers need at least {MIN_HEADER}",
                    input.len
                ),
            )
            .with_format(FORMAT_NAME)
            .with_offset(input.len));
        }
        Ok(PROBE_MAGIC)
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage> {
        let mut qcow2 = Qcow2OpenOptions::new(options.host, Arc::clone(&options.opener));
        qcow2.check_mode = options.check_mode;
        qcow2.backing_format = options.backing_format.clone();
        qcow2.snapshot = options.snapshot.clone();
        qcow2.key_secret = options.key_secret.clone();
        if !options.runtime_options.is_empty() {
            self.check_runtime_options(&options.runtime_options)?;
            qcow2
                .apply_runtime_options(&options.runtime_options, header_cluster_size(path))
                .map_err(|e| e.with_path(path))?;
        }
        let image = Qcow2::open(path, &qcow2)?;
        Ok(OpenedImage::new(image, Arc::clone(&options.backend)))
    }

    fn create(&self, request: &CreateRequest<'_>) -> Result<()> {
        let options =
            Qcow2CreateOptions::from_key_values(request.size, request.options).map_err(|e| {
                e.with_format(FORMAT_NAME)
                    .with_path(request.path)
                    .with_operation(Operation::Create)
            })?;
        Qcow2::create(request.path, &options, request.opener)
    }

    fn create_options(&self) -> &'static [CreateOptionInfo] {
        CREATE_OPTIONS
    }

    fn formatting_options(&self) -> &'static [FormattingOption] {
        FORMATTING_OPTIONS
    }

    fn amend_options(&self) -> &'static [&'static str] {
        AMEND_OPTIONS
    }

    fn amend_only_options(&self) -> &'static [CreateOptionInfo] {
        AMEND_ONLY_OPTIONS
    }

    fn measure(&self, options: &[(String, String)], source: MeasureSource<'_>) -> Result<Measure> {
        crate::offline::measure::measure_source(options, source)
    }

    /// [`resize`](crate::resize) with qemu-img's `--preallocation` (`off`, `metadata`, `falloc`, `full`) for
    /// the grown area.
    fn resize(&self, request: &ResizeRequest<'_>) -> Result<()> {
        let preallocation = match request.preallocation.unwrap_or("off") {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            mode => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("Unsupported preallocation mode '{mode}'"),
                )
                .with_format(FORMAT_NAME)
                .with_path(request.path)
                .with_operation(Operation::Resize))
            }
        };
        let options = Qcow2ResizeOptions {
            host: HostOpenOptions {
                read_only: false,
                direct: false,
                lock: request.lock,
            },
            shrink: request.shrink,
        };
        crate::offline::resize::resize_preallocated(
            request.path,
            request.size,
            &options,
            preallocation,
        )
    }
}

/// The image's cluster size from its header (`cluster_bits` at offset 20), for the runtime options' rules that
/// depend on it; `None` when the header cannot be read or holds no valid cluster size (the open reports it).
fn header_cluster_size(path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let mut bits = [0u8; 4];
    file.read_exact_at(&mut bits, 20).ok()?;
    let bits = u32::from_be_bytes(bits);
    (9..=21).contains(&bits).then(|| 1u64 << bits)
}
