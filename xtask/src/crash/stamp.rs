//! Stamped sectors: every 512-byte sector a writer writes says which write it came from and where it belongs,
//! so reading an image back tells, sector by sector, which write (if any) survived.
//!
//! A stamp is `CRSH`, the write's id (u32 LE), the sector's guest byte offset (u64 LE), then 496 bytes derived
//! from both; anything else is zeros, the backing file's sector, or garbage.

/// Bytes in a sector.
pub const SECTOR: u64 = 512;
const MAGIC: &[u8; 4] = b"CRSH";

/// What a sector read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// All zeros.
    Zero,
    /// The backing file's sector (never all zeros: those read as [`Value::Zero`]).
    Backing,
    /// The sector of the write with this id.
    Stamp(u32),
    /// A stamp of this write id made for another offset: data in the wrong place.
    Misplaced(u32),
    /// Anything else.
    Garbage,
}

fn filler(id: u32, offset: u64, word: usize) -> u64 {
    let mut z = (u64::from(id) << 40 ^ offset)
        .wrapping_add((word as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the stamped sectors of write `id` covering `len` bytes at guest `offset`.
pub fn fill(buf: &mut Vec<u8>, id: u32, offset: u64, len: u64) {
    buf.clear();
    buf.resize(len as usize, 0);
    for (i, sector) in buf.chunks_mut(SECTOR as usize).enumerate() {
        let at = offset + i as u64 * SECTOR;
        sector[..4].copy_from_slice(MAGIC);
        sector[4..8].copy_from_slice(&id.to_le_bytes());
        sector[8..16].copy_from_slice(&at.to_le_bytes());
        for (w, chunk) in sector[16..].chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&filler(id, at, w).to_le_bytes());
        }
    }
}

/// What `sector`, read at guest offset `at`, holds; `backing` is the backing file's sector there, if any.
pub fn classify(sector: &[u8], at: u64, backing: Option<&[u8]>) -> Value {
    if sector.iter().all(|&b| b == 0) {
        return Value::Zero;
    }
    if sector.len() == SECTOR as usize && &sector[..4] == MAGIC {
        let id = u32::from_le_bytes([sector[4], sector[5], sector[6], sector[7]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&sector[8..16]);
        let offset = u64::from_le_bytes(offset);
        let intact = sector[16..]
            .chunks(8)
            .enumerate()
            .all(|(w, chunk)| chunk == filler(id, offset, w).to_le_bytes());
        if intact {
            return if offset == at {
                Value::Stamp(id)
            } else {
                Value::Misplaced(id)
            };
        }
    }
    if backing == Some(sector) {
        return Value::Backing;
    }
    Value::Garbage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back() {
        let mut buf = Vec::new();
        fill(&mut buf, 7, 4096, 1024);
        assert_eq!(classify(&buf[..512], 4096, None), Value::Stamp(7));
        assert_eq!(classify(&buf[512..], 4608, None), Value::Stamp(7));
        assert_eq!(classify(&buf[512..], 4096, None), Value::Misplaced(7));
        assert_eq!(classify(&[0; 512], 0, None), Value::Zero);
        let mut torn = buf[..512].to_vec();
        torn[300] ^= 1;
        assert_eq!(classify(&torn, 4096, None), Value::Garbage);
        assert_eq!(
            classify(&[0x11; 512], 0, Some(&[0x11; 512])),
            Value::Backing
        );
    }
}
