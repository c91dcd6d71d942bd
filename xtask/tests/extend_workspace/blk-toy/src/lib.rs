//! A read-only toy image format, as a newcomer would add one following `docs/adding-a-format.md`: an 8-byte
//! magic `BLKTOY01`, the virtual size as a little-endian `u64`, and the guest data from byte 512 on.
//!
//! ```
//! use blk_core::FormatDescriptor;
//! assert_eq!(blk_toy::FORMAT.name(), "toy");
//! ```

use std::path::Path;
use std::sync::Arc;

use blk_core::{
    CreateOptionInfo, CreateRequest, Error, ErrorKind, FormatCapabilities, FormatDescriptor,
    FormattingOption, HostFile, ImageAdmin, ImageInfo, Mapper, OpenOptions, OpenedImage,
    ProbeInput, ReadMapping, Result, PROBE_MAGIC,
};

/// The format's magic number at offset 0.
pub const MAGIC: &[u8; 8] = b"BLKTOY01";
/// Where the guest data starts.
pub const DATA_OFFSET: u64 = 512;

/// The toy format's registration.
pub const FORMAT: &dyn FormatDescriptor = &ToyFormat;

#[derive(Debug)]
struct ToyFormat;

/// An open toy image.
#[derive(Debug)]
pub struct Toy {
    file: [HostFile; 1],
    size: u64,
}

impl Mapper for Toy {
    fn format_name(&self) -> &'static str {
        "toy"
    }

    fn logical_size(&self) -> u64 {
        self.size
    }

    fn host_files(&self) -> &[HostFile] {
        &self.file
    }

    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        Ok(Arc::new(Toy {
            file: [self.file[0].try_clone()?],
            size: self.size,
        }))
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        out.push(ReadMapping::Host {
            file: 0,
            offset: DATA_OFFSET + offset,
            len,
        });
        Ok(())
    }
}

impl ImageAdmin for Toy {
    fn image_info(&self) -> Result<ImageInfo> {
        Ok(ImageInfo {
            format: "toy",
            filename: self.file[0].path().to_path_buf(),
            virtual_size: self.size,
            actual_size: self.file[0].allocated_size()?,
            cluster_size: None,
            dirty: false,
            backing_filename: None,
            full_backing_filename: None,
            backing_format: None,
            snapshots: Vec::new(),
            format_specific: None,
        })
    }
}

impl FormatDescriptor for ToyFormat {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn capabilities(&self) -> FormatCapabilities {
        FormatCapabilities::NONE
    }

    fn probe(&self, input: &ProbeInput<'_>) -> Result<u32> {
        Ok(if input.head.starts_with(MAGIC) { PROBE_MAGIC } else { 0 })
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<OpenedImage> {
        let file = HostFile::open(path, options.host)?;
        let mut header = [0u8; 16];
        file.read_exact_at(0, &mut header)?;
        if &header[..8] != MAGIC {
            return Err(Error::new(ErrorKind::InvalidFormat, "not a toy image").with_offset(0));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[8..]);
        let image = Toy {
            file: [file],
            size: u64::from_le_bytes(size),
        };
        Ok(OpenedImage::new(image, options.backend.clone()))
    }

    fn create(&self, request: &CreateRequest<'_>) -> Result<()> {
        Err(Error::new(ErrorKind::Unsupported, "toy images are read-only").with_path(request.path))
    }

    fn create_options(&self) -> &'static [CreateOptionInfo] {
        &[]
    }

    fn formatting_options(&self) -> &'static [FormattingOption] {
        &[]
    }
}
