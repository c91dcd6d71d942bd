//! [`SyncHostBackend`]: the host-queue contract on plain `preadv`/`pwritev`/`fdatasync`, for hosts without
//! io_uring or AIO.
//!
//! [`HostQueue::push`] only records the operation (its iovecs copied into storage reused from batch to batch, so
//! a queue in steady state allocates nothing); [`HostQueue::submit`] runs every recorded operation in order, each
//! with positioned vectored system calls on the queue's own descriptors, stores the completions and writes the
//! eventfd once. There is no ring, so there is no backlog either: `depth` only sizes the storage.
//!
//! How it keeps the [contract](crate::host_queue): a short transfer is continued inside `submit` by
//! `HostFile`'s positioned loop (the [`HostTransfer`](crate::host_queue::HostTransfer) rules), so completions
//! are final; `pending()` counts the recorded operations plus the completions not yet returned; dropping the
//! queue discards operations pushed since the last `submit` (they never ran) and completions not returned (their
//! operations ran), and closes the duplicated descriptors.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::buffer::{total_len, IoBuf, IoBufMut};
use crate::error::{Error, Operation, Result};
use crate::host_file::HostFile;
use crate::host_queue::{BackendDescriptor, HostCompletion, HostOp, HostQueue, HostQueueBackend};

/// Runs host operations synchronously at [`HostQueue::submit`]: works everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncHostBackend;

impl HostQueueBackend for SyncHostBackend {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        Ok(Box::new(SyncHostQueue::new(files, depth)?))
    }
}

/// The synchronous backend's registration: `sync` (qemu-img's `threads`), which always works, so it ends the
/// factory's fallback list.
pub const SYNC_BACKEND: &dyn BackendDescriptor = &SyncHostBackend;

impl BackendDescriptor for SyncHostBackend {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["threads"]
    }

    fn probe(&self) -> Result<Arc<dyn HostQueueBackend>> {
        Ok(Arc::new(SyncHostBackend))
    }
}

/// What a recorded operation does; its buffers are a range of the queue's iovec storage.
#[derive(Debug, Clone, Copy)]
enum RecordedKind {
    Read,
    Write,
    SyncData,
}

/// One operation pushed and not yet submitted.
#[derive(Debug, Clone, Copy)]
struct RecordedOp {
    user_data: u64,
    kind: RecordedKind,
    file: usize,
    offset: u64,
    /// First iovec of the operation in `read_iovecs` or `write_iovecs`.
    first: usize,
    /// Number of iovecs.
    count: usize,
}

/// A [`HostQueue`] that performs its operations with synchronous system calls when submitted.
#[derive(Debug)]
pub struct SyncHostQueue {
    files: Vec<HostFile>,
    notifier: EventFd,
    recorded: Vec<RecordedOp>,
    read_iovecs: Vec<IoBufMut<'static>>,
    write_iovecs: Vec<IoBuf<'static>>,
    completions: VecDeque<HostCompletion>,
}

impl SyncHostQueue {
    /// A queue over duplicates of `files`, with storage for `depth` operations.
    pub fn new(files: &[&HostFile], depth: u32) -> Result<SyncHostQueue> {
        let files = files
            .iter()
            .map(|f| f.try_clone())
            .collect::<Result<Vec<_>>>()?;
        let notifier = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| {
            Error::io_while(e, "creating the host queue's eventfd").with_operation(Operation::Open)
        })?;
        let depth = depth.max(1) as usize;
        Ok(SyncHostQueue {
            files,
            notifier,
            recorded: Vec::with_capacity(depth),
            read_iovecs: Vec::with_capacity(depth),
            write_iovecs: Vec::with_capacity(depth),
            completions: VecDeque::with_capacity(depth),
        })
    }

    /// Runs one recorded operation: bytes transferred or the errno. Reads and writes are `HostFile`'s raw
    /// positioned loop, which follows the [`HostTransfer`](crate::host_queue::HostTransfer) rules of the
    /// contract: short only at the end of a file, never a short write.
    fn run(&self, op: &RecordedOp) -> std::result::Result<u64, i32> {
        let Some(file) = self.files.get(op.file) else {
            return Err(libc::EBADF);
        };
        let range = op.first..op.first + op.count;
        match op.kind {
            RecordedKind::Read => {
                let bufs = self.read_iovecs.get(range).unwrap_or(&[]);
                // The raw path: no O_DIRECT bounce (the caller aligned what it sends).
                file.read_vectored_raw(op.offset, bufs)
                    .map(|n| n as u64)
                    .map_err(|e| e.errno())
            }
            RecordedKind::Write => {
                let bufs = self.write_iovecs.get(range).unwrap_or(&[]);
                file.write_vectored_raw(op.offset, bufs)
                    .map(|()| total_len(bufs))
                    .map_err(|e| e.errno())
            }
            RecordedKind::SyncData => file.sync_data().map(|()| 0).map_err(|e| e.errno()),
        }
    }
}

impl HostQueue for SyncHostQueue {
    fn push(&mut self, user_data: u64, op: HostOp<'_>) {
        let recorded = match op {
            HostOp::Read { file, offset, bufs } => {
                let first = self.read_iovecs.len();
                self.read_iovecs.extend_from_slice(bufs);
                RecordedOp {
                    user_data,
                    kind: RecordedKind::Read,
                    file,
                    offset,
                    first,
                    count: bufs.len(),
                }
            }
            HostOp::Write { file, offset, bufs } => {
                let first = self.write_iovecs.len();
                self.write_iovecs.extend_from_slice(bufs);
                RecordedOp {
                    user_data,
                    kind: RecordedKind::Write,
                    file,
                    offset,
                    first,
                    count: bufs.len(),
                }
            }
            HostOp::SyncData { file } => RecordedOp {
                user_data,
                kind: RecordedKind::SyncData,
                file,
                offset: 0,
                first: 0,
                count: 0,
            },
        };
        self.recorded.push(recorded);
    }

    fn submit(&mut self) -> Result<()> {
        if self.recorded.is_empty() {
            return Ok(());
        }
        for i in 0..self.recorded.len() {
            let Some(op) = self.recorded.get(i).copied() else {
                break;
            };
            let result = self.run(&op);
            self.completions.push_back(HostCompletion {
                user_data: op.user_data,
                result,
            });
        }
        self.recorded.clear();
        self.read_iovecs.clear();
        self.write_iovecs.clear();
        self.notifier.write(1).map_err(|e| {
            Error::io_while(e, "signalling the host queue's eventfd")
                .with_operation(Operation::Read)
        })
    }

    fn next_completion(&mut self) -> Option<HostCompletion> {
        self.completions.pop_front()
    }

    fn notifier(&self) -> &EventFd {
        &self.notifier
    }

    fn pending(&self) -> usize {
        self.recorded.len() + self.completions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_file::HostOpenOptions;

    #[test]
    fn runs_pushed_operations_at_submit() {
        let dir = tempfile::tempdir().unwrap();
        let file = HostFile::create(dir.path().join("f"), HostOpenOptions::default()).unwrap();
        file.write_all_at(0, &[7u8; 100]).unwrap();
        let mut queue = SyncHostBackend.create_queue(&[&file], 4).unwrap();
        assert_eq!(HostQueueBackend::name(&SyncHostBackend), "sync");
        assert_eq!(BackendDescriptor::name(&SyncHostBackend), "sync");
        let src = [1u8; 16];
        let mut dst = vec![0u8; 64];
        // SAFETY: `src` and `dst` outlive every operation: they complete at `submit`, before both are dropped.
        let w = [unsafe { IoBuf::from_raw_parts(src.as_ptr(), src.len()) }];
        // SAFETY: as above.
        let r = [unsafe { IoBufMut::from_raw_parts(dst.as_mut_ptr(), dst.len()) }];
        queue.push(
            1,
            HostOp::Write {
                file: 0,
                offset: 90,
                bufs: &w,
            },
        );
        queue.push(
            2,
            HostOp::Read {
                file: 0,
                offset: 60,
                bufs: &r,
            },
        );
        queue.push(3, HostOp::SyncData { file: 0 });
        queue.push(4, HostOp::SyncData { file: 5 });
        assert!(queue.next_completion().is_none());
        assert_eq!(queue.pending(), 4);
        queue.submit().unwrap();
        assert_eq!(queue.notifier().read().unwrap(), 1);
        let done: Vec<_> = std::iter::from_fn(|| queue.next_completion()).collect();
        assert_eq!(
            done.iter()
                .map(|c| (c.user_data, c.result))
                .collect::<Vec<_>>(),
            [(1, Ok(16)), (2, Ok(46)), (3, Ok(0)), (4, Err(libc::EBADF))]
        );
        assert_eq!(&dst[..30], &[7u8; 30]);
        assert_eq!(&dst[30..46], &[1u8; 16]);
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn pending_counts_pushed_minus_returned_and_drop_discards_unsubmitted_operations() {
        let dir = tempfile::tempdir().unwrap();
        let file = HostFile::create(dir.path().join("f"), HostOpenOptions::default()).unwrap();
        file.write_all_at(0, &[7u8; 64]).unwrap();
        let data = [1u8; 64];
        let other = [2u8; 64];
        // SAFETY: `data` and `other` outlive the queue.
        let bufs = [unsafe { IoBuf::from_raw_parts(data.as_ptr(), data.len()) }];
        // SAFETY: as above.
        let other_bufs = [unsafe { IoBuf::from_raw_parts(other.as_ptr(), other.len()) }];
        let mut queue = SyncHostBackend.create_queue(&[&file], 1).unwrap();
        for i in 0..3 {
            queue.push(
                i,
                HostOp::Write {
                    file: 0,
                    offset: 0,
                    bufs: &bufs,
                },
            );
        }
        queue.push(3, HostOp::SyncData { file: 9 });
        assert_eq!(queue.pending(), 4);
        queue.submit().unwrap();
        assert_eq!(queue.pending(), 4);
        assert!(queue.next_completion().is_some());
        assert_eq!(queue.pending(), 3);
        // Pushed after the last submit: dropped with the queue, never run.
        queue.push(
            4,
            HostOp::Write {
                file: 0,
                offset: 0,
                bufs: &other_bufs,
            },
        );
        assert_eq!(queue.pending(), 4);
        drop(queue);
        let mut back = [0u8; 64];
        file.read_exact_at(0, &mut back).unwrap();
        assert_eq!(back, data);
    }
}
