//! [`MappedQueue`]: a format's [`AsyncIo`] queue, built from its [`AsyncMapper`] and a [`HostQueue`].
//!
//! Per batch, each request is checked (range, read-only, O_DIRECT alignment: a bad request completes at once
//! with its own error and the queue goes on), then:
//! - a read is mapped with [`AsyncMapper::map_read`]: zero pieces are filled in memory at once, each host piece
//!   becomes one [`HostOp::Read`] over the matching slices of the request's buffers (no copy), each encoded
//!   (compressed) piece one [`HostOp::Read`] into a queue-owned aligned buffer, decoded with
//!   [`AsyncMapper::decode`] on the worker pool (several at once) and copied to the request's buffers;
//! - a write is mapped with [`AsyncMapper::map_write`]: each piece becomes one [`HostOp::Write`]; when a write
//!   into a fresh allocation finishes, [`AsyncMapper::finish_allocation`] links it (exactly once);
//! - what the mapper answers [`Mapped::Slow`], FUA writes, write-zeroes and discards run on a small
//!   [worker pool](crate::worker_pool) on the format's synchronous [`DiskFile`](crate::DiskFile) methods;
//! - a flush waits until every request submitted before it on this queue has completed, then runs
//!   `disk().flush()` on the pool; requests submitted after it proceed meanwhile.
//!
//! The whole batch's host I/O is handed to the backend with one [`HostQueue::submit`]. On the fast path (mapped
//! reads and writes) nothing is allocated, locked or system-called per request once the queue's tables have
//! grown to its working set; the eventfd is the host queue's, written by the kernel (or the sync backend), by
//! the pool and once per batch for requests that completed at once.
//!
//! Locking: the queue itself is `&mut` (one per virtio queue) and takes no lock on the fast path. The pool's
//! `jobs` and `done` mutexes are never held together nor across I/O; the reaping path only takes `done` after
//! an atomic counter says something is there. The mapper's metadata locks are the format's and are never held
//! while this queue does anything else.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::async_io::{AsyncIo, Completion, Request, RequestFlags, RequestOp};
use crate::async_mapping::{AsyncMapper, Mapped, ReadMapping, WriteMapping};
use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::direct_io::DirectIoAlignment;
use crate::disk_file::{check_range, read_only_error};
use crate::encoded_read::{DecodeInput, EncodedPiece, EncodedReads, Placement};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::host_queue::{HostCompletion, HostOp, HostQueue, HostQueueBackend};
use crate::queue_errors::{host_op_error, mapping_mismatch, HostFailure};
use crate::request_buffers::{
    check_direct_alignment, host_range_aligned, push_range, push_range_mut, zero_range,
};
use crate::request_slots::{FlushBarriers, HostOpRecord, SlotTable};
use crate::worker_pool::{Job, JobOp, WorkerPool};

/// One asynchronous queue of a format: maps each request of a batch with the format's [`AsyncMapper`] and
/// submits the batch's data I/O on a [`HostQueue`] of `backend` (see the [module docs](self)).
pub struct MappedQueue {
    mapper: Arc<dyn AsyncMapper>,
    host: Box<dyn HostQueue>,
    ring_depth: u32,
    read_only: bool,
    alignment: Option<DirectIoAlignment>,
    /// The host files' paths, for error messages.
    paths: Vec<Arc<Path>>,
    slots: SlotTable,
    ops: crate::request_slots::HostOpTable,
    barriers: FlushBarriers,
    /// Flush slots whose wait is over (scratch).
    flushes_ready: Vec<u32>,
    /// Requests completed without host I/O, not yet reaped.
    immediate: VecDeque<Completion>,
    /// Started on the first request that needs it.
    pool: Option<WorkerPool>,
    read_map: Vec<ReadMapping>,
    write_map: Vec<WriteMapping>,
    read_iov: Vec<IoBufMut<'static>>,
    write_iov: Vec<IoBuf<'static>>,
    /// Whether the current batch pushed host operations.
    host_pushed: bool,
    /// Encoded (compressed) pieces between their host read and their decoding.
    encoded: EncodedReads,
}

impl fmt::Debug for MappedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedQueue")
            .field("mapper", &self.mapper)
            .field("ring_depth", &self.ring_depth)
            .field("in_flight", &self.slots.live())
            .field("host_pending", &self.host.pending())
            .field("pool", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl MappedQueue {
    /// A queue of at most `ring_depth` requests in flight over `mapper`'s image, doing host I/O on `backend`.
    pub fn new(
        mapper: Arc<dyn AsyncMapper>,
        backend: &dyn HostQueueBackend,
        ring_depth: u32,
    ) -> Result<MappedQueue> {
        let ring_depth = ring_depth.max(1);
        let (host, paths) = {
            let files = mapper.host_files();
            let host = backend.create_queue(&files, ring_depth)?;
            let paths: Vec<Arc<Path>> = files.iter().map(|f| f.path_arc()).collect();
            (host, paths)
        };
        let depth = ring_depth as usize;
        Ok(MappedQueue {
            read_only: mapper.disk().is_read_only(),
            alignment: mapper.direct_io_alignment(),
            mapper,
            host,
            ring_depth,
            paths,
            slots: SlotTable::with_capacity(depth),
            ops: crate::request_slots::HostOpTable::with_capacity(depth),
            barriers: FlushBarriers::default(),
            flushes_ready: Vec::new(),
            immediate: VecDeque::with_capacity(depth),
            pool: None,
            read_map: Vec::new(),
            write_map: Vec::new(),
            read_iov: Vec::new(),
            write_iov: Vec::new(),
            host_pushed: false,
            encoded: EncodedReads::default(),
        })
    }

    /// Adds the image path (the first host file) to an error about a whole request.
    fn with_image(&self, err: Error) -> Error {
        match self.paths.first() {
            Some(path) => err.with_path(path),
            None => err,
        }
    }

    /// Range and read-only checks of a request.
    fn check(&self, offset: u64, len: u64, operation: Operation, modifies: bool) -> Result<()> {
        if modifies && self.read_only {
            return Err(self.with_image(read_only_error(operation).with_offset(offset)));
        }
        check_range(offset, len, self.mapper.disk().logical_size())
            .map_err(|e| self.with_image(e.with_operation(operation)))
    }

    /// Completes a request at once (signalled at the end of the batch).
    fn complete_now(&mut self, user_data: u64, result: Result<u64>) {
        self.immediate.push_back(Completion { user_data, result });
    }

    /// The pool, started on first use.
    fn pool(&mut self) -> Result<&mut WorkerPool> {
        if self.pool.is_none() {
            let pool = WorkerPool::start(&self.mapper, self.host.notifier())?;
            self.pool = Some(pool);
        }
        self.pool
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, "the worker pool is not running"))
    }

    /// Hands a request to the worker pool.
    fn send_to_pool(&mut self, user_data: u64, bytes: u64, op: JobOp) {
        if let Err(e) = self.pool() {
            return self.complete_now(user_data, Err(e));
        }
        let slot = self.slots.acquire(user_data, 1, bytes);
        if let Some(pool) = self.pool.as_mut() {
            pool.submit(Job { slot, op });
        }
    }

    fn accept(&mut self, request: &Request<'_>) {
        let user_data = request.user_data;
        match request.op {
            RequestOp::Read { offset, bufs } => self.accept_read(user_data, offset, bufs),
            RequestOp::Write { offset, bufs } => {
                let fua = request.flags.contains(RequestFlags::FUA);
                self.accept_write(user_data, offset, bufs, fua);
            }
            RequestOp::WriteZeroes { offset, len } => {
                match self.check(offset, len, Operation::WriteZeroes, true) {
                    Err(e) => self.complete_now(user_data, Err(e)),
                    Ok(()) => {
                        let may_unmap = !request.flags.contains(RequestFlags::NO_UNMAP);
                        let op = JobOp::WriteZeroes {
                            offset,
                            len,
                            may_unmap,
                        };
                        self.send_to_pool(user_data, 0, op);
                    }
                }
            }
            RequestOp::Discard { offset, len } => {
                match self.check(offset, len, Operation::Discard, true) {
                    Err(e) => self.complete_now(user_data, Err(e)),
                    Ok(()) => self.send_to_pool(user_data, 0, JobOp::Discard { offset, len }),
                }
            }
            RequestOp::Flush => self.accept_flush(user_data),
        }
    }

    fn accept_read(&mut self, user_data: u64, offset: u64, bufs: &[IoBufMut<'static>]) {
        let len = total_len_mut(bufs);
        if let Err(e) = self.check(offset, len, Operation::Read, false) {
            return self.complete_now(user_data, Err(e));
        }
        if let Some(alignment) = self.alignment {
            let segments = bufs.iter().map(|b| (b.as_mut_ptr() as usize, b.len()));
            if let Err(e) = check_direct_alignment(alignment, offset, len, segments) {
                let e = self.with_image(e.with_operation(Operation::Read));
                return self.complete_now(user_data, Err(e));
            }
        }
        if len == 0 {
            return self.complete_now(user_data, Ok(0));
        }
        self.read_map.clear();
        match self.mapper.map_read(offset, len, &mut self.read_map) {
            Err(e) => self.complete_now(user_data, Err(e.with_operation(Operation::Read))),
            Ok(Mapped::Slow) => {
                let op = JobOp::Read {
                    offset,
                    bufs: bufs.to_vec(),
                };
                self.send_to_pool(user_data, len, op);
            }
            Ok(Mapped::Fast) => self.read_fast(user_data, offset, len, bufs),
        }
    }

    /// Serves a mapped read: zeros now, one host read per host piece.
    fn read_fast(&mut self, user_data: u64, offset: u64, len: u64, bufs: &[IoBufMut<'static>]) {
        let mut total = 0u64;
        let mut host_pieces = 0u32;
        let mut aligned = true;
        for piece in &self.read_map {
            match *piece {
                ReadMapping::Zero { len: n } => total = total.saturating_add(n),
                ReadMapping::Host {
                    file,
                    offset: host,
                    len: n,
                } => {
                    if let Some(a) = self.alignment {
                        aligned &= host_range_aligned(a, total, host, n);
                    }
                    if file >= self.paths.len() {
                        // Counted as uncovered: refused below as a bad mapping.
                        total = u64::MAX;
                    }
                    total = total.saturating_add(n);
                    host_pieces += 1;
                }
                ReadMapping::Encoded { file, len: n, .. } => {
                    if file >= self.paths.len() {
                        total = u64::MAX;
                    }
                    total = total.saturating_add(n);
                    host_pieces += 1;
                }
            }
        }
        if total != len {
            let e = mapping_mismatch(offset, len, Operation::Read);
            return self.complete_now(user_data, Err(self.with_image(e)));
        }
        if !aligned {
            let op = JobOp::Read {
                offset,
                bufs: bufs.to_vec(),
            };
            return self.send_to_pool(user_data, len, op);
        }
        let slot = (host_pieces > 0).then(|| self.slots.acquire(user_data, host_pieces, len));
        if let Some(s) = slot.and_then(|s| self.slots.get_mut(s)) {
            s.bufs.extend_from_slice(bufs);
        }
        let mut pos = 0u64;
        for i in 0..self.read_map.len() {
            let piece = self.read_map[i];
            match piece {
                ReadMapping::Zero { len: n } => zero_range(bufs, pos, n),
                ReadMapping::Host {
                    file,
                    offset: host,
                    len: n,
                } => {
                    let Some(slot) = slot else { break };
                    let id = self.ops.insert(HostOpRecord {
                        slot,
                        start: pos,
                        len: n,
                        file,
                        host_offset: host,
                        read: true,
                        link: None,
                        encoded: None,
                    });
                    self.read_iov.clear();
                    push_range_mut(bufs, pos, n, &mut self.read_iov);
                    let op = HostOp::Read {
                        file,
                        offset: host,
                        bufs: &self.read_iov,
                    };
                    self.host.push(id, op);
                    self.host_pushed = true;
                }
                ReadMapping::Encoded {
                    file,
                    offset: host,
                    host_len,
                    decoded_len,
                    skip,
                    len: n,
                    codec,
                } => {
                    let Some(slot) = slot else { break };
                    let encoded = (|| {
                        Some(EncodedPiece {
                            slot,
                            start: pos,
                            len: n,
                            offset: host,
                            host_len: usize::try_from(host_len).ok()?,
                            decoded_len: usize::try_from(decoded_len).ok()?,
                            skip: usize::try_from(skip).ok()?,
                            codec,
                        })
                    })();
                    let placed = encoded.and_then(|p| self.encoded.place(file, p, self.alignment));
                    match placed {
                        None => {
                            let e = mapping_mismatch(offset, len, Operation::Read);
                            let e = self.with_image(e);
                            if let Some(s) = self.slots.get_mut(slot) {
                                s.fail(e);
                                s.outstanding = s.outstanding.saturating_sub(1);
                            }
                        }
                        Some(Placement::Waiting) => {}
                        Some(Placement::Ready(input)) => self.decode(input),
                        Some(Placement::Read {
                            index,
                            offset: window,
                            buffer,
                        }) => {
                            let id = self.ops.insert(HostOpRecord {
                                slot,
                                start: pos,
                                len: n,
                                file,
                                host_offset: window,
                                read: true,
                                link: None,
                                encoded: Some(index),
                            });
                            self.read_iov.clear();
                            self.read_iov.push(buffer);
                            let op = HostOp::Read {
                                file,
                                offset: window,
                                bufs: &self.read_iov,
                            };
                            self.host.push(id, op);
                            self.host_pushed = true;
                        }
                    }
                }
            }
            pos += piece.len();
        }
        if slot.is_none() {
            self.complete_now(user_data, Ok(len));
        }
    }

    fn accept_write(&mut self, user_data: u64, offset: u64, bufs: &[IoBuf<'static>], fua: bool) {
        let len = total_len(bufs);
        if let Err(e) = self.check(offset, len, Operation::Write, true) {
            return self.complete_now(user_data, Err(e));
        }
        if let Some(alignment) = self.alignment {
            let segments = bufs.iter().map(|b| (b.as_ptr() as usize, b.len()));
            if let Err(e) = check_direct_alignment(alignment, offset, len, segments) {
                let e = self.with_image(e.with_operation(Operation::Write));
                return self.complete_now(user_data, Err(e));
            }
        }
        if fua {
            let op = JobOp::Write {
                offset,
                bufs: bufs.to_vec(),
                fua: true,
            };
            return self.send_to_pool(user_data, len, op);
        }
        if len == 0 {
            return self.complete_now(user_data, Ok(0));
        }
        self.write_map.clear();
        match self.mapper.map_write(offset, len, &mut self.write_map) {
            Err(e) => self.complete_now(user_data, Err(e.with_operation(Operation::Write))),
            Ok(Mapped::Slow) => {
                let op = JobOp::Write {
                    offset,
                    bufs: bufs.to_vec(),
                    fua: false,
                };
                self.send_to_pool(user_data, len, op);
            }
            Ok(Mapped::Fast) => self.write_fast(user_data, offset, len, bufs),
        }
    }

    /// Serves a mapped write: one host write per piece.
    fn write_fast(&mut self, user_data: u64, offset: u64, len: u64, bufs: &[IoBuf<'static>]) {
        let mut total = 0u64;
        let mut aligned = true;
        for piece in &self.write_map {
            let (file, host, n) = match *piece {
                WriteMapping::Host { file, offset, len } => (file, offset, len),
                WriteMapping::Allocated {
                    file, offset, len, ..
                } => (file, offset, len),
            };
            if let Some(a) = self.alignment {
                aligned &= host_range_aligned(a, total, host, n);
            }
            if file >= self.paths.len() {
                // Counted as uncovered: refused below as a bad mapping.
                total = u64::MAX;
            }
            total = total.saturating_add(n);
        }
        if total != len || !aligned {
            // Give the allocations back: the request is refused or served by the synchronous path.
            for piece in &self.write_map {
                if let WriteMapping::Allocated { link, .. } = *piece {
                    let aborted = Error::new(ErrorKind::Io, "the write was not submitted");
                    // The allocation is given back; a failure to do so leaves a leak the format's check finds.
                    let _ = self.mapper.finish_allocation(link, Err(aborted));
                }
            }
            if total != len {
                let e = mapping_mismatch(offset, len, Operation::Write);
                return self.complete_now(user_data, Err(self.with_image(e)));
            }
            let op = JobOp::Write {
                offset,
                bufs: bufs.to_vec(),
                fua: false,
            };
            return self.send_to_pool(user_data, len, op);
        }
        // total == len > 0, so there is at least one piece; a table never holds 2^32 pieces of one request.
        let pieces = self.write_map.len() as u32;
        let slot = self.slots.acquire(user_data, pieces, len);
        let mut pos = 0u64;
        for piece in &self.write_map {
            let (file, host, n, link) = match *piece {
                WriteMapping::Host { file, offset, len } => (file, offset, len, None),
                WriteMapping::Allocated {
                    file,
                    offset,
                    len,
                    link,
                } => (file, offset, len, Some(link)),
            };
            let id = self.ops.insert(HostOpRecord {
                slot,
                start: pos,
                len: n,
                file,
                host_offset: host,
                read: false,
                link,
                encoded: None,
            });
            self.write_iov.clear();
            push_range(bufs, pos, n, &mut self.write_iov);
            let op = HostOp::Write {
                file,
                offset: host,
                bufs: &self.write_iov,
            };
            self.host.push(id, op);
            self.host_pushed = true;
            pos += n;
        }
    }

    /// A flush: runs on the pool once every request submitted before it has completed.
    fn accept_flush(&mut self, user_data: u64) {
        if let Err(e) = self.pool() {
            return self.complete_now(user_data, Err(e));
        }
        let earlier = self.slots.live();
        let slot = self.slots.acquire(user_data, 1, 0);
        if earlier == 0 {
            if let Some(pool) = self.pool.as_mut() {
                pool.submit(Job {
                    slot,
                    op: JobOp::Flush,
                });
            }
        } else if let Some(seq) = self.slots.get_mut(slot).map(|s| s.seq) {
            self.barriers.add(slot, seq, earlier);
        }
    }

    /// The error of a failed host operation, naming the host file, offset and operation.
    fn host_error(&self, record: &HostOpRecord, failure: HostFailure) -> Error {
        host_op_error(record, failure, self.paths.get(record.file))
    }

    /// Accounts for one host completion; returns the guest request's completion when it was the last piece.
    fn host_completed(&mut self, done: HostCompletion) -> Option<Completion> {
        let record = self.ops.remove(done.user_data)?;
        if let Some(index) = record.encoded {
            return self.encoded_read_completed(record, index, done);
        }
        let failure = match done.result {
            Ok(n) if record.read => {
                if n < record.len {
                    // The end of the host file: the rest of the piece reads as zeros.
                    if let Some(slot) = self.slots.get_mut(record.slot) {
                        zero_range(&slot.bufs, record.start + n, record.len - n);
                    }
                }
                None
            }
            Ok(n) if n < record.len => Some(HostFailure::ShortWrite(n)),
            Ok(_) => None,
            Err(errno) => Some(HostFailure::Errno(errno)),
        };
        let mut error = failure.map(|f| self.host_error(&record, f));
        if let Some(link) = record.link {
            let written = match failure {
                None => Ok(()),
                Some(f) => Err(self.host_error(&record, f)),
            };
            if let Err(e) = self.mapper.finish_allocation(link, written) {
                error.get_or_insert(e);
            }
        }
        let slot = self.slots.get_mut(record.slot)?;
        if let Some(e) = error {
            slot.fail(e);
        }
        slot.outstanding = slot.outstanding.saturating_sub(1);
        if slot.outstanding > 0 {
            return None;
        }
        self.finish_slot(record.slot)
    }

    /// A window of encoded data was read: the pieces waiting for it go to the pool for decoding (each stays
    /// outstanding until then), or fail with the read's error. Returns a request that finished.
    fn encoded_read_completed(
        &mut self,
        record: HostOpRecord,
        index: u32,
        done: HostCompletion,
    ) -> Option<Completion> {
        let (pieces, buffer, start) = self.encoded.completed(index, done.result);
        let mut finished = None;
        for piece in pieces {
            match (&buffer, done.result) {
                (Some(buffer), Ok(_)) => {
                    let data_start = usize::try_from(piece.offset - start).unwrap_or(usize::MAX);
                    self.decode(DecodeInput {
                        buffer: Arc::clone(buffer),
                        data_start,
                        piece,
                    });
                }
                (_, result) => {
                    let failure = match result {
                        Err(errno) => HostFailure::Errno(errno),
                        Ok(n) => HostFailure::ShortWrite(n),
                    };
                    let error = self.host_error(&record, failure);
                    if let Some(c) = self.piece_finished(piece.slot, Err(error)) {
                        // Several requests may finish here; the others are completed at once.
                        if let Some(earlier) = finished.replace(c) {
                            self.immediate.push_back(earlier);
                        }
                    }
                }
            }
        }
        finished
    }

    /// Sends an encoded piece whose bytes are in memory to the pool for decoding.
    fn decode(&mut self, input: DecodeInput) {
        let piece = input.piece;
        if let Err(e) = self.pool() {
            if let Some(c) = self.piece_finished(piece.slot, Err(e)) {
                self.immediate.push_back(c);
            }
            return;
        }
        let mut out = Vec::new();
        if let Some(slot) = self.slots.get_mut(piece.slot) {
            push_range_mut(&slot.bufs, piece.start, piece.len, &mut out);
        }
        if let Some(pool) = self.pool.as_mut() {
            pool.submit(Job {
                slot: piece.slot,
                op: JobOp::Decode { input, out },
            });
        }
    }

    /// Accounts for one finished piece of a request; its completion when it was the last.
    fn piece_finished(&mut self, slot: u32, result: Result<u64>) -> Option<Completion> {
        let s = self.slots.get_mut(slot)?;
        if let Err(e) = result {
            s.fail(e);
        }
        s.outstanding = s.outstanding.saturating_sub(1);
        if s.outstanding > 0 {
            return None;
        }
        self.finish_slot(slot)
    }

    /// Frees a finished request's slot and starts the flushes that were waiting for it.
    fn finish_slot(&mut self, slot: u32) -> Option<Completion> {
        let (completion, seq) = self.slots.release(slot)?;
        if !self.barriers.is_empty() {
            self.barriers.completed(seq, &mut self.flushes_ready);
            while let Some(flush) = self.flushes_ready.pop() {
                if let Some(pool) = self.pool.as_mut() {
                    pool.submit(Job {
                        slot: flush,
                        op: JobOp::Flush,
                    });
                }
            }
        }
        Some(completion)
    }

    fn signal(&self) {
        // Fails only when the counter would overflow, and then the eventfd is readable anyway.
        let _ = self.host.notifier().write(1);
    }
}

impl AsyncIo for MappedQueue {
    fn notifier(&self) -> &EventFd {
        self.host.notifier()
    }

    fn submit(&mut self, batch: &[Request<'_>]) -> Result<()> {
        let before = self.immediate.len();
        self.host_pushed = false;
        for request in batch {
            self.accept(request);
        }
        if self.host_pushed {
            self.host.submit()?;
        }
        if self.immediate.len() > before {
            self.signal();
        }
        Ok(())
    }

    fn next_completed_request(&mut self) -> Option<Completion> {
        if let Some(done) = self.immediate.pop_front() {
            return Some(done);
        }
        if self.pool.as_ref().is_some_and(WorkerPool::has_done) {
            while let Some(done) = self.pool.as_mut().and_then(WorkerPool::take_done) {
                if done.piece {
                    // A decoded piece: one piece of its request.
                    if let Some(completion) = self.piece_finished(done.slot, done.result) {
                        return Some(completion);
                    }
                    continue;
                }
                if let Some(slot) = self.slots.get_mut(done.slot) {
                    match done.result {
                        Ok(n) => slot.bytes = n,
                        Err(e) => slot.fail(e),
                    }
                }
                if let Some(completion) = self.finish_slot(done.slot) {
                    return Some(completion);
                }
            }
        }
        while let Some(done) = self.host.next_completion() {
            if let Some(completion) = self.host_completed(done) {
                return Some(completion);
            }
        }
        None
    }

    fn ring_depth(&self) -> u32 {
        self.ring_depth
    }
}

impl Drop for MappedQueue {
    /// Waits for everything in flight (so no kernel I/O or worker targets memory the caller frees next),
    /// finishing outstanding allocations on the way, then stops the pool.
    fn drop(&mut self) {
        loop {
            while self.next_completed_request().is_some() {}
            if self.slots.live() == 0 {
                break;
            }
            let pool_busy = self.pool.as_ref().is_some_and(|p| p.outstanding() > 0);
            if self.host.pending() == 0 && !pool_busy {
                // Nothing left that could complete (a flush waiting for a request the backend lost).
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
}
