//! [`MappedQueue`]: a format's [`AsyncIo`] queue, built from its [`Mapper`] and a [`HostQueue`].
//!
//! Per batch, each request is checked (range, read-only, O_DIRECT alignment: a bad request completes at once
//! with its own error and the queue goes on), then mapped with the format's [`Mapper`], the same answer the
//! synchronous path ([`mapped_io`](crate::mapped_io)) serves:
//! - a read: zero pieces are filled in memory at once, each host piece becomes one [`HostOp::Read`] over the
//!   matching slices of the request's buffers (no copy), each encoded (compressed) piece one [`HostOp::Read`]
//!   into a queue-owned aligned buffer, decoded with [`Mapper::decode`] (a unit of at most 16 KiB on the
//!   queue's thread, a larger one on the worker pool, several at once) and copied to the request's buffers, and each piece of another disk (a backing file, a parent, a data file) a
//!   job on the pool reading that disk;
//! - a write: each host piece becomes one [`HostOp::Write`]; when a write into a fresh allocation finishes,
//!   [`Mapper::finish_allocation`] links it (exactly once); pieces of another disk and slow pieces
//!   ([`Mapper::write_slow`]) are jobs on the pool;
//! - a FUA write is mapped and written as any other; once its data is written it waits for a flush
//!   ([`Mapper::flush`] on the pool) that started after that, and completes with it. FUA writes share
//!   flushes: one runs at a time, and every FUA write whose data was written meanwhile waits for the next
//!   one, so a batch of them costs one or two flushes, not one each;
//! - write-zeroes, discards, and requests whose host pieces O_DIRECT cannot take as they are, run whole on a
//!   small [worker pool](crate::worker_pool), through the synchronous path (a FUA write there flushes on its
//!   own);
//! - a flush waits until every write, write-zeroes, discard and flush submitted before it on this queue has
//!   completed (not reads: a flush orders only what changes the disk), then runs [`Mapper::flush`] on the
//!   pool; requests submitted after it proceed meanwhile.
//!
//! A host read that completes short is taken as the end of the host file only when it is (one `fstat` on that
//! rare path: then the rest of the piece reads as zeros); inside the file the rest is pushed and submitted
//! again (a read that moved nothing is the end of the file as it was when it ran: an allocating write of the
//! same batch may have grown it since), so a backend passing a short count on never hands the guest zeros for
//! data. (The read of an encoded window is not resumed: its short count is taken as is.)
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
use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::direct_io::DirectIoAlignment;
use crate::disk_file::{check_range, read_only_error};
use crate::encoded_read::{DecodeInput, EncodedPiece, EncodedReads, Placement};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::host_file::HostFile;
use crate::host_queue::{HostCompletion, HostOp, HostQueue, HostQueueBackend};
use crate::mapped_io::{context, mapping_mismatch};
use crate::mapper::{Mapper, ReadMapping, WriteMapping};
use crate::queue_errors::{host_op_error, HostFailure};
use crate::request_buffers::{
    check_direct_alignment, host_range_aligned, push_range, push_range_mut, zero_range,
};
use crate::request_slots::{FlushBarriers, HostOpRecord, HostOpTable, SlotTable};
use crate::worker_pool::{Job, JobOp, WorkerPool};

/// One asynchronous queue of a format: maps each request of a batch with the format's [`Mapper`] and
/// submits the batch's data I/O on a [`HostQueue`] of `backend` (see the [module docs](self)).
pub struct MappedQueue {
    mapper: Arc<dyn Mapper>,
    host: Box<dyn HostQueue>,
    /// The backend's name, as [`AsyncIo::backend`] reports it.
    backend: &'static str,
    ring_depth: u32,
    read_only: bool,
    alignment: Option<DirectIoAlignment>,
    /// The host files' paths, for error messages.
    paths: Vec<Arc<Path>>,
    slots: SlotTable,
    ops: HostOpTable,
    barriers: FlushBarriers,
    /// Flush slots whose wait is over (scratch).
    flushes_ready: Vec<u32>,
    /// FUA writes whose data is written, waiting for the next shared flush.
    fua_waiting: Vec<u32>,
    /// FUA writes the running shared flush completes.
    fua_flushing: Vec<u32>,
    /// The slot of the running shared flush (internal: no guest request).
    fua_flush: Option<u32>,
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
    /// The decoded unit of a piece decoded on this thread (grown once to the largest such unit).
    decode_scratch: Vec<u8>,
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

/// The largest decoded unit [`MappedQueue`] decodes on its own thread instead of the worker pool: 16 KiB, a
/// few microseconds of AES or inflate, less than waking a worker and hearing back from it.
const INLINE_DECODE_MAX: usize = 16 << 10;

impl MappedQueue {
    /// A queue of at most `ring_depth` requests in flight over `mapper`'s image, doing host I/O on `backend`.
    pub fn new(
        mapper: Arc<dyn Mapper>,
        backend: &dyn HostQueueBackend,
        ring_depth: u32,
    ) -> Result<MappedQueue> {
        let ring_depth = ring_depth.max(1);
        let (host, paths) = {
            let files: Vec<&HostFile> = mapper.host_files().iter().collect();
            let host = backend.create_queue(&files, ring_depth)?;
            let paths: Vec<Arc<Path>> = files.iter().map(|f| f.path_arc()).collect();
            (host, paths)
        };
        let depth = ring_depth as usize;
        Ok(MappedQueue {
            read_only: mapper.is_read_only(),
            alignment: mapper.direct_io_alignment(),
            mapper,
            host,
            backend: backend.name(),
            ring_depth,
            paths,
            slots: SlotTable::with_capacity(depth),
            ops: HostOpTable::with_capacity(depth),
            barriers: FlushBarriers::default(),
            flushes_ready: Vec::new(),
            fua_waiting: Vec::new(),
            fua_flushing: Vec::new(),
            fua_flush: None,
            immediate: VecDeque::with_capacity(depth),
            pool: None,
            read_map: Vec::new(),
            write_map: Vec::new(),
            read_iov: Vec::new(),
            write_iov: Vec::new(),
            host_pushed: false,
            encoded: EncodedReads::default(),
            decode_scratch: Vec::new(),
        })
    }

    /// Adds the image's format and path (the first host file) to an error about a whole request.
    fn with_image(&self, err: Error) -> Error {
        let err = err.with_format(self.mapper.format_name());
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
        check_range(offset, len, self.mapper.logical_size())
            .map_err(|e| self.with_image(e.with_operation(operation)))
    }

    /// The checks of a read or write before it is mapped: range, read-only, and O_DIRECT's alignment of its
    /// offset, length and buffers (`(address, length)` each).
    fn admit(
        &self,
        offset: u64,
        len: u64,
        operation: Operation,
        segments: impl Iterator<Item = (usize, usize)>,
    ) -> Result<()> {
        self.check(offset, len, operation, operation == Operation::Write)?;
        match self.alignment {
            Some(alignment) => check_direct_alignment(alignment, offset, len, segments)
                .map_err(|e| self.with_image(e.with_operation(operation))),
            None => Ok(()),
        }
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
        let ordered = !matches!(op, JobOp::Read { .. });
        let slot = self.slots.acquire(user_data, 1, bytes, ordered);
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

    /// `err` with the image's context and the request's guest offset (unless it names its own).
    fn context(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        context(&*self.mapper, err, operation, offset)
    }

    /// Records a host operation serving part of a request and pushes it onto the host queue: what reads and
    /// writes, mapped or encoded, share.
    fn push_host_op(&mut self, record: HostOpRecord, data: HostData<'_>) {
        let (file, offset) = (record.file, record.host_offset);
        let id = self.ops.insert(record);
        let op = match data {
            HostData::Into(bufs, start, len) => {
                self.read_iov.clear();
                push_range_mut(bufs, start, len, &mut self.read_iov);
                HostOp::Read {
                    file,
                    offset,
                    bufs: &self.read_iov,
                }
            }
            HostData::From(bufs, start, len) => {
                self.write_iov.clear();
                push_range(bufs, start, len, &mut self.write_iov);
                HostOp::Write {
                    file,
                    offset,
                    bufs: &self.write_iov,
                }
            }
        };
        self.host.push(id, op);
        self.host_pushed = true;
    }

    /// Hands one piece of the request in `slot` to the pool (another disk's I/O, a slow write).
    fn send_piece(&mut self, slot: u32, op: JobOp) {
        match self.pool() {
            Ok(pool) => pool.submit(Job { slot, op }),
            Err(e) => {
                if let Some(c) = self.piece_finished(slot, Err(e)) {
                    self.immediate.push_back(c);
                }
            }
        }
    }

    fn accept_read(&mut self, user_data: u64, offset: u64, bufs: &[IoBufMut<'static>]) {
        let len = total_len_mut(bufs);
        let segments = bufs.iter().map(|b| (b.as_mut_ptr() as usize, b.len()));
        if let Err(e) = self.admit(offset, len, Operation::Read, segments) {
            return self.complete_now(user_data, Err(e));
        }
        if len == 0 {
            return self.complete_now(user_data, Ok(0));
        }
        self.read_map.clear();
        match self.mapper.map_read(offset, len, &mut self.read_map) {
            Err(e) => {
                let e = self.context(e, Operation::Read, Some(offset));
                self.complete_now(user_data, Err(e));
            }
            Ok(()) => self.read_mapped(user_data, offset, len, bufs),
        }
    }

    /// Serves a mapped read: zeros now, one host read per host piece, encoded pieces read and decoded, other
    /// disks' pieces on the pool.
    fn read_mapped(&mut self, user_data: u64, offset: u64, len: u64, bufs: &[IoBufMut<'static>]) {
        let mut total = 0u64;
        let mut later = 0u32;
        let mut valid = true;
        let mut aligned = true;
        for piece in &self.read_map {
            match *piece {
                ReadMapping::Zero { .. } => {}
                ReadMapping::Host {
                    file,
                    offset: host,
                    len: n,
                } => {
                    if let Some(a) = self.alignment {
                        aligned &= host_range_aligned(a, total, host, n);
                    }
                    valid &= file < self.paths.len();
                    later += 1;
                }
                ReadMapping::Encoded { file, .. } => {
                    valid &= file < self.paths.len();
                    later += 1;
                }
                ReadMapping::Disk { disk, .. } => {
                    valid &= self.mapper.disk(disk).is_some();
                    later += 1;
                }
            }
            total = total.saturating_add(piece.len());
        }
        if total != len || !valid {
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
        let Some(slot) = (later > 0).then(|| self.slots.acquire(user_data, later, len, false))
        else {
            // Zeros only: filled, nothing to wait for.
            zero_range(bufs, 0, len);
            return self.complete_now(user_data, Ok(len));
        };
        if let Some(s) = self.slots.get_mut(slot) {
            s.bufs.extend_from_slice(bufs);
        }
        let mut pos = 0u64;
        for i in 0..self.read_map.len() {
            let piece = self.read_map[i];
            let n = piece.len();
            match piece {
                ReadMapping::Zero { .. } => zero_range(bufs, pos, n),
                ReadMapping::Host {
                    file, offset: host, ..
                } => {
                    let record = HostOpRecord::read(slot, pos, n, file, host);
                    self.push_host_op(record, HostData::Into(bufs, pos, n));
                }
                ReadMapping::Encoded {
                    file,
                    offset: host,
                    host_len,
                    decoded_len,
                    skip,
                    codec,
                    ..
                } => {
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
                    match encoded.and_then(|p| self.encoded.place(file, p, self.alignment)) {
                        None => {
                            let e = mapping_mismatch(offset, len, Operation::Read);
                            let e = self.with_image(e);
                            if let Some(c) = self.piece_finished(slot, Err(e)) {
                                self.immediate.push_back(c);
                            }
                        }
                        Some(Placement::Waiting) => {}
                        Some(Placement::Ready(input)) => self.decode(input),
                        Some(Placement::Read {
                            index,
                            offset: window,
                            buffer,
                        }) => {
                            let record = HostOpRecord {
                                encoded: Some(index),
                                ..HostOpRecord::read(slot, pos, n, file, window)
                            };
                            let window_len = buffer.len() as u64;
                            let buffer = [buffer];
                            self.push_host_op(record, HostData::Into(&buffer, 0, window_len));
                        }
                    }
                }
                ReadMapping::Disk {
                    disk, offset: at, ..
                } => {
                    let mut part = Vec::new();
                    push_range_mut(bufs, pos, n, &mut part);
                    let op = JobOp::DiskRead {
                        disk,
                        offset: at,
                        bufs: part,
                    };
                    self.send_piece(slot, op);
                }
            }
            pos += n;
        }
    }

    fn accept_write(&mut self, user_data: u64, offset: u64, bufs: &[IoBuf<'static>], fua: bool) {
        let len = total_len(bufs);
        let segments = bufs.iter().map(|b| (b.as_ptr() as usize, b.len()));
        if let Err(e) = self.admit(offset, len, Operation::Write, segments) {
            return self.complete_now(user_data, Err(e));
        }
        if len == 0 && fua {
            // Nothing to write, but what is written must be durable: a flush of its own.
            return self.accept_flush(user_data);
        }
        if len == 0 {
            return self.complete_now(user_data, Ok(0));
        }
        self.write_map.clear();
        match self.mapper.map_write(offset, len, &mut self.write_map) {
            Err(e) => {
                let e = self.context(e, Operation::Write, Some(offset));
                self.complete_now(user_data, Err(e));
            }
            Ok(()) => self.write_mapped(user_data, offset, len, bufs, fua),
        }
    }

    /// Serves a mapped write: one host write per host piece (allocations linked when written), other disks'
    /// pieces and slow pieces on the pool; a FUA write then waits for a shared flush (see `finish_slot`).
    fn write_mapped(
        &mut self,
        user_data: u64,
        offset: u64,
        len: u64,
        bufs: &[IoBuf<'static>],
        fua: bool,
    ) {
        let mut total = 0u64;
        let mut valid = true;
        let mut aligned = true;
        for piece in &self.write_map {
            match *piece {
                WriteMapping::Host {
                    file,
                    offset: host,
                    len: n,
                }
                | WriteMapping::Allocated {
                    file,
                    offset: host,
                    len: n,
                    ..
                } => {
                    if let Some(a) = self.alignment {
                        aligned &= host_range_aligned(a, total, host, n);
                    }
                    valid &= file < self.paths.len();
                }
                WriteMapping::Disk { disk, .. } => valid &= self.mapper.disk(disk).is_some(),
                WriteMapping::Slow { .. } => {}
            }
            total = total.saturating_add(piece.len());
        }
        if total != len || !valid || !aligned {
            // Give the allocations back: the request is refused or served whole by the synchronous path.
            for piece in &self.write_map {
                if let WriteMapping::Allocated { link, .. } = *piece {
                    // A failure to give back leaves a leak the format's check finds.
                    let _ = self.mapper.finish_allocation(link, Err(not_submitted()));
                }
            }
            if total != len || !valid {
                let e = mapping_mismatch(offset, len, Operation::Write);
                return self.complete_now(user_data, Err(self.with_image(e)));
            }
            let op = JobOp::Write {
                offset,
                bufs: bufs.to_vec(),
                fua,
            };
            return self.send_to_pool(user_data, len, op);
        }
        // total == len > 0, so there is at least one piece; a table never holds 2^32 pieces of one request.
        let pieces = self.write_map.len() as u32;
        let slot = self.slots.acquire(user_data, pieces, len, true);
        if let Some(s) = self.slots.get_mut(slot) {
            s.fua = fua;
        }
        let mut pos = 0u64;
        for i in 0..self.write_map.len() {
            let piece = self.write_map[i];
            let n = piece.len();
            match piece {
                WriteMapping::Host {
                    file, offset: host, ..
                } => {
                    let record = HostOpRecord::write(slot, pos, n, file, host, None);
                    self.push_host_op(record, HostData::From(bufs, pos, n));
                }
                WriteMapping::Allocated {
                    file,
                    offset: host,
                    link,
                    ..
                } => {
                    let record = HostOpRecord::write(slot, pos, n, file, host, Some(link));
                    self.push_host_op(record, HostData::From(bufs, pos, n));
                }
                WriteMapping::Disk {
                    disk, offset: at, ..
                } => {
                    let mut part = Vec::new();
                    push_range(bufs, pos, n, &mut part);
                    let op = JobOp::DiskWrite {
                        disk,
                        offset: at,
                        bufs: part,
                    };
                    self.send_piece(slot, op);
                }
                WriteMapping::Slow { .. } => {
                    let mut part = Vec::new();
                    push_range(bufs, pos, n, &mut part);
                    let op = JobOp::SlowWrite {
                        offset: offset + pos,
                        bufs: part,
                    };
                    self.send_piece(slot, op);
                }
            }
            pos += n;
        }
    }

    /// A flush: runs on the pool once every write, write-zeroes, discard and flush submitted before it has
    /// completed.
    fn accept_flush(&mut self, user_data: u64) {
        if let Err(e) = self.pool() {
            return self.complete_now(user_data, Err(e));
        }
        let earlier = self.slots.live_ordered();
        let slot = self.slots.acquire(user_data, 1, 0, true);
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

    /// The error of a failed host operation, naming the image's format, the host file, offset and operation.
    fn host_error(&self, record: &HostOpRecord, failure: HostFailure) -> Error {
        host_op_error(record, failure, self.paths.get(record.file))
            .with_format(self.mapper.format_name())
    }

    /// Accounts for one host completion; returns the guest request's completion when it was the last piece.
    fn host_completed(&mut self, done: HostCompletion) -> Option<Completion> {
        let record = self.ops.remove(done.user_data)?;
        if let Some(index) = record.encoded {
            return self.encoded_read_completed(record, index, done);
        }
        let failure = match done.result {
            Ok(n) if n < record.len => match self.short_transfer(&record, n) {
                ShortTransfer::Resumed => return None,
                ShortTransfer::EndOfFile => {
                    // The end of the host file: the rest of the piece reads as zeros.
                    if let Some(slot) = self.slots.get_mut(record.slot) {
                        zero_range(&slot.bufs, record.start + n, record.len - n);
                    }
                    None
                }
                ShortTransfer::Failed(failure) => Some(failure),
            },
            Ok(_) => None,
            Err(errno) => Some(HostFailure::Errno(errno)),
        };
        let written = match failure {
            None => Ok(()),
            Some(f) => Err(self.host_error(&record, f)),
        };
        let outcome = match record.link {
            // Linking returns the write's error, or its own.
            Some(link) => self
                .mapper
                .finish_allocation(link, written)
                .map_err(|e| self.context(e, Operation::Write, None)),
            None => written,
        };
        self.piece_finished(record.slot, outcome.map(|()| 0))
    }

    /// A host read or write that moved `n` bytes, fewer than its piece's: only a read ending at or past the
    /// end of its host file may stop there (the rest of the piece is zeros). Otherwise a read that made
    /// progress goes on with the rest of the piece (a backend that passed a short count on), a read that moved
    /// nothing is the end of the file as it was when it ran, and a short write fails: what was transferred
    /// short inside the file never reaches the guest as zeros.
    fn short_transfer(&mut self, record: &HostOpRecord, n: u64) -> ShortTransfer {
        let stopped_at = record.host_offset.saturating_add(n);
        if record.read && n == 0 {
            // A file read moves nothing only at the end of the file as it was then; an allocating write of
            // the same batch may have grown the file since, so the length now cannot tell (files never shrink
            // under a queue).
            return ShortTransfer::EndOfFile;
        }
        if record.read {
            // One fstat, on this rare path only.
            let file_len = self
                .mapper
                .host_files()
                .get(record.file)
                .and_then(|f| f.len().ok());
            if file_len.is_some_and(|len| stopped_at >= len) {
                return ShortTransfer::EndOfFile;
            }
        }
        if !record.read {
            // A write never ends short by the host-queue contract: whatever a backend passed on is an error.
            return ShortTransfer::Failed(HostFailure::ShortWrite(n));
        }
        let rest = HostOpRecord {
            start: record.start + n,
            len: record.len - n,
            host_offset: stopped_at,
            ..*record
        };
        let Some(slot) = self.slots.get_mut(record.slot) else {
            return ShortTransfer::Failed(HostFailure::Errno(libc::EIO));
        };
        self.read_iov.clear();
        push_range_mut(&slot.bufs, rest.start, rest.len, &mut self.read_iov);
        let id = self.ops.insert(rest);
        let op = HostOp::Read {
            file: rest.file,
            offset: rest.host_offset,
            bufs: &self.read_iov,
        };
        self.host.push(id, op);
        match self.host.submit() {
            Ok(()) => ShortTransfer::Resumed,
            Err(_) => {
                self.ops.remove(id);
                ShortTransfer::Failed(HostFailure::Errno(libc::EIO))
            }
        }
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

    /// Decodes an encoded piece whose bytes are in memory: a unit of at most [`INLINE_DECODE_MAX`] bytes (an
    /// encrypted sector run, a small compressed cluster) at once on this thread, where it costs less than the
    /// hand-off; a larger one on the pool (several at once).
    fn decode(&mut self, input: DecodeInput) {
        let piece = input.piece;
        if piece.decoded_len <= INLINE_DECODE_MAX {
            let mut out = Vec::new();
            if let Some(slot) = self.slots.get_mut(piece.slot) {
                push_range_mut(&slot.bufs, piece.start, piece.len, &mut out);
            }
            let result =
                crate::worker_pool::decode(&*self.mapper, &input, &out, &mut self.decode_scratch);
            // The window's reference goes before the piece is accounted for, as on the pool.
            drop(input);
            if let Some(c) = self.piece_finished(piece.slot, result) {
                self.immediate.push_back(c);
            }
            return;
        }
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

    /// Frees a finished request's slot and starts the flushes that were waiting for it. A FUA write whose
    /// data is written waits for a shared flush instead; the end of a shared flush completes its FUA writes.
    fn finish_slot(&mut self, slot: u32) -> Option<Completion> {
        if self.fua_flush == Some(slot) {
            return self.shared_flush_finished(slot);
        }
        if let Some(s) = self.slots.get_mut(slot) {
            if s.fua && s.error.is_none() {
                s.fua = false;
                self.fua_waiting.push(slot);
                self.start_shared_flush();
                return None;
            }
        }
        self.release_slot(slot)
    }

    /// Starts a shared flush for the FUA writes waiting, unless one is running (they wait for the next).
    fn start_shared_flush(&mut self) {
        if self.fua_flush.is_some() || self.fua_waiting.is_empty() {
            return;
        }
        if let Err(e) = self.pool() {
            // The writes fail: their data may not be durable.
            for slot in std::mem::take(&mut self.fua_waiting) {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.fail(fua_flush_failed(&e));
                }
                if let Some(c) = self.release_slot(slot) {
                    self.immediate.push_back(c);
                }
            }
            return;
        }
        std::mem::swap(&mut self.fua_waiting, &mut self.fua_flushing);
        // Internal: no guest request waits for it by sequence, and `in_flight` does not count it.
        let flush = self.slots.acquire(u64::MAX, 1, 0, false);
        self.fua_flush = Some(flush);
        if let Some(pool) = self.pool.as_mut() {
            pool.submit(Job {
                slot: flush,
                op: JobOp::Flush,
            });
        }
    }

    /// A shared flush finished: its FUA writes complete with its result (queued as immediate completions),
    /// and the next one starts for the FUA writes that waited meanwhile.
    fn shared_flush_finished(&mut self, flush: u32) -> Option<Completion> {
        self.fua_flush = None;
        let result = self.slots.release(flush).map(|(c, _, _)| c.result);
        let mut writes = std::mem::take(&mut self.fua_flushing);
        for &slot in &writes {
            if let (Some(Err(e)), Some(s)) = (&result, self.slots.get_mut(slot)) {
                s.fail(fua_flush_failed(e));
            }
            if let Some(c) = self.release_slot(slot) {
                self.immediate.push_back(c);
            }
        }
        // Keep the vector's capacity for the next shared flush.
        writes.clear();
        self.fua_flushing = writes;
        self.start_shared_flush();
        self.immediate.pop_front()
    }

    /// Frees a slot: its completion, after starting the flushes that waited for it.
    fn release_slot(&mut self, slot: u32) -> Option<Completion> {
        let (completion, seq, ordered) = self.slots.release(slot)?;
        if ordered && !self.barriers.is_empty() {
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

/// The bytes a host operation moves: `len` bytes from `start` of a request's (or a window's) buffers.
enum HostData<'b> {
    /// A read fills them.
    Into(&'b [IoBufMut<'static>], u64, u64),
    /// A write takes them.
    From(&'b [IoBuf<'static>], u64, u64),
}

/// What became of a host transfer that moved fewer bytes than its piece's.
enum ShortTransfer {
    /// The rest was pushed: the piece stays outstanding.
    Resumed,
    /// A read that reached the end of its host file.
    EndOfFile,
    /// The piece fails.
    Failed(HostFailure),
}

/// The error of a FUA write whose shared flush failed (each write of the flush gets its own copy).
fn fua_flush_failed(flush: &Error) -> Error {
    Error::new(
        flush.kind(),
        format!("the flush that makes this FUA write durable failed: {flush}"),
    )
    .with_operation(Operation::Write)
}

/// The error an allocation is given back with when its data write was never submitted.
fn not_submitted() -> Error {
    Error::new(ErrorKind::Io, "the write was not submitted")
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
            // A host read that let a small encoded piece be decoded at once may have finished its request.
            if let Some(done) = self.immediate.pop_front() {
                return Some(done);
            }
        }
        None
    }

    /// The host queue's own wait, when only its operations are outstanding: nothing ready to hand out, no
    /// job on the worker pool (whose completions come through the notifier alone).
    fn wait_in_backend(&mut self, timeout: Option<std::time::Duration>) -> Result<bool> {
        if !self.immediate.is_empty() || self.pool.as_ref().is_some_and(|p| p.outstanding() > 0) {
            return Ok(false);
        }
        self.host.wait_for_completion(timeout)
    }

    fn ring_depth(&self) -> u32 {
        self.ring_depth
    }

    fn backend(&self) -> &'static str {
        self.backend
    }

    fn in_flight(&self) -> usize {
        // The shared flush of FUA writes is not a request.
        self.slots.live() - usize::from(self.fua_flush.is_some()) + self.immediate.len()
    }

    unsafe fn register_memory(&mut self, regions: &[IoBufMut<'static>]) -> Result<bool> {
        // SAFETY: the caller keeps the regions valid until this queue, which owns the host queue, is dropped.
        unsafe { self.host.register_memory(regions) }
    }

    fn fixed_buffer_ops(&self) -> u64 {
        self.host.fixed_buffer_ops()
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
