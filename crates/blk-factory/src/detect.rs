//! Format detection: every registered format's probe, reading only: probing never writes, locks or opens files
//! an image names.

use std::path::Path;

use blk_core::{
    Error, ErrorKind, HostFile, HostOpenOptions, LockMode, Operation, ProbeInput, Result,
};

use crate::format::ImageFormat;

/// The bytes of the file's start every probe sees.
const PROBE_HEAD: usize = 512;

/// Detects the format of the image at `path`: the format whose probe is surest (magic numbers beat raw, which
/// takes any file); a probe that recognises its magic in a file too short to be one of its images fails the
/// detection with its error.
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
    let mut head = [0u8; PROBE_HEAD];
    let got = file.read_at(0, &mut head)?;
    let input = ProbeInput {
        file,
        len,
        head: &head[..got],
    };
    let mut best: Option<(u32, ImageFormat)> = None;
    for format in ImageFormat::all() {
        let score = format
            .descriptor()
            .probe(&input)
            .map_err(|e| e.with_format(format.name()))?;
        if score > 0 && best.is_none_or(|(top, _)| score > top) {
            best = Some((score, format));
        }
    }
    best.map(|(_, format)| format).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidFormat,
            "no format this build knows recognises the file",
        )
    })
}
