//! Format detection by magic numbers, reading only: probing never writes, locks or opens files an image names.

use std::path::Path;

use blk_core::{Error, ErrorKind, HostFile, HostOpenOptions, LockMode, Operation, Result};

use crate::format::ImageFormat;

/// QCOW2's magic, `QFI\xfb`, at offset 0.
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
/// The smallest QCOW2 header (version 2).
const QCOW2_MIN_HEADER: u64 = 72;
/// VHDX's file type identifier at offset 0.
const VHDX_MAGIC: &[u8] = b"vhdxfile";
/// A VHDX file holds at least the identifier, two headers and two region tables (64 KiB each).
const VHDX_MIN_LEN: u64 = 5 * 64 * 1024;
/// The VHD footer cookie: at offset 0 (dynamic and differencing disks keep a copy there) or in the last
/// 512 bytes (every VHD).
const VHD_COOKIE: &[u8] = b"conectix";
/// The VHD footer size.
const VHD_FOOTER: u64 = 512;

/// Detects the format of the image at `path` from its magic numbers; files with none are raw.
///
/// An empty file is an error: there is nothing to detect, and treating it as raw (as qemu-img does) would let
/// a truncated image pass silently. Give the format explicitly to open an empty raw file.
pub fn detect_format(path: &Path) -> Result<ImageFormat> {
    let options = HostOpenOptions {
        read_only: true,
        direct: false,
        lock: LockMode::None,
    };
    let file = HostFile::open(path, options).map_err(|e| e.with_operation(Operation::Probe))?;
    detect_in(&file).map_err(|e| e.with_path(path).with_operation(Operation::Probe))
}

pub(crate) fn detect_in(file: &HostFile) -> Result<ImageFormat> {
    let len = file.len()?;
    if len == 0 {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            "the file is empty, so it has no format to detect (give one explicitly, e.g. -f raw)",
        )
        .with_offset(0));
    }
    let mut head = [0u8; 8];
    let got = file.read_at(0, &mut head)?;
    let head = &head[..got];
    let truncated = |format: ImageFormat, needed: u64| {
        Error::new(
            ErrorKind::InvalidFormat,
            format!(
                "truncated {} image: the file has {len} bytes, its headers need at least {needed}",
                format.name()
            ),
        )
        .with_format(format.name())
        .with_offset(len)
    };
    if head.starts_with(QCOW2_MAGIC) {
        if len < QCOW2_MIN_HEADER {
            return Err(truncated(ImageFormat::Qcow2, QCOW2_MIN_HEADER));
        }
        return Ok(ImageFormat::Qcow2);
    }
    if head == VHDX_MAGIC {
        if len < VHDX_MIN_LEN {
            return Err(truncated(ImageFormat::Vhdx, VHDX_MIN_LEN));
        }
        return Ok(ImageFormat::Vhdx);
    }
    if head == VHD_COOKIE {
        // A footer copy at 0 means a dynamic or differencing disk: footer copy, dynamic header, footer.
        if len < 3 * VHD_FOOTER {
            return Err(truncated(ImageFormat::Vpc, 3 * VHD_FOOTER));
        }
        return Ok(ImageFormat::Vpc);
    }
    if len >= VHD_FOOTER {
        let mut tail = [0u8; 8];
        if file.read_at(len - VHD_FOOTER, &mut tail)? == tail.len() && tail == VHD_COOKIE {
            return Ok(ImageFormat::Vpc);
        }
    }
    Ok(ImageFormat::Raw)
}
