//! [`RawAsync`]: a raw image's native asynchronous queue. Guest offset `x` is host offset `x`, so the
//! [`RawMapper`] answers every read and write with one host range and the whole batch goes to the backend
//! (io_uring, AIO or blk-core's `SyncHostBackend`) in one submission; flush, discard and write-zeroes run on the
//! queue's worker pool through [`Raw`]'s synchronous methods.
//!
//! Reads past the end of the host file (the zero-filled partial last sector of a file whose length is not a
//! multiple of 512) come back short from the kernel and are zero-filled by the queue, as the synchronous path
//! does. With O_DIRECT, requests must be aligned (buffers and offsets, see
//! [`MappedQueue`]); aligned ones go to the kernel as they are, no copy.

use std::sync::Arc;

use blk_core::{
    AllocationLink, AsyncIo, AsyncMapper, Completion, DiskFile, EventFd, HostFile,
    HostQueueBackend, Mapped, MappedQueue, Operation, ReadMapping, Request, Result, WriteMapping,
};

use crate::{Raw, FORMAT_NAME};

/// A raw image's translator for [`MappedQueue`]: the identity, over the image's own handle.
#[derive(Debug)]
pub struct RawMapper {
    raw: Raw,
}

impl RawMapper {
    /// A mapper over a new handle on `raw` (its own descriptor).
    pub fn new(raw: &Raw) -> Result<RawMapper> {
        Ok(RawMapper {
            raw: raw.duplicate()?,
        })
    }
}

impl AsyncMapper for RawMapper {
    fn disk(&self) -> &dyn DiskFile {
        &self.raw
    }

    fn host_files(&self) -> Vec<&HostFile> {
        vec![self.raw.host_file()]
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<Mapped> {
        out.push(ReadMapping::Host {
            file: 0,
            offset,
            len,
        });
        Ok(Mapped::Fast)
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<Mapped> {
        out.push(WriteMapping::Host {
            file: 0,
            offset,
            len,
        });
        Ok(Mapped::Fast)
    }

    /// Never called: raw images allocate nothing.
    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let _ = (link, written);
        Ok(())
    }
}

/// An asynchronous queue on a raw image: [`RawMapper`] over a [`MappedQueue`].
///
/// ```
/// use blk_core::{AsyncIo, DiskFile, IoBufMut, Request, RequestOp, SyncHostBackend};
/// use blk_raw::{Preallocation, Raw, RawAsync, RawCreateOptions};
///
/// # fn main() -> blk_core::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let options = RawCreateOptions { size: 1 << 20, preallocation: Preallocation::Off };
/// let disk = Raw::create(dir.path().join("disk.img"), &options)?;
/// disk.write_all_at(4096, b"hello")?;
/// let mut queue = RawAsync::new(&disk, &SyncHostBackend, 32)?;
/// // Buffers must stay valid until their request completes: guest memory, or (here) leaked memory.
/// let buf: &'static mut [u8] = Box::leak(vec![0u8; 512].into_boxed_slice());
/// let bufs = [IoBufMut::from(buf)];
/// queue.submit(&[Request::new(7, RequestOp::Read { offset: 4096, bufs: &bufs })])?;
/// let done = loop {
///     if let Some(done) = queue.next_completed_request() {
///         break done;
///     }
///     let _ = queue.notifier().read(); // an event loop would wait on this eventfd
/// };
/// assert_eq!((done.user_data, done.result?), (7, 512));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RawAsync {
    queue: MappedQueue,
}

impl RawAsync {
    /// A queue of at most `ring_depth` requests in flight over `raw` (a new handle), doing host I/O on
    /// `backend`.
    pub fn new(raw: &Raw, backend: &dyn HostQueueBackend, ring_depth: u32) -> Result<RawAsync> {
        let mapper = Arc::new(RawMapper::new(raw)?);
        let queue = MappedQueue::new(mapper, backend, ring_depth)
            .map_err(|e| raw.context(e, Operation::Open, None))?;
        Ok(RawAsync { queue })
    }
}

impl AsyncIo for RawAsync {
    fn notifier(&self) -> &EventFd {
        self.queue.notifier()
    }

    fn submit(&mut self, batch: &[Request<'_>]) -> Result<()> {
        self.queue.submit(batch)
    }

    fn next_completed_request(&mut self) -> Option<Completion> {
        let mut done = self.queue.next_completed_request()?;
        done.result = done.result.map_err(|e| e.with_format(FORMAT_NAME));
        Some(done)
    }

    fn ring_depth(&self) -> u32 {
        self.queue.ring_depth()
    }
}
