//! Slicing a request's buffer list by byte range, without allocating: what [`MappedQueue`](crate::MappedQueue)
//! does to turn one guest request into the host operations of its pieces, to zero-fill holes and short reads,
//! and to check a request against O_DIRECT's alignment.

use crate::buffer::{IoBuf, IoBufMut};
use crate::direct_io::DirectIoAlignment;
use crate::error::{Error, ErrorKind, Result};

/// Calls `piece(index, offset_in_buffer, length)` for each buffer (given by its length) overlapping bytes
/// `start..start + len` of their concatenation.
fn for_each_overlap(
    lens: impl Iterator<Item = usize>,
    start: u64,
    len: u64,
    mut piece: impl FnMut(usize, usize, usize),
) {
    if len == 0 {
        return;
    }
    let end = start.saturating_add(len);
    let mut pos = 0u64;
    for (i, b_len) in lens.enumerate() {
        let (b_start, b_end) = (pos, pos + b_len as u64);
        pos = b_end;
        if b_start >= end {
            break;
        }
        if b_end <= start {
            continue;
        }
        let from = start.max(b_start) - b_start;
        let to = end.min(b_end) - b_start;
        // from <= to <= b_len, which is a usize.
        piece(i, from as usize, (to - from) as usize);
    }
}

/// A guest buffer, as [`buffers_in`] slices it.
pub(crate) trait Segment: Copy {
    /// Its length in bytes.
    fn length(&self) -> usize;
    /// Its `len` bytes at `from`, when they are inside it.
    fn part(&self, from: usize, len: usize) -> Option<Self>;
}

impl Segment for IoBufMut<'_> {
    fn length(&self) -> usize {
        self.len()
    }

    fn part(&self, from: usize, len: usize) -> Option<Self> {
        self.subslice(from, len)
    }
}

impl Segment for IoBuf<'_> {
    fn length(&self) -> usize {
        self.len()
    }

    fn part(&self, from: usize, len: usize) -> Option<Self> {
        self.subslice(from, len)
    }
}

/// Bytes `start..start + len` of a request's buffer list: the whole list borrowed, one buffer sliced, or (a
/// range across several buffers) their slices collected.
pub(crate) enum Buffers<'s, B> {
    All(&'s [B]),
    One([B; 1]),
    Many(Vec<B>),
}

impl<B> Buffers<'_, B> {
    /// The buffers, in order.
    pub(crate) fn as_slice(&self) -> &[B] {
        match self {
            Buffers::All(all) => all,
            Buffers::One(one) => one,
            Buffers::Many(many) => many,
        }
    }
}

/// The buffers covering bytes `start..start + len` of the concatenation of `bufs` (`total` bytes in all),
/// allocating only when the range spans several buffers and is not all of them.
pub(crate) fn buffers_in<B: Segment>(
    bufs: &[B],
    total: u64,
    start: u64,
    len: u64,
) -> Buffers<'_, B> {
    if start == 0 && len == total {
        return Buffers::All(bufs);
    }
    let mut pos = 0u64;
    for b in bufs {
        let end = pos + b.length() as u64;
        if start >= pos && start.saturating_add(len) <= end {
            // Inside one buffer; `start - pos <= b.length()`, which is a usize, and so is `len`.
            if let Some(part) = b.part((start - pos) as usize, len as usize) {
                return Buffers::One([part]);
            }
        }
        if end > start {
            break;
        }
        pos = end;
    }
    let mut many = Vec::new();
    for_each_overlap(bufs.iter().map(|b| b.length()), start, len, |i, from, n| {
        if let Some(part) = bufs.get(i).and_then(|b| b.part(from, n)) {
            many.push(part);
        }
    });
    Buffers::Many(many)
}

/// Appends to `out` the buffers covering bytes `start..start + len` of the concatenation of `bufs`.
pub(crate) fn push_range_mut(
    bufs: &[IoBufMut<'static>],
    start: u64,
    len: u64,
    out: &mut Vec<IoBufMut<'static>>,
) {
    for_each_overlap(bufs.iter().map(IoBufMut::len), start, len, |i, from, n| {
        if let Some(piece) = bufs.get(i).and_then(|b| b.subslice(from, n)) {
            out.push(piece);
        }
    });
}

/// Appends to `out` the buffers covering bytes `start..start + len` of the concatenation of `bufs`.
pub(crate) fn push_range(
    bufs: &[IoBuf<'static>],
    start: u64,
    len: u64,
    out: &mut Vec<IoBuf<'static>>,
) {
    for_each_overlap(bufs.iter().map(IoBuf::len), start, len, |i, from, n| {
        if let Some(piece) = bufs.get(i).and_then(|b| b.subslice(from, n)) {
            out.push(piece);
        }
    });
}

/// Fills bytes `start..start + len` of the concatenation of `bufs` with zeros.
pub(crate) fn zero_range(bufs: &[IoBufMut<'_>], start: u64, len: u64) {
    for_each_overlap(bufs.iter().map(IoBufMut::len), start, len, |i, from, n| {
        if let Some(piece) = bufs.get(i).and_then(|b| b.subslice(from, n)) {
            piece.fill_zero_from(0);
        }
    });
}

/// Whether a host range can be handed to an O_DIRECT file as is, when it starts `position` bytes into a request
/// whose buffers are aligned (so its buffers are aligned too when `position` and `len` are).
pub(crate) fn host_range_aligned(
    alignment: DirectIoAlignment,
    position: u64,
    offset: u64,
    len: u64,
) -> bool {
    let memory = u64::from(alignment.memory.max(1));
    let block = u64::from(alignment.offset.max(1));
    position % memory == 0 && len % memory == 0 && offset % block == 0 && len % block == 0
}

/// Checks a guest request against O_DIRECT's alignment: its offset and length must be multiples of the
/// offset alignment, every buffer's address and length multiples of the memory alignment.
pub(crate) fn check_direct_alignment(
    alignment: DirectIoAlignment,
    offset: u64,
    len: u64,
    buffers: impl Iterator<Item = (usize, usize)>,
) -> Result<()> {
    let memory = alignment.memory.max(1);
    let block = alignment.offset.max(1);
    let refuse = |what: String, to: u32| {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "O_DIRECT needs {memory}-byte aligned buffers and {block}-byte aligned offsets and lengths: \
                 {what} is not aligned to {to} bytes"
            ),
        )
        .with_offset(offset))
    };
    if offset % u64::from(block) != 0 {
        return refuse(format!("the offset {offset:#x}"), block);
    }
    if len % u64::from(block) != 0 {
        return refuse(format!("the length {len}"), block);
    }
    for (address, buf_len) in buffers {
        if address % memory as usize != 0 {
            return refuse(format!("buffer at {address:#x}"), memory);
        }
        if buf_len % memory as usize != 0 {
            return refuse(
                format!("the length {buf_len} of the buffer at {address:#x}"),
                memory,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_zeroes_ranges() {
        let a: &'static mut [u8] = Box::leak(vec![1u8; 3].into_boxed_slice());
        let b: &'static mut [u8] = Box::leak(vec![1u8; 5].into_boxed_slice());
        let bufs = [IoBufMut::from(a), IoBufMut::from(b)];
        let mut out = Vec::new();
        push_range_mut(&bufs, 2, 3, &mut out);
        assert_eq!(out.iter().map(|b| b.len()).collect::<Vec<_>>(), [1, 2]);
        out.clear();
        push_range_mut(&bufs, 8, 3, &mut out);
        push_range_mut(&bufs, 0, 0, &mut out);
        assert!(out.is_empty());
        zero_range(&bufs, 2, 4);
        let mut back = [0u8; 8];
        let mut pos = 0;
        for buf in &bufs {
            pos += buf.as_io_buf().copy_to(&mut back[pos..]);
        }
        assert_eq!(back, [1, 1, 0, 0, 0, 0, 1, 1]);
        let ro = [bufs[1].as_io_buf()];
        let mut out = Vec::new();
        push_range(&ro, 1, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 4);
    }

    #[test]
    fn alignment_checks_name_the_culprit() {
        let a = DirectIoAlignment {
            memory: 512,
            offset: 4096,
        };
        assert!(
            check_direct_alignment(a, 4096, 8192, [(512, 4096), (8192, 4096)].into_iter()).is_ok()
        );
        let e = check_direct_alignment(a, 4096, 4096, [(0x1001, 4096)].into_iter()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains("buffer at 0x1001 is not aligned to 512 bytes"),
            "{e}"
        );
        assert!(check_direct_alignment(a, 512, 4096, std::iter::empty()).is_err());
        assert!(check_direct_alignment(a, 0, 512, std::iter::empty()).is_err());
        assert!(host_range_aligned(a, 4096, 8192, 4096));
        assert!(!host_range_aligned(a, 4096, 8192, 512));
    }
}
