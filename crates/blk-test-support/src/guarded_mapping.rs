//! Memory followed by a page that cannot be touched, for provoking an error after a partial transfer.

use std::io;

use blk_core::IoBufMut;

/// `pages` accessible pages of private anonymous memory followed by a page that cannot be touched. A read
/// into more than the accessible pages copies what fits, then the kernel answers `EFAULT` for the rest: a
/// short step, and an error when the engine or backend goes on.
#[derive(Debug)]
pub struct GuardedMapping {
    base: *mut libc::c_void,
    map_len: usize,
    len: usize,
}

impl GuardedMapping {
    /// `pages` accessible pages, then the guard page.
    pub fn new(pages: usize) -> GuardedMapping {
        let page = page_size();
        let map_len = (pages + 1) * page;
        // SAFETY: an anonymous private mapping at an address the kernel picks; no memory of ours is involved.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            base,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        // SAFETY: the last page lies inside the mapping just made, which nothing else uses.
        let r = unsafe {
            libc::mprotect(
                base.cast::<u8>().wrapping_add(pages * page).cast(),
                page,
                libc::PROT_NONE,
            )
        };
        assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
        GuardedMapping {
            base,
            map_len,
            len: pages * page,
        }
    }

    /// A read buffer of `len` bytes from the start of the mapping: past the accessible pages, it runs into the
    /// guard page.
    ///
    /// The mapping must outlive every operation on the buffer (keep it until the completion has come back).
    pub fn read_buf(&self, len: usize) -> IoBufMut<'static> {
        // SAFETY: the caller keeps the mapping until the operation completes (see above); the kernel, the only
        // writer, copies into the accessible pages and answers EFAULT at the guard page instead of writing.
        unsafe { IoBufMut::from_raw_parts(self.base.cast(), len) }
    }

    /// The accessible bytes.
    pub fn accessible(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are mapped readable and no operation writes them any more (the caller
        // has reaped them).
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>(), self.len) }
    }
}

impl Drop for GuardedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it once its owner is dropped.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

/// The size of a memory page.
pub fn page_size() -> usize {
    // SAFETY: sysconf takes and returns plain integers.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
