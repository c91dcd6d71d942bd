//! The errors a [`MappedQueue`](crate::MappedQueue) completes requests with when the host or the mapping fails.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Operation};
use crate::request_slots::HostOpRecord;

/// How a host operation failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HostFailure {
    /// The kernel's errno.
    Errno(i32),
    /// A write that transferred fewer bytes than asked.
    ShortWrite(u64),
}

/// The error of a failed host operation, naming the host file (`path`), the host offset and the operation.
pub(crate) fn host_op_error(
    record: &HostOpRecord,
    failure: HostFailure,
    path: Option<&Arc<Path>>,
) -> Error {
    let operation = if record.read {
        Operation::Read
    } else {
        Operation::Write
    };
    let err = match failure {
        HostFailure::Errno(errno) => Error::io(std::io::Error::from_raw_os_error(errno)),
        HostFailure::ShortWrite(written) => Error::new(
            ErrorKind::Io,
            format!("short write: {written} of {} bytes", record.len),
        ),
    };
    let err = err
        .with_offset(record.host_offset)
        .with_operation(operation);
    match path {
        Some(path) => err.with_path(path),
        None => err,
    }
}
