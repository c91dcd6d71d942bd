//! O_DIRECT alignment: aligned requests go straight to the kernel, unaligned ones through a bounce buffer.
//!
//! The alignment comes from `statx(STATX_DIOALIGN)` (or the block device's logical block size). It is a host
//! constraint only: the guest still sees the image's own sector size.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::buffer::{IoBuf, IoBufMut};
use crate::error::Result;
use crate::host_file::HostFile;

/// What O_DIRECT requires of buffers and offsets on one host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectIoAlignment {
    /// Required alignment of buffer addresses (and segment lengths), in bytes.
    pub memory: u32,
    /// Required alignment of file offsets and lengths, in bytes.
    pub offset: u32,
}

/// Stripes of locks serializing read-modify-write of unaligned edges, so two unaligned writes sharing a host
/// block never lose each other's bytes. Only the (rare) bounce path takes them; aligned I/O takes no lock.
const RMW_STRIPES: usize = 64;

/// O_DIRECT state shared by all handles of one file.
#[derive(Debug, Clone)]
pub(crate) struct DirectIo {
    alignment: DirectIoAlignment,
    rmw_locks: Arc<[Mutex<()>]>,
}

/// An aligned heap buffer: a `Vec` over-allocated by the alignment, used from its first aligned byte. Its
/// bytes stay at the same address when the `Bounce` itself moves (they live on the heap).
#[derive(Debug)]
pub(crate) struct Bounce {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Bounce {
    pub(crate) fn new(len: usize, align: usize) -> Bounce {
        let storage = vec![0u8; len + align];
        let start = storage.as_ptr().align_offset(align).min(align);
        Bounce {
            storage,
            start,
            len,
        }
    }

    /// Makes the buffer `len` bytes aligned to `align`, reusing its storage when it is large enough.
    pub(crate) fn reuse(&mut self, len: usize, align: usize) {
        let start = self.storage.as_ptr().align_offset(align);
        if start
            .checked_add(len)
            .is_some_and(|end| end <= self.storage.len())
        {
            self.start = start;
            self.len = len;
        } else {
            *self = Bounce::new(len, align);
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl DirectIo {
    pub(crate) fn new(alignment: DirectIoAlignment) -> DirectIo {
        let alignment = DirectIoAlignment {
            memory: alignment.memory.max(1).next_power_of_two(),
            offset: alignment.offset.max(1).next_power_of_two(),
        };
        DirectIo {
            alignment,
            rmw_locks: (0..RMW_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub(crate) fn alignment(&self) -> DirectIoAlignment {
        self.alignment
    }

    fn aligned(&self, offset: u64, segments: impl Iterator<Item = (usize, usize)>) -> bool {
        let mem = self.alignment.memory as usize;
        let off = u64::from(self.alignment.offset);
        if offset % off != 0 {
            return false;
        }
        let mut total = 0u64;
        for (addr, len) in segments {
            if addr % mem != 0 || len % mem != 0 {
                return false;
            }
            total += len as u64;
        }
        total % off == 0
    }

    pub(crate) fn is_aligned_mut(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> bool {
        self.aligned(
            offset,
            bufs.iter().map(|b| (b.as_mut_ptr() as usize, b.len())),
        )
    }

    pub(crate) fn is_aligned(&self, offset: u64, bufs: &[IoBuf<'_>]) -> bool {
        self.aligned(offset, bufs.iter().map(|b| (b.as_ptr() as usize, b.len())))
    }

    /// The aligned host range `[start, end)` covering `len` bytes at `offset`.
    fn widen(&self, offset: u64, len: u64) -> (u64, u64) {
        let a = u64::from(self.alignment.offset);
        let start = offset / a * a;
        let end = (offset + len).div_ceil(a) * a;
        (start, end)
    }

    pub(crate) fn bounce_read(
        &self,
        file: &HostFile,
        offset: u64,
        bufs: &[IoBufMut<'_>],
    ) -> Result<usize> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let (start, end) = self.widen(offset, len);
        let mut bounce = Bounce::new((end - start) as usize, self.alignment.memory as usize);
        let got = file.read_vectored_raw(start, &[IoBufMut::from(bounce.bytes_mut())])?;
        let head = (offset - start) as usize;
        let available = got.saturating_sub(head);
        let data = &bounce.bytes()[head..head + available.min(len as usize)];
        let mut pos = 0;
        for buf in bufs {
            let n = buf.copy_from(&data[pos.min(data.len())..]);
            pos += n;
        }
        Ok(data.len())
    }

    fn stripe(&self, block: u64) -> usize {
        (block % RMW_STRIPES as u64) as usize
    }

    pub(crate) fn bounce_write(
        &self,
        file: &HostFile,
        offset: u64,
        bufs: &[IoBuf<'_>],
    ) -> Result<()> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if len == 0 {
            return Ok(());
        }
        let a = u64::from(self.alignment.offset);
        let (start, end) = self.widen(offset, len);
        let mut bounce = Bounce::new((end - start) as usize, self.alignment.memory as usize);
        let head_partial = offset != start;
        let tail_partial = offset + len != end;
        // Lock the stripes of the edge blocks in ascending order (at most two, deduplicated).
        let mut stripes = [self.stripe(start / a), self.stripe((end - a) / a)];
        stripes.sort_unstable();
        let _guards: Vec<MutexGuard<'_, ()>> = if head_partial || tail_partial {
            let mut g = vec![self.rmw_locks[stripes[0]]
                .lock()
                .unwrap_or_else(|p| p.into_inner())];
            if stripes[1] != stripes[0] {
                g.push(
                    self.rmw_locks[stripes[1]]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
            g
        } else {
            Vec::new()
        };
        let file_len = if file.is_block_device() {
            u64::MAX
        } else {
            file.len()?
        };
        let total = (end - start) as usize;
        if head_partial {
            let block = &mut bounce.bytes_mut()[..a as usize];
            file.read_vectored_raw(start, &[IoBufMut::from(block)])?;
        }
        if tail_partial && (end - a > start || !head_partial) {
            let block = &mut bounce.bytes_mut()[total - a as usize..];
            file.read_vectored_raw(end - a, &[IoBufMut::from(block)])?;
        }
        let mut pos = (offset - start) as usize;
        for buf in bufs {
            pos += buf.copy_to(&mut bounce.bytes_mut()[pos..]);
        }
        file.write_vectored_raw(start, &[IoBuf::from(bounce.bytes())])?;
        // The widened write may have grown a file whose size is not a multiple of the alignment.
        let written_end = offset + len;
        if end > file_len && written_end < end {
            file.set_len(file_len.max(written_end))?;
        }
        Ok(())
    }
}
