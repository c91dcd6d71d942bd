//! The synchronous engine: a guest read or write served on the calling thread from a [`Mapper`]'s one answer.
//!
//! [`read_mapped`] asks [`Mapper::map_read`] where the range lives and moves the bytes piece by piece: host
//! ranges with positioned vectored reads (zeros past the end of the file), zeros in memory, encoded units read
//! and decoded, other disks (backing files, parents, data files) through their own [`DiskFile`] methods.
//! [`write_mapped`] does the same with [`Mapper::map_write`]: in-place writes, allocations written and then
//! linked ([`Mapper::finish_allocation`], exactly once each, also when an earlier piece failed), and the
//! format's own [`Mapper::write_slow`] for slow pieces. [`MappedDisk`](crate::MappedDisk) is a [`DiskFile`] on
//! these; [`MappedQueue`](crate::MappedQueue)'s worker pool runs them for requests it cannot batch.
//!
//! The piece lists and decode buffers are per-thread scratch space, so a request allocates nothing once a
//! thread has served one of its size (a request whose piece falls across several guest buffers collects their
//! slices).

use std::cell::Cell;
use std::thread::LocalKey;

use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::disk_file::DiskFile;
use crate::encoded_read::copy_decoded;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::host_file::HostFile;
use crate::mapper::{Mapper, ReadMapping, WriteMapping};
use crate::request_buffers::{buffers_in, zero_range};

thread_local! {
    static READ_PIECES: Cell<Vec<ReadMapping>> = const { Cell::new(Vec::new()) };
    static WRITE_PIECES: Cell<Vec<WriteMapping>> = const { Cell::new(Vec::new()) };
    /// Encoded bytes and the decoded unit of the piece being read.
    static ENCODED: Cell<(Vec<u8>, Vec<u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Zeros that write-zeroes through a mapping writes from (as many buffers as a chunk needs), aligned to a multiple
/// of every page size: a write a fatal signal stops short ends at a page boundary of its source (where copying
/// faulted), which is then a multiple of the page size into the request and so a sector boundary of a
/// sector-aligned host range, never the middle of a sector.
static ZEROS: AlignedZeros = AlignedZeros([0; ZERO_BUFFER]);
#[repr(C, align(65536))]
struct AlignedZeros([u8; ZERO_BUFFER]);
const ZERO_BUFFER: usize = 64 << 10;
/// The largest piece [`write_zeros_mapped`] writes at once.
const ZERO_CHUNK: u64 = 1 << 20;

/// This thread's scratch list from `key`, empty (a nested call, e.g. through a backing file, gets a new one).
fn take<T>(key: &'static LocalKey<Cell<Vec<T>>>) -> Vec<T> {
    let mut list = key.take();
    list.clear();
    list
}

/// Gives a scratch list back for the next request on this thread.
fn put_back<T>(key: &'static LocalKey<Cell<Vec<T>>>, list: Vec<T>) {
    key.set(list);
}

/// Adds the image's format and path, the operation and the request's guest offset to `err`, where it does not
/// name its own (an error of a backing file keeps the backing file's).
pub(crate) fn context<M: Mapper + ?Sized>(
    mapper: &M,
    err: Error,
    operation: Operation,
    offset: Option<u64>,
) -> Error {
    let err = err.with_format(mapper.format_name());
    let err = match mapper.host_files().first() {
        Some(file) => err.with_path(file.path()),
        None => err,
    };
    let err = err.with_operation(operation);
    match offset {
        Some(offset) => err.with_offset(offset),
        None => err,
    }
}

/// The error for a mapper whose pieces do not cover a request exactly, or name a file or disk it does not have.
pub(crate) fn mapping_mismatch(offset: u64, len: u64, operation: Operation) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!(
            "the image's mapping of a {len}-byte request does not cover it exactly with its own files"
        ),
    )
    .with_offset(offset)
    .with_operation(operation)
}

/// The host file `index` of `mapper`, or the mismatch error of the request at `offset`.
fn host_file<M: Mapper + ?Sized>(
    mapper: &M,
    index: usize,
    request: (u64, u64, Operation),
) -> Result<&HostFile> {
    let (offset, len, operation) = request;
    mapper
        .host_files()
        .get(index)
        .ok_or_else(|| mapping_mismatch(offset, len, operation))
}

/// The other disk `index` of `mapper`, or the mismatch error of the request at `offset`.
fn other_disk<M: Mapper + ?Sized>(
    mapper: &M,
    index: usize,
    request: (u64, u64, Operation),
) -> Result<&dyn DiskFile> {
    let (offset, len, operation) = request;
    mapper
        .disk(index)
        .ok_or_else(|| mapping_mismatch(offset, len, operation))
}

/// Reads `sum(bufs.len)` guest bytes at `offset` into `bufs` through `mapper`'s mapping (the caller checked
/// the range). Errors carry what the failing layer knows; [`MappedDisk`](crate::MappedDisk) adds the image's
/// context.
pub fn read_mapped<M: Mapper + ?Sized>(
    mapper: &M,
    offset: u64,
    bufs: &[IoBufMut<'_>],
) -> Result<()> {
    read_mapped_len(mapper, offset, total_len_mut(bufs), bufs)
}

/// [`read_mapped`] of a request whose length the caller has counted already.
pub(crate) fn read_mapped_len<M: Mapper + ?Sized>(
    mapper: &M,
    offset: u64,
    len: u64,
    bufs: &[IoBufMut<'_>],
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut pieces = take(&READ_PIECES);
    let result = mapper
        .map_read(offset, len, &mut pieces)
        .and_then(|()| read_pieces(mapper, offset, len, bufs, &pieces));
    put_back(&READ_PIECES, pieces);
    result
}

fn read_pieces<M: Mapper + ?Sized>(
    mapper: &M,
    offset: u64,
    len: u64,
    bufs: &[IoBufMut<'_>],
    pieces: &[ReadMapping],
) -> Result<()> {
    let request = (offset, len, Operation::Read);
    if pieces.iter().map(ReadMapping::len).sum::<u64>() != len {
        return Err(mapping_mismatch(offset, len, Operation::Read));
    }
    let mut pos = 0u64;
    for &piece in pieces {
        let n = piece.len();
        let part = buffers_in(bufs, len, pos, n);
        let part = part.as_slice();
        match piece {
            ReadMapping::Host {
                file, offset: at, ..
            } => {
                let got = host_file(mapper, file, request)?.read_vectored_at(at, part)? as u64;
                if got < n {
                    // Past the end of the host file the piece reads as zeros.
                    zero_range(part, got, n - got);
                }
            }
            ReadMapping::Zero { .. } => zero_range(part, 0, n),
            ReadMapping::Encoded {
                file,
                offset: at,
                host_len,
                decoded_len,
                skip,
                codec,
                ..
            } => {
                let file = host_file(mapper, file, request)?;
                let unit = EncodedUnit {
                    offset: at,
                    host_len,
                    decoded_len,
                    skip,
                    codec,
                };
                read_encoded(mapper, file, unit, part)?;
            }
            ReadMapping::Disk {
                disk, offset: at, ..
            } => other_disk(mapper, disk, request)?.read_at(at, part)?,
        }
        pos += n;
    }
    Ok(())
}

/// Where an encoded piece's unit lies and which part of it the piece is.
struct EncodedUnit {
    offset: u64,
    host_len: u64,
    decoded_len: u64,
    skip: u64,
    codec: u64,
}

/// Reads and decodes the unit of an encoded piece and copies the piece's bytes to `part`.
fn read_encoded<M: Mapper + ?Sized>(
    mapper: &M,
    file: &HostFile,
    unit: EncodedUnit,
    part: &[IoBufMut<'_>],
) -> Result<()> {
    let too_big = || {
        Error::new(
            ErrorKind::CorruptImage,
            "an encoded piece is larger than this host can buffer",
        )
        .with_offset(unit.offset)
    };
    let host_len = usize::try_from(unit.host_len).map_err(|_| too_big())?;
    let decoded_len = usize::try_from(unit.decoded_len).map_err(|_| too_big())?;
    let (mut input, mut output) = ENCODED.take();
    let result = (|| {
        // Sized by the mapper's answer, which bounds it (a cluster or two for QCOW2).
        input.clear();
        input.resize(host_len, 0);
        output.resize(decoded_len, 0);
        let got = file.read_at(unit.offset, &mut input)?;
        input[got..].fill(0);
        mapper.decode(unit.codec, &input, &mut output)?;
        let skip = usize::try_from(unit.skip).map_err(|_| too_big())?;
        copy_decoded(&output, skip, part).map(drop)
    })();
    ENCODED.set((input, output));
    result
}

/// The error an allocation is finished with when its data write never ran.
fn not_written() -> Error {
    Error::new(
        ErrorKind::Io,
        "the write was not submitted (an earlier piece of its request failed)",
    )
}

/// Writes `sum(bufs.len)` guest bytes at `offset` from `bufs` through `mapper`'s mapping (the caller checked
/// the range and write access): every piece in guest order, the first failure stopping the data I/O of the
/// rest, whose allocations are then given back.
pub fn write_mapped<M: Mapper + ?Sized>(mapper: &M, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
    write_mapped_len(mapper, offset, total_len(bufs), bufs)
}

/// [`write_mapped`] of a request whose length the caller has counted already.
pub(crate) fn write_mapped_len<M: Mapper + ?Sized>(
    mapper: &M,
    offset: u64,
    len: u64,
    bufs: &[IoBuf<'_>],
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut pieces = take(&WRITE_PIECES);
    let result = match mapper.map_write(offset, len, &mut pieces) {
        Ok(()) => write_pieces(mapper, offset, len, bufs, &pieces),
        Err(e) => Err(e),
    };
    put_back(&WRITE_PIECES, pieces);
    result
}

fn write_pieces<M: Mapper + ?Sized>(
    mapper: &M,
    offset: u64,
    len: u64,
    bufs: &[IoBuf<'_>],
    pieces: &[WriteMapping],
) -> Result<()> {
    let request = (offset, len, Operation::Write);
    let mut result = if pieces.iter().map(WriteMapping::len).sum::<u64>() == len {
        Ok(())
    } else {
        Err(mapping_mismatch(offset, len, Operation::Write))
    };
    let mut pos = 0u64;
    for &piece in pieces {
        let n = piece.len();
        if let WriteMapping::Allocated {
            file,
            offset: at,
            link,
            ..
        } = piece
        {
            // Exactly one finish per allocation, whatever happened before.
            let written = match &result {
                Ok(()) => host_file(mapper, file, request).and_then(|f| {
                    f.write_vectored_at(at, buffers_in(bufs, len, pos, n).as_slice())
                }),
                Err(_) => Err(not_written()),
            };
            let linked = mapper.finish_allocation(link, written);
            if result.is_ok() {
                result = linked;
            }
        } else if result.is_ok() {
            let part = buffers_in(bufs, len, pos, n);
            let part = part.as_slice();
            result = match piece {
                WriteMapping::Host {
                    file, offset: at, ..
                } => host_file(mapper, file, request).and_then(|f| f.write_vectored_at(at, part)),
                WriteMapping::Disk {
                    disk, offset: at, ..
                } => other_disk(mapper, disk, request).and_then(|d| d.write_at(at, part)),
                WriteMapping::Slow { .. } => mapper.write_slow(offset + pos, part),
                WriteMapping::Allocated { .. } => Ok(()),
            };
        }
        pos += n;
    }
    result
}

/// Writes `len` zero bytes at guest `offset` through `mapper`'s mapping, at most 1 MiB per request, from a
/// shared zero buffer (nothing is allocated): [`Mapper::write_zeroes`]'s default, and what formats use for the
/// parts of a write-zeroes they cannot express in metadata.
pub fn write_zeros_mapped<M: Mapper + ?Sized>(mapper: &M, offset: u64, len: u64) -> Result<()> {
    const BUFFERS: usize = (ZERO_CHUNK as usize).div_ceil(ZERO_BUFFER);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        let mut bufs = [IoBuf::from(&ZEROS.0[..]); BUFFERS];
        let mut left = n as usize;
        let mut count = 0;
        for buf in &mut bufs {
            if left == 0 {
                break;
            }
            let take = left.min(ZERO_BUFFER);
            *buf = IoBuf::from(&ZEROS.0[..take]);
            left -= take;
            count += 1;
        }
        write_mapped(mapper, offset + done, &bufs[..count])?;
        done += n;
    }
    Ok(())
}
