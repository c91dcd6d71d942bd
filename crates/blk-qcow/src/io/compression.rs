//! Compressed clusters: raw deflate (no zlib header, compression type 0) and zstd (type 1), as QEMU stores
//! them; decoded for the mapper's encoded pieces, and written by `write_compressed` (qemu-img `convert -c`):
//! packed into host clusters as QEMU packs them, one cluster at a time; data that does not shrink is written
//! through the mapping instead. The file ends on a 512-byte boundary afterwards, as qemu-img leaves it.

use std::cell::RefCell;

use blk_core::{check_range, write_mapped, Error, ErrorKind, IoBuf, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::image::Qcow2;
use crate::metadata::tables::L2Entry;

fn corrupt(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::CorruptImage, message)
}

thread_local! {
    /// Each thread's inflate state, reset per cluster (creating one per cluster costs more than inflating it).
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    /// Each thread's zstd decompression context, made on first use and reset per cluster.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_error(e: std::io::Error) -> Error {
    corrupt(format!("bad zstd data in a compressed cluster: {e}"))
}

/// Decompresses one cluster from `input` into `out` (exactly `out.len()` bytes must be produced; `input` may
/// be longer than the compressed stream).
pub(crate) fn decompress(kind: u8, input: &[u8], out: &mut [u8]) -> Result<()> {
    match kind {
        0 => INFLATE.with(|cell| {
            let mut d = cell.borrow_mut();
            d.reset(false);
            d.decompress(input, out, FlushDecompress::Finish)
                .map_err(|e| corrupt(format!("bad deflate data in a compressed cluster: {e}")))?;
            // QEMU accepts a stream that filled the cluster, with or without its end marker.
            if d.total_out() != out.len() as u64 {
                return Err(corrupt(
                    "a compressed cluster does not inflate to one cluster",
                ));
            }
            Ok(())
        }),
        1 => {
            // The one frame at the start of `input`; the rest, up to the sector-rounded size QEMU records, is
            // not part of it. Decoded in one call into `out` (no streaming copies), which must be exactly
            // filled: a frame decoding to more or less than a cluster is corrupt, as QEMU finds it.
            let frame_len = zstd::zstd_safe::find_frame_compressed_size(input).map_err(|code| {
                corrupt(format!(
                    "bad zstd data in a compressed cluster: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            })?;
            let frame = input
                .get(..frame_len)
                .ok_or_else(|| corrupt("a zstd frame reaches past its compressed cluster"))?;
            ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                let decoder = match slot.as_mut() {
                    Some(d) => d,
                    None => slot.insert(zstd::bulk::Decompressor::new().map_err(zstd_error)?),
                };
                let n = decoder
                    .decompress_to_buffer(frame, &mut *out)
                    .map_err(zstd_error)?;
                if n != out.len() {
                    return Err(corrupt(
                        "a compressed cluster does not decompress to one cluster",
                    ));
                }
                Ok(())
            })
        }
        other => Err(Error::new(
            ErrorKind::UnsupportedFeature,
            format!("unknown compression type {other}"),
        )),
    }
}

/// Compresses one cluster; `None` when the result would not be smaller than the cluster (store it plainly).
pub(crate) fn compress(kind: u8, input: &[u8]) -> Result<Option<Vec<u8>>> {
    let limit = input.len();
    let out = match kind {
        0 => {
            let mut c = Compress::new(Compression::default(), false);
            let mut out = vec![0u8; limit];
            let status = c
                .compress(input, &mut out, FlushCompress::Finish)
                .map_err(|e| Error::new(ErrorKind::Io, format!("deflate failed: {e}")))?;
            if status != Status::StreamEnd {
                return Ok(None);
            }
            out.truncate(c.total_out() as usize);
            out
        }
        1 => zstd::bulk::compress(input, 0)
            .map_err(|e| Error::new(ErrorKind::Io, format!("zstd failed: {e}")))?,
        other => {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!("unknown compression type {other}"),
            ))
        }
    };
    Ok((out.len() < limit).then_some(out))
}

impl Qcow2 {
    /// Stores one cluster of guest data compressed (`offset` cluster-aligned, `buf` one cluster or the
    /// disk's last, shorter one), replacing what the cluster held (freed once the new entry is on disk).
    pub(crate) fn write_compressed_impl(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        if self.shared.encryption.is_some() {
            // QEMU would store the cluster compressed and unencrypted: blk refuses to leak it.
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                "Compression is not supported with encrypted images",
            ));
        }
        if self.shared.data_file.is_some() {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                "Compression is not supported with external data files",
            ));
        }
        check_range(offset, buf.len() as u64, self.shared.geometry.size)?;
        if offset % cs != 0
            || buf.len() as u64 > cs
            || (buf.len() as u64) < cs && offset + buf.len() as u64 != self.shared.geometry.size
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a compressed write must cover exactly one cluster",
            ));
        }
        let mut cluster = vec![0u8; cs as usize];
        cluster[..buf.len()].copy_from_slice(buf);
        let Some(compressed) =
            crate::io::compression::compress(self.shared.geometry.compression_type, &cluster)?
        else {
            return write_mapped(self, offset, &[IoBuf::from(buf)]);
        };
        let gc = offset / cs;
        let file = &self.shared.file;
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let old = self.lookup_for_update(&mut meta, gc)?;
        let len = compressed.len() as u64;
        let host = meta.allocate_bytes(file, len)?;
        meta.guard_data_write(file, host, len)?;
        meta.in_flight.insert(gc);
        drop(meta);
        let written = self.file().write_all_at(host, &compressed).map(|()| {
            // As qemu-img, the file ends on a 512-byte boundary (sector-based readers of the last compressed
            // cluster). Allocating never shrinks the file nor changes bytes already written there (another
            // compressed cluster may be packed right after), and a failure only leaves the file unpadded.
            let end = host + len;
            if end % 512 != 0 {
                let _ = self.file().allocate(end, 512 - end % 512);
            }
        });
        let entry = L2Entry::compressed(host, len, &self.shared.geometry);
        // The compressed bytes lie in one host cluster (see `allocate_bytes`): the undo of a fresh cluster.
        self.link(gc, old, host, true, written, entry)
    }
}
