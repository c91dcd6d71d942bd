//! Borrowed I/O buffers: host byte slices or guest memory, laid out as `struct iovec`.
//!
//! [`IoBufMut`] is memory a read fills, [`IoBuf`] memory a write takes its data from. Both are built safely from
//! byte slices or from vm-memory [`VolatileSlice`]s, so guest memory is read and written in place. They have the
//! layout of `libc::iovec`, so a `&[IoBufMut]` is handed to `preadv(2)` or io_uring without being copied.
//!
//! Guest memory may change under us at any time (the guest owns it), so the memory behind these buffers is only
//! ever touched through raw-pointer copies, never through `&[u8]` references, as vm-memory's volatile model wants.

use std::marker::PhantomData;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Memory that a read fills: a `&mut [u8]` or a guest-memory [`VolatileSlice`].
///
/// Clone and Copy as `VolatileSlice` is: writes go through raw pointers with volatile semantics.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoBufMut<'a> {
    ptr: *mut u8,
    len: usize,
    _memory: PhantomData<&'a mut [u8]>,
}

/// Memory that a write takes its data from: a `&[u8]` or a guest-memory [`VolatileSlice`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoBuf<'a> {
    ptr: *const u8,
    len: usize,
    _memory: PhantomData<&'a [u8]>,
}

// SAFETY: an IoBufMut is a pointer and a length into memory borrowed for 'a, like `&'a mut [u8]` or a
// `VolatileSlice`; every access through it is a raw copy, so sending it to another thread is as safe as sending
// the borrow it was made from.
unsafe impl Send for IoBufMut<'_> {}
// SAFETY: shared use only copies into the memory through raw pointers (volatile semantics, see the module docs).
unsafe impl Sync for IoBufMut<'_> {}
// SAFETY: as for IoBufMut; an IoBuf is only ever read through.
unsafe impl Send for IoBuf<'_> {}
// SAFETY: as for IoBufMut; an IoBuf is only ever read through.
unsafe impl Sync for IoBuf<'_> {}

impl<'a> IoBufMut<'a> {
    /// A buffer over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for writes for `'a`, and every other user of that memory must access it
    /// with volatile or raw-pointer semantics while the buffer lives (for async I/O: until its request
    /// completes).
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> IoBufMut<'a> {
        IoBufMut {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address, for handing to the kernel.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The `len` bytes at `offset`, or `None` when they are not all inside the buffer.
    pub fn subslice(&self, offset: usize, len: usize) -> Option<IoBufMut<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset..end lies inside this buffer, which is valid for 'a.
        Some(unsafe { IoBufMut::from_raw_parts(self.ptr.add(offset), len) })
    }

    /// Copies `src` to the start of the buffer; returns how many bytes were copied (`min` of both lengths).
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.len);
        // SAFETY: the buffer is valid for writes of `len` bytes and `n <= len`; `src` is a distinct borrow
        // (a `&[u8]` cannot alias memory written through this buffer without volatile semantics).
        unsafe { std::ptr::copy(src.as_ptr(), self.ptr, n) };
        n
    }

    /// Fills the buffer from `offset` to its end with zero bytes.
    pub fn fill_zero_from(&self, offset: usize) {
        if offset < self.len {
            // SAFETY: offset..len lies inside the buffer, which is valid for writes.
            unsafe { std::ptr::write_bytes(self.ptr.add(offset), 0, self.len - offset) };
        }
    }

    /// A read-only view of the same memory.
    pub fn as_io_buf(&self) -> IoBuf<'a> {
        IoBuf {
            ptr: self.ptr,
            len: self.len,
            _memory: PhantomData,
        }
    }
}

impl<'a> IoBuf<'a> {
    /// A buffer over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads for `'a` (for async I/O: until its request completes).
    pub unsafe fn from_raw_parts(ptr: *const u8, len: usize) -> IoBuf<'a> {
        IoBuf {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address, for handing to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The `len` bytes at `offset`, or `None` when they are not all inside the buffer.
    pub fn subslice(&self, offset: usize, len: usize) -> Option<IoBuf<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset..end lies inside this buffer, which is valid for reads for 'a.
        Some(unsafe { IoBuf::from_raw_parts(self.ptr.add(offset), len) })
    }

    /// Copies the start of the buffer into `dst`; returns how many bytes were copied (`min` of both lengths).
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len);
        // SAFETY: the buffer is valid for reads of `len` bytes and `n <= len`; `dst` is an exclusive borrow.
        unsafe { std::ptr::copy(self.ptr, dst.as_mut_ptr(), n) };
        n
    }
}

impl<'a> From<&'a mut [u8]> for IoBufMut<'a> {
    fn from(buf: &'a mut [u8]) -> IoBufMut<'a> {
        IoBufMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _memory: PhantomData,
        }
    }
}

impl<'a> From<&'a [u8]> for IoBuf<'a> {
    fn from(buf: &'a [u8]) -> IoBuf<'a> {
        IoBuf {
            ptr: buf.as_ptr(),
            len: buf.len(),
            _memory: PhantomData,
        }
    }
}

impl<'a, B: BitmapSlice> From<VolatileSlice<'a, B>> for IoBufMut<'a> {
    /// Guest memory a read fills. The slice's dirty bitmap is marked for the whole range here, since writes
    /// through the raw pointer bypass vm-memory's tracking.
    fn from(slice: VolatileSlice<'a, B>) -> IoBufMut<'a> {
        slice.bitmap().mark_dirty(0, slice.len());
        let guard = slice.ptr_guard_mut();
        IoBufMut {
            ptr: guard.as_ptr(),
            len: slice.len(),
            _memory: PhantomData,
        }
    }
}

impl<'a, B: BitmapSlice> From<VolatileSlice<'a, B>> for IoBuf<'a> {
    /// Guest memory a write takes its data from.
    fn from(slice: VolatileSlice<'a, B>) -> IoBuf<'a> {
        let guard = slice.ptr_guard();
        IoBuf {
            ptr: guard.as_ptr(),
            len: slice.len(),
            _memory: PhantomData,
        }
    }
}

/// The total length of a list of buffers.
pub fn total_len_mut(bufs: &[IoBufMut<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// The total length of a list of buffers.
pub fn total_len(bufs: &[IoBuf<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// The buffers covering bytes `start..start + len` of the concatenation of `bufs` (no copy): how a format
/// splits one guest request into the pieces that map to different host ranges. Bytes past the end of `bufs`
/// are not covered.
pub fn range_mut<'a>(bufs: &[IoBufMut<'a>], start: u64, len: u64) -> Vec<IoBufMut<'a>> {
    let mut out = Vec::new();
    for_each_piece(bufs.iter().map(IoBufMut::len), start, len, |i, from, n| {
        if let Some(piece) = bufs[i].subslice(from, n) {
            out.push(piece);
        }
    });
    out
}

/// The buffers covering bytes `start..start + len` of the concatenation of `bufs` (no copy); see
/// [`range_mut`].
pub fn range<'a>(bufs: &[IoBuf<'a>], start: u64, len: u64) -> Vec<IoBuf<'a>> {
    let mut out = Vec::new();
    for_each_piece(bufs.iter().map(IoBuf::len), start, len, |i, from, n| {
        if let Some(piece) = bufs[i].subslice(from, n) {
            out.push(piece);
        }
    });
    out
}

/// Calls `piece(index, offset_in_buffer, length)` for each buffer (given by its length) that overlaps bytes
/// `start..start + len` of their concatenation.
fn for_each_piece(
    lens: impl Iterator<Item = usize>,
    start: u64,
    len: u64,
    mut piece: impl FnMut(usize, usize, usize),
) {
    let end = start.saturating_add(len);
    let mut pos = 0u64;
    for (i, b_len) in lens.enumerate() {
        let (b_start, b_end) = (pos, pos + b_len as u64);
        pos = b_end;
        if b_start >= end {
            break;
        }
        if b_end <= start || len == 0 {
            continue;
        }
        let from = start.max(b_start) - b_start;
        let to = end.min(b_end) - b_start;
        // from <= to <= b_len, which is a usize.
        piece(i, from as usize, (to - from) as usize);
    }
}

/// Fills every buffer with zeros.
pub fn zero_fill(bufs: &[IoBufMut<'_>]) {
    for buf in bufs {
        buf.fill_zero_from(0);
    }
}

/// Views `bufs` as the `iovec` array the kernel takes; no copy.
pub fn as_iovecs_mut<'b>(bufs: &'b [IoBufMut<'_>]) -> &'b [libc::iovec] {
    const _: () =
        assert!(std::mem::size_of::<IoBufMut<'static>>() == std::mem::size_of::<libc::iovec>());
    const _: () =
        assert!(std::mem::align_of::<IoBufMut<'static>>() == std::mem::align_of::<libc::iovec>());
    // SAFETY: IoBufMut is repr(C) { *mut u8, usize, ZST }, the same size, alignment and field order as
    // iovec { *mut c_void, size_t } (checked above), and every bit pattern is a valid iovec.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) }
}

/// Views `bufs` as the `iovec` array the kernel takes; no copy. The kernel only reads through these for writes.
pub fn as_iovecs<'b>(bufs: &'b [IoBuf<'_>]) -> &'b [libc::iovec] {
    const _: () =
        assert!(std::mem::size_of::<IoBuf<'static>>() == std::mem::size_of::<libc::iovec>());
    const _: () =
        assert!(std::mem::align_of::<IoBuf<'static>>() == std::mem::align_of::<libc::iovec>());
    // SAFETY: as in `as_iovecs_mut`; IoBuf has the same layout as iovec.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_requested_bytes() {
        let mut a = [0u8; 3];
        let mut b = [1u8; 5];
        let bufs = [IoBufMut::from(&mut a[..]), IoBufMut::from(&mut b[..])];
        let lens = |v: &[IoBufMut<'_>]| v.iter().map(|b| b.len()).collect::<Vec<_>>();
        assert_eq!(lens(&range_mut(&bufs, 0, 8)), [3, 5]);
        assert_eq!(lens(&range_mut(&bufs, 2, 3)), [1, 2]);
        assert_eq!(lens(&range_mut(&bufs, 3, 5)), [5]);
        assert_eq!(lens(&range_mut(&bufs, 4, 100)), [4]);
        assert!(range_mut(&bufs, 8, 4).is_empty());
        assert!(range_mut(&bufs, 1, 0).is_empty());
        zero_fill(&range_mut(&bufs, 4, 2));
        assert_eq!(b, [1, 0, 0, 1, 1]);
    }

    #[test]
    fn copies_and_subslices() {
        let mut a = [0u8; 8];
        let buf = IoBufMut::from(&mut a[..]);
        assert_eq!(
            buf.subslice(2, 4).map(|s| s.copy_from(&[1, 2, 3, 4, 5])),
            Some(4)
        );
        assert!(buf.subslice(6, 3).is_none());
        buf.fill_zero_from(5);
        assert_eq!(a, [0, 0, 1, 2, 3, 0, 0, 0]);
        let src = [9u8; 3];
        let mut dst = [0u8; 5];
        assert_eq!(IoBuf::from(&src[..]).copy_to(&mut dst), 3);
        assert_eq!(dst, [9, 9, 9, 0, 0]);
    }

    #[test]
    fn volatile_slices_convert_in_place() {
        let mut mem = [0u8; 16];
        let vs = VolatileSlice::from(&mut mem[..]);
        let buf = IoBufMut::from(vs.subslice(4, 4).expect("in range"));
        buf.copy_from(&[7; 4]);
        assert_eq!(&mem[..9], &[0, 0, 0, 0, 7, 7, 7, 7, 0]);
    }

    #[test]
    fn iovec_views_match() {
        let mut a = [0u8; 3];
        let bufs = [IoBufMut::from(&mut a[..])];
        let iov = as_iovecs_mut(&bufs);
        assert_eq!(iov[0].iov_len, 3);
        assert_eq!(iov[0].iov_base.cast::<u8>(), bufs[0].as_mut_ptr());
    }
}
