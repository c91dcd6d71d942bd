//! The files a queue does I/O on: registered with the ring (SQEs name them by index, `types::Fixed`), or, where
//! the kernel refuses to register them, duplicated descriptors the queue owns.

use std::os::fd::AsRawFd;

use blk_core::{HostFile, Result};
use io_uring::IoUring;

use crate::slot::FileRef;

/// The queue's reference to its files; either way they stay open as long as the queue does, whatever happens
/// to the `HostFile`s it was made from.
#[derive(Debug)]
pub(crate) enum FileTable {
    /// Registered with `IORING_REGISTER_FILES`: the kernel holds its own reference to each file.
    Registered {
        /// How many files were registered.
        count: usize,
    },
    /// Duplicates (`HostFile::try_clone`) named by descriptor in each SQE.
    Owned(Vec<HostFile>),
}

impl FileTable {
    /// Registers `files` with `ring`, or duplicates them when registration is refused (e.g. more files than
    /// `RLIMIT_NOFILE` allows the table to hold).
    pub(crate) fn new(ring: &IoUring, files: &[&HostFile]) -> Result<FileTable> {
        if files.is_empty() {
            return Ok(FileTable::Registered { count: 0 });
        }
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        match ring.submitter().register_files(&fds) {
            Ok(()) => Ok(FileTable::Registered { count: fds.len() }),
            Err(_) => Ok(FileTable::Owned(
                files
                    .iter()
                    .map(|f| f.try_clone())
                    .collect::<Result<Vec<_>>>()?,
            )),
        }
    }

    /// How an SQE names file `index`, or `None` when the queue has no such file.
    pub(crate) fn get(&self, index: usize) -> Option<FileRef> {
        match self {
            FileTable::Registered { count } => {
                if index < *count {
                    u32::try_from(index).ok().map(FileRef::Fixed)
                } else {
                    None
                }
            }
            FileTable::Owned(files) => files.get(index).map(|f| FileRef::Fd(f.as_raw_fd())),
        }
    }

    /// Whether the files are registered with the ring.
    pub(crate) fn is_registered(&self) -> bool {
        matches!(self, FileTable::Registered { .. })
    }
}
