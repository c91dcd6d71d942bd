//! [`Vhd`]: opening an image (footer, dynamic header, BAT, parent) and the state its handles share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blk_core::{DiskFile, Error, ErrorKind, HostFile, Operation, Result};
use zerocopy::IntoBytes;

use crate::bat::SparseLayout;
use crate::dynamic_header::{DynamicHeader, HEADER_SIZE};
use crate::footer::{DiskType, Footer, FOOTER_SIZE};
use crate::geometry::{virtual_sectors, MAX_SECTORS};
use crate::options::VhdOpenOptions;
use crate::parent::{locator_regions, open_parent, ParentInfo};
use crate::FORMAT_NAME;

/// A VHD image (fixed, dynamic or differencing), opened: a [`Mapper`](blk_core::Mapper) served for guest I/O
/// by [`MappedDisk`](blk_core::MappedDisk), and an [`ImageAdmin`](blk_core::ImageAdmin).
///
/// Handles from [`Mapper::duplicate`](blk_core::Mapper::duplicate) have their own file descriptor (and parent
/// handle) and share the metadata (BAT, allocation state) through an `Arc`; see the crate docs for the
/// locking rules.
#[derive(Debug)]
pub struct Vhd {
    pub(crate) file: HostFile,
    pub(crate) shared: Arc<Shared>,
    /// A differencing disk's parent ([`Mapper::disk`](blk_core::Mapper::disk) 0).
    pub(crate) parent: Option<Box<dyn DiskFile>>,
}

/// What every handle of one image shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The footer in use (the copy at 0 of sparse disks, as QEMU does; the end footer of fixed ones).
    pub footer: Footer,
    pub disk_type: DiskType,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Dynamic and differencing disks.
    pub sparse: Option<SparseLayout>,
    /// Differencing disks.
    pub parent: Option<ParentInfo>,
    /// Serializes unaligned writes to differencing disks, which merge partial sectors with the parent's data.
    pub merge_lock: Mutex<()>,
    /// Writable dynamic disks: a descriptor to cut the file grown ahead back to its blocks when the last
    /// handle closes (see the `allocation` module).
    pub tail_file: Option<HostFile>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let (Some(file), Some(sparse)) = (&self.tail_file, &self.sparse) {
            Vhd::cut_grown_tail(file, sparse, self.footer.as_bytes());
        }
    }
}

fn invalid_format(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidFormat, message)
}

impl Vhd {
    /// Opens the VHD at `path`.
    ///
    /// A file whose first 512 bytes are a valid footer of a dynamic or differencing disk is sparse (its footer
    /// copy is used, as QEMU does; should that copy be damaged, the end footer is tried); otherwise the last 512
    /// bytes must be a valid footer of a fixed disk. Checksums are verified, the size derived as QEMU derives it,
    /// and every BAT entry checked against the file and the metadata. A differencing disk's parent is opened
    /// through `options.opener`.
    pub fn open(path: impl AsRef<Path>, options: &VhdOpenOptions) -> Result<Vhd> {
        let path = path.as_ref();
        let file = HostFile::open(path, options.host).map_err(|e| {
            e.with_format(FORMAT_NAME)
                .with_path(path)
                .with_operation(Operation::Open)
        })?;
        Vhd::from_host_file(file, options)
    }

    /// Serves an already open host file (a memfd, a descriptor passed in) as a VHD image. A differencing
    /// disk's parent is resolved against the file's path.
    pub fn from_host_file(file: HostFile, options: &VhdOpenOptions) -> Result<Vhd> {
        let path: PathBuf = file.path().to_path_buf();
        Vhd::load(file, options).map_err(|e| {
            e.with_format(FORMAT_NAME)
                .with_path(&path)
                .with_operation(Operation::Open)
        })
    }

    fn load(file: HostFile, options: &VhdOpenOptions) -> Result<Vhd> {
        let len = file.len()?;
        if len < FOOTER_SIZE {
            return Err(invalid_format(format!(
                "file of {len} bytes is too small for a VHD image"
            )));
        }
        let mut bytes = [0u8; 512];
        file.read_exact_at(len - FOOTER_SIZE, &mut bytes)?;
        let end_footer = Footer::parse(&bytes);
        let end_result = end_footer.validate(len - FOOTER_SIZE);
        let end_valid = end_result.is_ok();
        file.read_exact_at(0, &mut bytes)?;
        let copy = Footer::parse(&bytes);

        let (footer, disk_type, has_copy) =
            if copy.has_cookie() && copy.disk_type.get() != DiskType::Fixed.code() {
                match copy.validate(0) {
                    Ok(t) => (copy, t, true),
                    Err(copy_err) => match end_result {
                        Ok(t) if t != DiskType::Fixed => (end_footer.clone(), t, false),
                        _ => return Err(copy_err),
                    },
                }
            } else {
                let t = end_result?;
                (end_footer.clone(), t, false)
            };

        let sectors = virtual_sectors(&footer);
        if sectors > MAX_SECTORS {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!("virtual size of {sectors} sectors exceeds the VHD maximum of 2040 GiB"),
            )
            .with_offset(if has_copy { 48 } else { len - FOOTER_SIZE + 48 }));
        }
        let size = sectors * 512;
        let shared = |sparse, parent, tail_file| Shared {
            footer: footer.clone(),
            disk_type,
            size,
            sparse,
            parent,
            merge_lock: Mutex::new(()),
            tail_file,
        };

        if disk_type == DiskType::Fixed {
            if size > len - FOOTER_SIZE {
                return Err(Error::new(
                    ErrorKind::CorruptImage,
                    format!(
                        "fixed disk of {size} bytes in a file of {len} bytes (data would overlap the footer)"
                    ),
                )
                .with_offset(len - FOOTER_SIZE + 48));
            }
            return Ok(Vhd {
                file,
                shared: Arc::new(shared(None, None, None)),
                parent: None,
            });
        }

        let header_offset = footer.data_offset.get();
        let header_ok = header_offset >= FOOTER_SIZE
            && header_offset
                .checked_add(HEADER_SIZE)
                .is_some_and(|end| end <= len);
        if !header_ok {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!("dynamic header offset {header_offset:#x} lies outside the file"),
            )
            .with_offset(16));
        }
        let mut header_bytes = [0u8; 1024];
        file.read_exact_at(header_offset, &mut header_bytes)?;
        let header = DynamicHeader::parse(&header_bytes);
        header.validate(header_offset)?;

        let locators = if disk_type == DiskType::Differencing {
            locator_regions(&header, len)
        } else {
            Vec::new()
        };
        let sparse = SparseLayout::load(
            &file,
            header.clone(),
            header_offset,
            size,
            len,
            end_valid,
            &locators,
        )?;

        let (parent, parent_info) = if disk_type == DiskType::Differencing {
            let (disk, info) = open_parent(
                file.path(),
                &file,
                &header,
                &footer,
                len,
                options.opener.as_ref(),
            )?;
            (Some(disk), Some(info))
        } else {
            (None, None)
        };
        let tail_file = if disk_type == DiskType::Dynamic && !file.is_read_only() {
            Some(file.try_clone()?)
        } else {
            None
        };
        Ok(Vhd {
            file,
            shared: Arc::new(shared(Some(sparse), parent_info, tail_file)),
            parent,
        })
    }

    /// Adds the format, path, operation and offset to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        let err = err
            .with_format(FORMAT_NAME)
            .with_path(self.file.path())
            .with_operation(operation);
        match offset {
            Some(offset) => err.with_offset(offset),
            None => err,
        }
    }

    /// The host file the image is stored in.
    pub fn host_file(&self) -> &HostFile {
        &self.file
    }

    /// The disk type: fixed, dynamic or differencing.
    pub fn disk_type(&self) -> DiskType {
        self.shared.disk_type
    }

    /// The footer in use (for sparse disks the copy at offset 0).
    pub fn footer(&self) -> &Footer {
        &self.shared.footer
    }

    /// The footer's unique id (the identity a differencing child records for its parent).
    pub fn unique_id(&self) -> [u8; 16] {
        self.shared.footer.unique_id
    }

    /// The dynamic header of a dynamic or differencing disk.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.shared.sparse.as_ref().map(|s| &s.header)
    }

    /// The block size of a dynamic or differencing disk.
    pub fn block_size(&self) -> Option<u64> {
        self.shared.sparse.as_ref().map(|s| s.block_size)
    }

    /// A differencing disk's parent: the name as recorded and the path that was opened.
    pub fn parent_info(&self) -> Option<&ParentInfo> {
        self.shared.parent.as_ref()
    }

    /// The BAT as it is in memory (host byte order; 0xFFFFFFFF for unallocated blocks).
    pub fn bat(&self) -> Vec<u32> {
        match &self.shared.sparse {
            Some(s) => s.entries(),
            None => Vec::new(),
        }
    }
}
