//! [`FORMAT`]: raw's registration with the factory (probe, open, create, measure, resize).

use std::path::Path;

use blk_core::{
    CreateOptionInfo, CreateRequest, Error, ErrorKind, FormatCapabilities, FormatDescriptor,
    FormattingOption, HostOpenOptions, Mapper, Measure, MeasureSource, OpenOptions, OpenedImage,
    Operation, ProbeInput, ResizeRequest, Result, PROBE_ANY_FILE,
};

use crate::raw::context;
use crate::{Preallocation, Raw, RawCreateOptions, RawResizeOptions, CREATE_OPTIONS, FORMAT_NAME};

/// The raw format, as the factory sees it: it takes any file (the factory refuses empty ones before asking),
/// creates sparse or preallocated files, resizes and measures, and has no backing files.
///
/// ```
/// use blk_core::{DiskFile, MeasureSource, OpenOptions, HostOpenOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// assert_eq!(blk_raw::FORMAT.name(), "raw");
/// let m = blk_raw::FORMAT.measure(&[], MeasureSource::Size(1000))?;
/// assert_eq!((m.required, m.fully_allocated, m.bitmaps), (1024, 1024, None));
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("disk.img");
/// std::fs::write(&path, [1u8; 4096]).unwrap();
/// let image = blk_raw::FORMAT.open(&path, &OpenOptions::new(HostOpenOptions::default()))?;
/// assert_eq!(image.disk.logical_size(), 4096);
/// assert_eq!(image.admin.image_info()?.format, "raw");
/// # Ok(())
/// # }
/// ```
pub const FORMAT: &dyn FormatDescriptor = &RawFormat;

/// The type behind [`FORMAT`].
#[derive(Debug)]
struct RawFormat;

impl FormatDescriptor for RawFormat {
    fn name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn capabilities(&self) -> FormatCapabilities {
        FormatCapabilities {
            resize: true,
            measure: true,
            ..FormatCapabilities::NONE
        }
    }

    fn probe(&self, _input: &ProbeInput<'_>) -> Result<u32> {
        Ok(PROBE_ANY_FILE)
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage> {
        let image = Raw::open(path, options.host)?;
        Ok(OpenedImage::new(image, options.backend.clone()))
    }

    /// Parses the options, creates the file and syncs it.
    fn create(&self, request: &CreateRequest<'_>) -> Result<()> {
        let options = RawCreateOptions::from_key_values(request.size, request.options)
            .map_err(|e| e.with_path(request.path))?;
        let raw = Raw::create(request.path, &options)?;
        raw.flush()
            .map_err(|e| context(raw.host_file(), e, Operation::Flush))
    }

    fn create_options(&self) -> &'static [CreateOptionInfo] {
        CREATE_OPTIONS
    }

    /// None beyond the file protocol's, which the CLI appends.
    fn formatting_options(&self) -> &'static [FormattingOption] {
        &[]
    }

    /// QEMU's `raw_measure`: both figures are the size (rounded up to a sector for a size, the input's exact
    /// size for a copy); the options change nothing.
    fn measure(&self, _options: &[(String, String)], source: MeasureSource<'_>) -> Result<Measure> {
        let size = match source {
            MeasureSource::Size(size) => size.checked_next_multiple_of(512).ok_or_else(|| {
                Error::new(ErrorKind::InvalidInput, "image size too large")
                    .with_format(FORMAT_NAME)
                    .with_operation(Operation::Create)
            })?,
            MeasureSource::Image { disk, .. } => disk.logical_size(),
        };
        Ok(Measure {
            required: size,
            fully_allocated: size,
            bitmaps: None,
        })
    }

    /// [`resize()`](crate::resize()) with qemu-img's `--preallocation` (`off`, `falloc`, `full`).
    fn resize(&self, request: &ResizeRequest<'_>) -> Result<()> {
        let preallocation = match request.preallocation {
            None => Preallocation::Off,
            Some(text) => text.parse().map_err(|e: Error| e.with_path(request.path))?,
        };
        let options = RawResizeOptions {
            host: HostOpenOptions {
                read_only: false,
                direct: false,
                lock: request.lock,
            },
            shrink: request.shrink,
            preallocation,
        };
        crate::resize(request.path, request.size, &options)
    }
}
