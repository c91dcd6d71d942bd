//! Serves any [`DiskFile`] as an [`AsyncIo`] queue, so every format is usable by a VMM from day one.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::async_io::{AsyncIo, Completion, Request, RequestFlags, RequestOp};
use crate::buffer::{total_len, total_len_mut};
use crate::disk_file::DiskFile;
use crate::error::{Error, Operation, Result};

/// An [`AsyncIo`] queue that runs each batch synchronously on a [`DiskFile`] handle.
///
/// A batch is one pass: every request runs in order, requests flagged FUA share a single flush at the end of
/// the batch, back-to-back flushes cost one, and the eventfd is written once for the whole batch.
#[derive(Debug)]
pub struct SyncAdaptor {
    disk: Box<dyn DiskFile>,
    notifier: EventFd,
    completed: VecDeque<Completion>,
    /// Indices into `completed` of FUA writes of the current batch, awaiting the batch's flush.
    fua_pending: Vec<usize>,
    ring_depth: u32,
}

impl SyncAdaptor {
    /// A queue over `disk` (usually a fresh [`DiskFile::try_clone`] of the VMM's disk).
    pub fn new(disk: Box<dyn DiskFile>, ring_depth: u32) -> Result<SyncAdaptor> {
        let notifier = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| {
            Error::io_while(e, "creating the completion eventfd").with_operation(Operation::Open)
        })?;
        let depth = ring_depth.max(1) as usize;
        Ok(SyncAdaptor {
            disk,
            notifier,
            completed: VecDeque::with_capacity(depth),
            fua_pending: Vec::with_capacity(depth),
            ring_depth: ring_depth.max(1),
        })
    }

    fn run(&self, request: &Request<'_>) -> Result<u64> {
        let disk = &*self.disk;
        match request.op {
            RequestOp::Read { offset, bufs } => {
                disk.read_at(offset, bufs).map(|()| total_len_mut(bufs))
            }
            RequestOp::Write { offset, bufs } => {
                disk.write_at(offset, bufs).map(|()| total_len(bufs))
            }
            RequestOp::WriteZeroes { offset, len } => {
                let may_unmap = !request.flags.contains(RequestFlags::NO_UNMAP);
                disk.write_zeroes(offset, len, may_unmap).map(|()| 0)
            }
            RequestOp::Discard { offset, len } => disk.discard(offset, len).map(|()| 0),
            RequestOp::Flush => disk.flush().map(|()| 0),
        }
    }
}

impl AsyncIo for SyncAdaptor {
    fn notifier(&self) -> &EventFd {
        &self.notifier
    }

    fn submit(&mut self, batch: &[Request<'_>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.fua_pending.clear();
        // Whether the last thing done was a successful flush, so that a following flush is free.
        let mut clean = false;
        for request in batch {
            let result = match request.op {
                RequestOp::Flush if clean => Ok(0),
                _ => self.run(request),
            };
            let writes = !matches!(request.op, RequestOp::Read { .. } | RequestOp::Flush);
            clean = match request.op {
                RequestOp::Flush => result.is_ok(),
                _ => clean && !writes,
            };
            if writes && request.flags.contains(RequestFlags::FUA) && result.is_ok() {
                self.fua_pending.push(self.completed.len());
            }
            self.completed.push_back(Completion {
                user_data: request.user_data,
                result,
            });
        }
        if !self.fua_pending.is_empty() && !clean {
            if let Err(e) = self.disk.flush() {
                for &i in &self.fua_pending {
                    if let Some(c) = self.completed.get_mut(i) {
                        c.result = Err(Error::new(e.kind(), format!("FUA flush failed: {e}"))
                            .with_operation(Operation::Flush));
                    }
                }
            }
        }
        self.notifier
            .write(1)
            .map_err(|e| Error::io_while(e, "signalling the completion eventfd"))?;
        Ok(())
    }

    fn next_completed_request(&mut self) -> Option<Completion> {
        self.completed.pop_front()
    }

    fn ring_depth(&self) -> u32 {
        self.ring_depth
    }
}
