//! Growing a raw file with qemu's preallocation modes, for [`Raw::create`](crate::Raw::create) and
//! [`resize`](crate::resize()).

use blk_core::{HostFile, Result};

use crate::options::Preallocation;

/// The zero buffer size for [`Preallocation::Full`].
const ZERO_CHUNK: u64 = 1 << 20;

/// Grows `file` from `from` bytes (its current length) to `to` bytes: sparsely ([`Preallocation::Off`]), with
/// the new range reserved by `fallocate` ([`Preallocation::Falloc`]) or written with zeros and synced
/// ([`Preallocation::Full`]), as qemu's file driver does.
pub(crate) fn extend(file: &HostFile, from: u64, to: u64, mode: Preallocation) -> Result<()> {
    let len = to.saturating_sub(from);
    match mode {
        Preallocation::Off => file.set_len(to),
        Preallocation::Falloc => {
            file.allocate(from, len)?;
            file.set_len(to)
        }
        Preallocation::Full => {
            // Setting the length first lets the file system allocate the whole extent at once, as qemu does.
            file.set_len(to)?;
            let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
            let mut offset = from;
            while offset < to {
                let n = ZERO_CHUNK.min(to - offset);
                // `n <= zeros.len()`, which is a usize.
                file.write_all_at(offset, &zeros[..n as usize])?;
                offset += n;
            }
            file.sync_data()
        }
    }
}
