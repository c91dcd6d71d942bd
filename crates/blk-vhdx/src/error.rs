//! The errors this crate builds: [`blk_core::Error`]s of the right kind, naming the format and, where there is
//! one, the file offset of the bad field.

use blk_core::{Error, ErrorKind};

use crate::FORMAT_NAME;

/// An error of `kind` at file offset `offset`, naming the format.
pub(crate) fn at(kind: ErrorKind, offset: u64, message: impl Into<String>) -> Error {
    Error::new(kind, message)
        .with_format(FORMAT_NAME)
        .with_offset(offset)
}

/// Inconsistent metadata at `offset`.
pub(crate) fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    at(ErrorKind::CorruptImage, offset, message)
}

/// Not a VHDX file, or truncated, at `offset`.
pub(crate) fn invalid_format(offset: u64, message: impl Into<String>) -> Error {
    at(ErrorKind::InvalidFormat, offset, message)
}

/// A feature of the image this crate does not implement, at `offset`.
pub(crate) fn unsupported(offset: u64, message: impl Into<String>) -> Error {
    at(ErrorKind::UnsupportedFeature, offset, message)
}

/// A bad creation or open option.
pub(crate) fn invalid_input(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message).with_format(FORMAT_NAME)
}
