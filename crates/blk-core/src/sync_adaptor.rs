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

    fn backend(&self) -> &'static str {
        "sync"
    }

    fn in_flight(&self) -> usize {
        self.completed.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::buffer::{IoBuf, IoBufMut};
    use crate::disk_file::check_range;
    use crate::error::ErrorKind;
    use crate::topology::DiskTopology;

    /// A disk in memory that counts flushes and can be told to fail them.
    #[derive(Debug, Default, Clone)]
    struct MemDisk {
        data: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<AtomicU32>,
        fail_flush: bool,
    }

    impl DiskFile for MemDisk {
        fn logical_size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn physical_size(&self) -> Result<u64> {
            Ok(self.logical_size())
        }
        fn topology(&self) -> DiskTopology {
            DiskTopology::default()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
            Ok(Box::new(self.clone()))
        }
        fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
            let data = self.data.lock().unwrap();
            check_range(offset, total_len_mut(bufs), data.len() as u64)?;
            let mut pos = offset as usize;
            for b in bufs {
                pos += b.copy_from(&data[pos..pos + b.len()]);
            }
            Ok(())
        }
        fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
            let mut data = self.data.lock().unwrap();
            check_range(offset, total_len(bufs), data.len() as u64)?;
            let mut pos = offset as usize;
            for b in bufs {
                pos += b.copy_to(&mut data[pos..pos + b.len()]);
            }
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
            let mut data = self.data.lock().unwrap();
            check_range(offset, len, data.len() as u64)?;
            data[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> Result<()> {
            self.write_zeroes(offset, len, true)
        }
        fn flush(&self) -> Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.fail_flush {
                return Err(Error::new(ErrorKind::Io, "flush failed"));
            }
            Ok(())
        }
    }

    fn leak(bytes: Vec<u8>) -> &'static mut [u8] {
        Box::leak(bytes.into_boxed_slice())
    }

    #[test]
    fn a_batch_completes_in_one_pass_with_one_signal() {
        let disk = MemDisk {
            data: Arc::new(Mutex::new(vec![0; 8192])),
            ..MemDisk::default()
        };
        let mut queue = SyncAdaptor::new(Box::new(disk.clone()), 8).unwrap();
        let src: &'static [u8] = leak(vec![0x11; 512]);
        let dst = leak(vec![0; 512]);
        let dst_ptr = dst.as_ptr();
        let write = [IoBuf::from(src)];
        let read = [IoBufMut::from(dst)];
        let batch = [
            Request::new(
                1,
                RequestOp::Write {
                    offset: 512,
                    bufs: &write,
                },
            )
            .with_flags(RequestFlags::FUA),
            Request::new(
                2,
                RequestOp::Read {
                    offset: 512,
                    bufs: &read,
                },
            ),
            Request::new(
                3,
                RequestOp::Read {
                    offset: 8000,
                    bufs: &read,
                },
            ),
            Request::new(
                4,
                RequestOp::WriteZeroes {
                    offset: 512,
                    len: 256,
                },
            ),
            Request::new(5, RequestOp::Flush),
            Request::new(6, RequestOp::Flush),
        ];
        queue.submit(&batch).unwrap();
        assert_eq!(queue.notifier().read().unwrap(), 1);
        let done: Vec<Completion> = std::iter::from_fn(|| queue.next_completed_request()).collect();
        let ids: Vec<u64> = done.iter().map(|c| c.user_data).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(done[0].result.as_ref().unwrap(), &512);
        assert_eq!(done[1].result.as_ref().unwrap(), &512);
        assert_eq!(
            done[2].result.as_ref().unwrap_err().kind(),
            ErrorKind::OutOfBounds
        );
        // SAFETY: `dst` was leaked, so it is still valid; nothing writes it any more.
        let read_back = unsafe { std::slice::from_raw_parts(dst_ptr, 512) };
        assert!(read_back.iter().all(|&b| b == 0x11));
        assert_eq!(
            &disk.data.lock().unwrap()[512..1024],
            [[0u8; 256], [0x11; 256]].concat()
        );
        // The FUA write is covered by the explicit flush; the second flush is free.
        assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn fua_writes_share_one_flush_and_fail_with_it() {
        let disk = MemDisk {
            data: Arc::new(Mutex::new(vec![0; 4096])),
            fail_flush: true,
            ..MemDisk::default()
        };
        let mut queue = SyncAdaptor::new(Box::new(disk.clone()), 4).unwrap();
        let src: &'static [u8] = leak(vec![1; 8]);
        let bufs = [IoBuf::from(src)];
        let batch: Vec<Request<'_>> = (0..3)
            .map(|i| {
                Request::new(
                    i,
                    RequestOp::Write {
                        offset: i * 8,
                        bufs: &bufs,
                    },
                )
                .with_flags(RequestFlags::FUA)
            })
            .chain([Request::new(
                9,
                RequestOp::Write {
                    offset: 100,
                    bufs: &bufs,
                },
            )])
            .collect();
        queue.submit(&batch).unwrap();
        assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
        let done: Vec<Completion> = std::iter::from_fn(|| queue.next_completed_request()).collect();
        assert!(done[..3].iter().all(|c| c.result.is_err()));
        assert!(done[3].result.is_ok());
        assert_eq!(queue.ring_depth(), 4);
    }
}
