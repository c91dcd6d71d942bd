//! The one error type of the workspace: a stable [`ErrorKind`] plus the context a user needs to act on it
//! (format, path, offset, operation) and the underlying cause.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The result type used across blk.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a stable category callers can match on.
///
/// New kinds may be added; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A host I/O error not covered by a more specific kind (see the source for the errno).
    Io,
    /// The file or a file named inside an image does not exist.
    NotFound,
    /// The host refused access (file mode, read-only mount, ...).
    PermissionDenied,
    /// A write, discard or resize was asked of a disk opened read-only.
    ReadOnly,
    /// Another process holds a conflicting lock on the file.
    Locked,
    /// A caller-supplied argument is invalid (unknown format name, bad option, misaligned buffer, ...).
    InvalidInput,
    /// The file is not an image of the expected format (bad magic, empty file, truncated header).
    InvalidFormat,
    /// The image uses a feature this build does not support.
    UnsupportedFeature,
    /// The image's metadata is inconsistent or points outside the file.
    CorruptImage,
    /// A request reaches outside the disk's virtual size.
    OutOfBounds,
    /// The operation is not supported by this disk or format (e.g. `check` on raw).
    Unsupported,
    /// The host has no space left for the write.
    NoSpace,
}

impl ErrorKind {
    /// A short lower-case description of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Locked => "locked",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::InvalidFormat => "invalid format",
            ErrorKind::UnsupportedFeature => "unsupported feature",
            ErrorKind::CorruptImage => "corrupt image",
            ErrorKind::OutOfBounds => "out of bounds",
            ErrorKind::Unsupported => "unsupported operation",
            ErrorKind::NoSpace => "no space",
        }
    }

    /// The errno a VMM reports for this kind when no OS error is attached.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::Io | ErrorKind::CorruptImage => libc::EIO,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::Locked => libc::EAGAIN,
            ErrorKind::InvalidInput | ErrorKind::OutOfBounds => libc::EINVAL,
            ErrorKind::InvalidFormat => libc::EINVAL,
            ErrorKind::UnsupportedFeature | ErrorKind::Unsupported => libc::ENOTSUP,
            ErrorKind::NoSpace => libc::ENOSPC,
        }
    }

    fn from_io(err: &io::Error) -> ErrorKind {
        match err.raw_os_error() {
            Some(libc::ENOENT) => return ErrorKind::NotFound,
            Some(libc::EACCES) | Some(libc::EPERM) => return ErrorKind::PermissionDenied,
            Some(libc::EROFS) => return ErrorKind::ReadOnly,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return ErrorKind::NoSpace,
            Some(libc::EOPNOTSUPP) => return ErrorKind::Unsupported,
            Some(libc::EINVAL) => return ErrorKind::InvalidInput,
            _ => {}
        }
        match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            io::ErrorKind::Unsupported => ErrorKind::Unsupported,
            _ => ErrorKind::Io,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation during which an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening a file or image.
    Open,
    /// Creating an image.
    Create,
    /// Detecting an image's format.
    Probe,
    /// Reading guest data.
    Read,
    /// Writing guest data.
    Write,
    /// Writing zeroes.
    WriteZeroes,
    /// Discarding a range.
    Discard,
    /// Flushing to stable storage.
    Flush,
    /// Changing the virtual size.
    Resize,
    /// Querying the allocation map.
    Map,
    /// Checking image consistency.
    Check,
    /// Taking or releasing an advisory lock.
    Lock,
    /// Changing the backing file an image records (`rebase`).
    ChangeBacking,
    /// Reading an image's description (`info`).
    Info,
}

impl Operation {
    /// The gerund used in messages: "reading", "writing", ...
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Open => "opening",
            Operation::Create => "creating",
            Operation::Probe => "probing the format",
            Operation::Read => "reading",
            Operation::Write => "writing",
            Operation::WriteZeroes => "writing zeroes",
            Operation::Discard => "discarding",
            Operation::Flush => "flushing",
            Operation::Resize => "resizing",
            Operation::Map => "mapping",
            Operation::Check => "checking",
            Operation::Lock => "locking",
            Operation::ChangeBacking => "changing the backing file",
            Operation::Info => "reading the image information",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}", DisplayInner(self))]
struct Inner {
    kind: ErrorKind,
    message: String,
    format: Option<&'static str>,
    path: Option<PathBuf>,
    offset: Option<u64>,
    operation: Option<Operation>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The error type of every fallible blk API.
///
/// Displays as `qcow2 image /x/y.qcow2: at 0x50000: L2 entry 12 points past the end of the file (while reading)`.
/// The inner data is boxed so that `Result<T>` stays one pointer wide on the hot path.
///
/// ```
/// use blk_core::{Error, ErrorKind, Operation};
/// let err = Error::new(ErrorKind::CorruptImage, "L2 entry 12 points past the end of the file")
///     .with_format("qcow2")
///     .with_path("/x/y.qcow2")
///     .with_offset(0x50000)
///     .with_operation(Operation::Read);
/// assert_eq!(err.kind(), ErrorKind::CorruptImage);
/// assert_eq!(
///     err.to_string(),
///     "qcow2 image /x/y.qcow2: at 0x50000: L2 entry 12 points past the end of the file (while reading)"
/// );
/// ```
#[derive(thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

struct DisplayInner<'a>(&'a Inner);

impl fmt::Display for DisplayInner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match (&e.format, &e.path) {
            (Some(fmt), Some(path)) => write!(f, "{fmt} image {}: ", path.display())?,
            (None, Some(path)) => write!(f, "{}: ", path.display())?,
            (Some(fmt), None) => write!(f, "{fmt} image: ")?,
            (None, None) => {}
        }
        if let Some(offset) = e.offset {
            write!(f, "at {offset:#x}: ")?;
        }
        f.write_str(&e.message)?;
        if let Some(source) = &e.source {
            let text = source.to_string();
            if !text.is_empty() && !text.starts_with(e.message.as_str()) {
                write!(f, ": {text}")?;
            }
        }
        if let Some(op) = e.operation {
            write!(f, " (while {op})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .field("format", &self.0.format)
            .field("path", &self.0.path)
            .field("offset", &self.0.offset)
            .field("operation", &self.0.operation)
            .field("source", &self.0.source)
            .finish()
    }
}

impl Error {
    /// A new error of `kind` with a human-readable `message` describing what is wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            format: None,
            path: None,
            offset: None,
            operation: None,
            source: None,
        }))
    }

    /// An error wrapping a host I/O error; the kind is derived from the errno.
    pub fn io(err: io::Error) -> Error {
        let kind = ErrorKind::from_io(&err);
        let message = match err.raw_os_error() {
            Some(_) => io_message(&err),
            None => err.to_string(),
        };
        let mut e = Error::new(kind, message);
        e.0.source = Some(Box::new(err));
        e
    }

    /// An I/O error with a message saying what was being done, e.g. `"reading the L1 table"`.
    pub fn io_while(err: io::Error, what: impl Into<String>) -> Error {
        let kind = ErrorKind::from_io(&err);
        let mut e = Error::new(kind, what);
        e.0.source = Some(Box::new(err));
        e
    }

    /// A read or write at `offset` of `len` bytes that reaches past `size`.
    pub fn out_of_bounds(offset: u64, len: u64, size: u64) -> Error {
        Error::new(
            ErrorKind::OutOfBounds,
            format!("request of {len} bytes reaches past the end of the disk ({size} bytes)"),
        )
        .with_offset(offset)
    }

    /// Attaches the image format name ("raw", "qcow2", ...), unless one is already set.
    pub fn with_format(mut self, format: &'static str) -> Error {
        self.0.format.get_or_insert(format);
        self
    }

    /// Attaches the path of the file the error concerns, unless one is already set.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Error {
        if self.0.path.is_none() {
            self.0.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Attaches the byte offset (guest or host, as the message says) the error concerns, unless one is set.
    pub fn with_offset(mut self, offset: u64) -> Error {
        self.0.offset.get_or_insert(offset);
        self
    }

    /// Attaches the operation during which the error happened, unless one is already set.
    pub fn with_operation(mut self, operation: Operation) -> Error {
        self.0.operation.get_or_insert(operation);
        self
    }

    /// Attaches an underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.0.source = Some(Box::new(source));
        self
    }

    /// The stable category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// What is wrong, without the context.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The image format, when known.
    pub fn format(&self) -> Option<&'static str> {
        self.0.format
    }

    /// The file the error concerns, when known.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// The byte offset the error concerns, when known.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// The operation during which the error happened, when known.
    pub fn operation(&self) -> Option<Operation> {
        self.0.operation
    }

    /// The errno to report to a guest or caller: the OS error when there is one, else one derived from the kind.
    pub fn errno(&self) -> i32 {
        self.0
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
            .unwrap_or_else(|| self.0.kind.errno())
    }

    /// The underlying cause, if any.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.0.source.as_deref()
    }
}

/// `"No such file or directory"` without std's `" (os error 2)"` suffix.
fn io_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::io(err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::from_raw_os_error(err.errno())
    }
}

/// Adds context to the error of a `Result` without a closure at every call site.
pub trait ResultExt<T> {
    /// See [`Error::with_path`].
    fn with_path(self, path: impl AsRef<Path>) -> Result<T>;
    /// See [`Error::with_offset`].
    fn with_offset(self, offset: u64) -> Result<T>;
    /// See [`Error::with_operation`].
    fn with_operation(self, operation: Operation) -> Result<T>;
    /// See [`Error::with_format`].
    fn with_format(self, format: &'static str) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| e.into().with_path(path))
    }
    fn with_offset(self, offset: u64) -> Result<T> {
        self.map_err(|e| e.into().with_offset(offset))
    }
    fn with_operation(self, operation: Operation) -> Result<T> {
        self.map_err(|e| e.into().with_operation(operation))
    }
    fn with_format(self, format: &'static str) -> Result<T> {
        self.map_err(|e| e.into().with_format(format))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_keep_errno() {
        let e = Error::io(io::Error::from_raw_os_error(libc::ENOENT)).with_path("/nope");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.errno(), libc::ENOENT);
        assert_eq!(e.to_string(), "/nope: No such file or directory");
        let e = Error::io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
    }

    #[test]
    fn first_context_wins() {
        let e = Error::new(ErrorKind::Io, "x").with_offset(1).with_offset(2);
        assert_eq!(e.offset(), Some(1));
    }

    #[test]
    fn io_while_keeps_message_and_cause() {
        let e = Error::io_while(
            io::Error::from_raw_os_error(libc::EIO),
            "reading the header",
        )
        .with_operation(Operation::Open);
        assert_eq!(
            e.to_string(),
            "reading the header: Input/output error (os error 5) (while opening)"
        );
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
