//! Executing a [`Mapper`]'s answers directly, as a queue engine does, to test a format's mapping without a
//! queue in between.

use blk_core::{IoBuf, Mapper, ReadMapping, WriteMapping};

/// How a mapper answered: `Fast` when every piece was a host range or zeros, `Slow` when some piece needed
/// another disk (a parent, a backing file) or the format's own write path ([`Mapper::write_slow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// Every piece was a host range or zeros.
    Fast,
    /// Some piece went to another disk or to [`Mapper::write_slow`].
    Slow,
}

/// Reads `len` bytes at `offset` by executing the mapper's answer directly (pieces of another disk through
/// that disk). For formats without encoded data.
pub fn read_via_mapper(mapper: &dyn Mapper, offset: u64, len: u64) -> (Vec<u8>, Mapped) {
    let mut out = vec![0u8; len as usize];
    let mut pieces = Vec::new();
    mapper.map_read(offset, len, &mut pieces).unwrap();
    let mut mapped = Mapped::Fast;
    let mut at = 0usize;
    for piece in pieces {
        let dst = &mut out[at..at + piece.len() as usize];
        match piece {
            ReadMapping::Host { file, offset, .. } => {
                mapper.host_files()[file]
                    .read_exact_at(offset, dst)
                    .unwrap();
            }
            ReadMapping::Zero { .. } => {}
            ReadMapping::Disk { disk, offset, .. } => {
                mapped = Mapped::Slow;
                mapper
                    .disk(disk)
                    .unwrap()
                    .read_exact_at(offset, dst)
                    .unwrap();
            }
            ReadMapping::Encoded { .. } => panic!("this format has no encoded data"),
        }
        at += dst.len();
    }
    assert_eq!(at as u64, len);
    (out, mapped)
}

/// Writes `data` at `offset` by executing the mapper's answer directly (slow pieces through
/// [`Mapper::write_slow`]). For mappers that neither allocate nor write other disks.
pub fn write_via_mapper(mapper: &dyn Mapper, offset: u64, data: &[u8]) -> Mapped {
    let mut pieces = Vec::new();
    mapper
        .map_write(offset, data.len() as u64, &mut pieces)
        .unwrap();
    let mut mapped = Mapped::Fast;
    let mut at = 0usize;
    for piece in pieces {
        let src = &data[at..at + piece.len() as usize];
        match piece {
            WriteMapping::Host { file, offset, .. } => {
                mapper.host_files()[file].write_all_at(offset, src).unwrap();
            }
            WriteMapping::Slow { .. } => {
                mapped = Mapped::Slow;
                mapper
                    .write_slow(offset + at as u64, &[IoBuf::from(src)])
                    .unwrap();
            }
            _ => panic!("these mappers neither allocate nor write other disks: {piece:?}"),
        }
        at += src.len();
    }
    assert_eq!(at, data.len());
    mapped
}
