//! Registered (fixed) buffers: memory regions registered with the ring once (`IORING_REGISTER_BUFFERS`), so
//! single-buffer operations inside them go out as `READ_FIXED`/`WRITE_FIXED` and the kernel skips pinning the
//! pages per operation. A VMM registers its guest memory; any other buffer still works, as a plain operation.

use blk_core::{Error, ErrorKind, IoBufMut, Result};

/// The most regions one ring takes (the kernel's `IORING_MAX_REG_BUFFERS`).
pub const MAX_FIXED_BUFFERS: usize = 1 << 14;

/// The largest region the kernel registers (1 GiB); register larger memory as several regions.
pub const MAX_FIXED_BUFFER_LEN: usize = 1 << 30;

/// One registered region: `start..end` of the address space, registered at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    start: usize,
    end: usize,
    index: u16,
}

/// The regions registered with a ring, sorted by start address.
#[derive(Debug, Default)]
pub(crate) struct FixedBuffers {
    regions: Vec<Region>,
}

impl FixedBuffers {
    /// Checks `bufs` against the kernel's limits and records them (the caller registers them with the ring).
    pub(crate) fn new(bufs: &[IoBufMut<'static>]) -> Result<FixedBuffers> {
        if bufs.len() > MAX_FIXED_BUFFERS {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} buffers to register, io_uring takes at most {MAX_FIXED_BUFFERS}",
                    bufs.len()
                ),
            ));
        }
        let mut regions = Vec::with_capacity(bufs.len());
        for (i, buf) in bufs.iter().enumerate() {
            if buf.is_empty() || buf.len() > MAX_FIXED_BUFFER_LEN {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "buffer {i} to register has {} bytes (must be 1 byte to 1 GiB)",
                        buf.len()
                    ),
                ));
            }
            let start = buf.as_mut_ptr() as usize;
            let end = start.checked_add(buf.len()).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "buffer wraps around the address space",
                )
            })?;
            // At most MAX_FIXED_BUFFERS (2^14) entries, checked above: the index fits a u16.
            let index = u16::try_from(i)
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "too many buffers to register"))?;
            regions.push(Region { start, end, index });
        }
        regions.sort_by_key(|r| r.start);
        Ok(FixedBuffers { regions })
    }

    /// The index of a registered region holding all of `ptr..ptr + len`, if one does (the one starting last
    /// at or before `ptr`; overlapping registrations may miss, which only costs the fixed path).
    pub(crate) fn find(&self, ptr: usize, len: usize) -> Option<u16> {
        if self.regions.is_empty() {
            return None;
        }
        let end = ptr.checked_add(len)?;
        let after = self.regions.partition_point(|r| r.start <= ptr);
        let region = self.regions.get(after.checked_sub(1)?)?;
        (end <= region.end).then_some(region.index)
    }

    /// Whether any region is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_region_holding_a_buffer() {
        let mut a = [0u8; 100];
        let mut b = [0u8; 50];
        let bufs: Vec<IoBufMut<'static>> = [&mut a[..], &mut b[..]]
            .into_iter()
            .map(|s| {
                // SAFETY: the arrays outlive the table, which is only used to look addresses up.
                unsafe { IoBufMut::from_raw_parts(s.as_mut_ptr(), s.len()) }
            })
            .collect();
        let fixed = FixedBuffers::new(&bufs).unwrap();
        let a0 = a.as_ptr() as usize;
        let b0 = b.as_ptr() as usize;
        assert_eq!(fixed.find(a0, 100), Some(0));
        assert_eq!(fixed.find(a0 + 10, 90), Some(0));
        assert_eq!(fixed.find(a0 + 10, 91), None);
        assert_eq!(fixed.find(b0 + 49, 1), Some(1));
        assert_eq!(fixed.find(b0 + 49, 2), None);
        assert_eq!(fixed.find(usize::MAX, 2), None);
        assert!(FixedBuffers::new(&[]).unwrap().is_empty());
    }
}
