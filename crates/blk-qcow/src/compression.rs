//! Cluster compression: raw deflate (no zlib header, compression type 0) and zstd (type 1), as QEMU stores
//! them.

use std::io::Read;

use blk_core::{Error, ErrorKind, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

fn corrupt(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::CorruptImage, message)
}

/// Decompresses one cluster from `input` into `out` (exactly `out.len()` bytes must be produced; `input` may
/// be longer than the compressed stream).
pub(crate) fn decompress(kind: u8, input: &[u8], out: &mut [u8]) -> Result<()> {
    match kind {
        0 => {
            let mut d = Decompress::new(false);
            d.decompress(input, out, FlushDecompress::Finish)
                .map_err(|e| corrupt(format!("bad deflate data in a compressed cluster: {e}")))?;
            // QEMU accepts a stream that filled the cluster, with or without its end marker.
            if d.total_out() != out.len() as u64 {
                return Err(corrupt(
                    "a compressed cluster does not inflate to one cluster",
                ));
            }
            Ok(())
        }
        1 => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(format!("bad zstd data in a compressed cluster: {e}")))?
                .single_frame();
            let mut filled = 0;
            while filled < out.len() {
                let n = decoder
                    .read(&mut out[filled..])
                    .map_err(|e| corrupt(format!("bad zstd data in a compressed cluster: {e}")))?;
                if n == 0 {
                    return Err(corrupt(
                        "a compressed cluster does not decompress to one cluster",
                    ));
                }
                filled += n;
            }
            Ok(())
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
