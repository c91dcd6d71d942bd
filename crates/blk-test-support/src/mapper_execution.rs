//! Executing a [`Mapper`]'s answers directly, as a queue engine does, to test a format's mapping without a
//! queue in between: host pieces with `pread`/`pwrite` on the mapper's host files, zero pieces in memory,
//! encoded pieces through [`Mapper::decode`], other disks' pieces through their `DiskFile`,
//! [`Mapper::finish_allocation`] after each allocated piece, slow pieces through [`Mapper::write_slow`].

use blk_core::{Error, ErrorKind, IoBuf, IoBufMut, Mapper, ReadMapping, Result, WriteMapping};

/// How a mapper answered: `Fast` when every piece was the image's own (a host range, zeros, an encoded unit;
/// for writes also another disk's range or an allocation), `Slow` when a read piece needed another disk (a
/// parent, a backing file) or a write piece the format's own write path ([`Mapper::write_slow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// Every piece was the image's own.
    Fast,
    /// Some read piece went to another disk, or some write piece to [`Mapper::write_slow`].
    Slow,
}

/// Reads `buf.len()` bytes at `offset` into `buf` by executing the mapper's answer directly; a failure of the
/// mapping or of a piece's I/O is returned.
pub fn try_read_via_mapper(mapper: &dyn Mapper, offset: u64, buf: &mut [u8]) -> Result<Mapped> {
    let mut pieces = Vec::new();
    mapper.map_read(offset, buf.len() as u64, &mut pieces)?;
    let files = mapper.host_files();
    let mut mapped = Mapped::Fast;
    let mut at = 0usize;
    for piece in pieces {
        let len = piece.len() as usize;
        let part = &mut buf[at..at + len];
        match piece {
            ReadMapping::Host { file, offset, .. } => {
                // What lies past the end of the host file reads as zeros.
                let got = files[file].read_vectored_at(offset, &[IoBufMut::from(&mut *part)])?;
                part[got..].fill(0);
            }
            ReadMapping::Zero { .. } => part.fill(0),
            ReadMapping::Encoded {
                file,
                offset,
                host_len,
                decoded_len,
                skip,
                codec,
                ..
            } => {
                let mut encoded = vec![0u8; host_len as usize];
                let got =
                    files[file].read_vectored_at(offset, &[IoBufMut::from(&mut encoded[..])])?;
                encoded[got..].fill(0);
                let mut decoded = vec![0u8; decoded_len as usize];
                mapper.decode(codec, &encoded, &mut decoded)?;
                let skip = skip as usize;
                part.copy_from_slice(&decoded[skip..skip + len]);
            }
            ReadMapping::Disk { disk, offset, .. } => {
                mapped = Mapped::Slow;
                let other = mapper.disk(disk).expect("a disk the mapper names");
                other.read_exact_at(offset, part)?;
            }
        }
        at += len;
    }
    assert_eq!(at, buf.len(), "the pieces cover the request");
    Ok(mapped)
}

/// Writes `data` at `offset` by executing the mapper's answer directly. After a failed piece the later pieces
/// are not written, but every allocation is still finished (with an error when its data was not written), as
/// the engines do; the first failure is returned.
pub fn try_write_via_mapper(mapper: &dyn Mapper, offset: u64, data: &[u8]) -> Result<Mapped> {
    let mut pieces = Vec::new();
    mapper.map_write(offset, data.len() as u64, &mut pieces)?;
    let files = mapper.host_files();
    let mut mapped = Mapped::Fast;
    let mut at = 0usize;
    let mut result = Ok(());
    for piece in pieces {
        let len = piece.len() as usize;
        let part = &data[at..at + len];
        match piece {
            WriteMapping::Host { file, offset, .. } => {
                if result.is_ok() {
                    result = files[file].write_all_at(offset, part);
                }
            }
            WriteMapping::Allocated {
                file, offset, link, ..
            } => {
                let written = match &result {
                    Ok(()) => files[file].write_all_at(offset, part),
                    Err(_) => Err(Error::new(ErrorKind::Io, "not written")),
                };
                let linked = mapper.finish_allocation(link, written);
                if result.is_ok() {
                    result = linked;
                }
            }
            WriteMapping::Disk { disk, offset, .. } => {
                if result.is_ok() {
                    let other = mapper.disk(disk).expect("a disk the mapper names");
                    result = other.write_all_at(offset, part);
                }
            }
            WriteMapping::Slow { .. } => {
                mapped = Mapped::Slow;
                if result.is_ok() {
                    result = mapper.write_slow(offset + at as u64, &[IoBuf::from(part)]);
                }
            }
        }
        at += len;
    }
    assert_eq!(at, data.len(), "the pieces cover the request");
    result.map(|()| mapped)
}

/// Reads `len` bytes at `offset` by executing the mapper's answer directly ([`try_read_via_mapper`]),
/// panicking on a failure.
pub fn read_via_mapper(mapper: &dyn Mapper, offset: u64, len: u64) -> (Vec<u8>, Mapped) {
    let mut out = vec![0u8; len as usize];
    let mapped = try_read_via_mapper(mapper, offset, &mut out).unwrap();
    (out, mapped)
}

/// Writes `data` at `offset` by executing the mapper's answer directly ([`try_write_via_mapper`]), panicking
/// on a failure.
pub fn write_via_mapper(mapper: &dyn Mapper, offset: u64, data: &[u8]) -> Mapped {
    try_write_via_mapper(mapper, offset, data).unwrap()
}
