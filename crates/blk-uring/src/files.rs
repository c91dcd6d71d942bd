//! The files a queue does I/O on: registered with the ring (SQEs name them by index, `types::Fixed`), or, on a
//! single-issuer ring or where the kernel refuses to register them, named by the queue's own duplicated
//! descriptors.

use std::os::fd::AsRawFd;

use blk_core::{HostFile, Result};
use io_uring::IoUring;

use crate::slot::FileRef;

/// The queue's files. It always keeps duplicates (`HostFile::try_clone`), so the files stay open as long as the
/// queue does, whatever happens to the `HostFile`s it was made from, and so it can ask a file's length (the
/// end-of-file check after a read fails part-way); SQEs name the registered index when registration worked.
#[derive(Debug)]
pub(crate) struct FileTable {
    files: Vec<HostFile>,
    /// Registered with `IORING_REGISTER_FILES` (the kernel then holds its own reference to each file).
    registered: bool,
}

impl FileTable {
    /// Duplicates `files` and, when `register`, registers them with `ring`; when registration is refused (e.g.
    /// more files than `RLIMIT_NOFILE` allows the table to hold) or not asked, SQEs name the duplicates'
    /// descriptors instead.
    pub(crate) fn new(ring: &IoUring, files: &[&HostFile], register: bool) -> Result<FileTable> {
        let files = files
            .iter()
            .map(|f| f.try_clone())
            .collect::<Result<Vec<_>>>()?;
        let mut table = FileTable {
            files,
            registered: false,
        };
        if register {
            table.registered = table.files.is_empty() || {
                let fds: Vec<i32> = table.files.iter().map(|f| f.as_raw_fd()).collect();
                ring.submitter().register_files(&fds).is_ok()
            };
        }
        Ok(table)
    }

    /// How an SQE names file `index`, or `None` when the queue has no such file.
    pub(crate) fn get(&self, index: usize) -> Option<FileRef> {
        let file = self.files.get(index)?;
        if self.registered {
            u32::try_from(index).ok().map(FileRef::Fixed)
        } else {
            Some(FileRef::Fd(file.as_raw_fd()))
        }
    }

    /// The current length of file `index`, if it can be asked.
    pub(crate) fn len_of(&self, index: usize) -> Option<u64> {
        self.files.get(index)?.len().ok()
    }

    /// Whether the files are registered with the ring.
    pub(crate) fn is_registered(&self) -> bool {
        self.registered
    }
}
