//! Linux system calls: positioned vectored I/O, file status flags (O_DIRECT), fallocate, SEEK_DATA/SEEK_HOLE, OFD locks, statx and
//! block-device ioctls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::buffer::{as_iovecs, as_iovecs_mut, IoBuf, IoBufMut};

/// The kernel's limit on iovecs per call; longer lists are split by the caller.
pub(crate) const IOV_MAX: usize = 1024;

// Block-device ioctl numbers from <linux/fs.h>: _IO(0x12, n) and _IOR(0x12, 114, size_t).
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKIOMIN: libc::c_ulong = 0x1278;
const BLKIOOPT: libc::c_ulong = 0x1279;
const BLKPBSZGET: libc::c_ulong = 0x127b;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const STATX_DIOALIGN: u32 = 0x2000;

fn offset_arg(offset: u64) -> io::Result<libc::off64_t> {
    libc::off64_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `preadv(2)` into at most [`IOV_MAX`] buffers; returns the bytes read (0 at end of file).
pub(crate) fn preadv(fd: BorrowedFd<'_>, bufs: &[IoBufMut<'_>], offset: u64) -> io::Result<usize> {
    let iov = as_iovecs_mut(&bufs[..bufs.len().min(IOV_MAX)]);
    let off = offset_arg(offset)?;
    // SAFETY: `iov` describes memory valid for writes (IoBufMut's contract) and holds at most IOV_MAX entries;
    // the kernel writes only within those ranges.
    let n = unsafe { libc::preadv64(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `pwritev(2)` from at most [`IOV_MAX`] buffers; returns the bytes written.
pub(crate) fn pwritev(fd: BorrowedFd<'_>, bufs: &[IoBuf<'_>], offset: u64) -> io::Result<usize> {
    let iov = as_iovecs(&bufs[..bufs.len().min(IOV_MAX)]);
    let off = offset_arg(offset)?;
    // SAFETY: `iov` describes memory valid for reads (IoBuf's contract), at most IOV_MAX entries; the kernel
    // only reads from it.
    let n = unsafe { libc::pwritev64(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Adds `flags` (e.g. `O_DIRECT`) to the file status flags of the open file description (`fcntl(2)`
/// `F_GETFL`, then `F_SETFL`).
pub(crate) fn add_status_flags(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and returns the flags as a plain integer, on a descriptor we borrow.
    let current = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if current < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes the flags as a plain integer; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, current | flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fallocate(2)` with `mode` over `len` bytes at `offset`.
pub(crate) fn fallocate(
    fd: BorrowedFd<'_>,
    mode: libc::c_int,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let off = offset_arg(offset)?;
    let len = offset_arg(len)?;
    // SAFETY: fallocate takes plain integers and a descriptor we borrow; no memory is passed.
    let r = unsafe { libc::fallocate64(fd.as_raw_fd(), mode, off, len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`; `Ok(None)` when there is no such position (ENXIO).
pub(crate) fn seek(
    fd: BorrowedFd<'_>,
    offset: u64,
    whence: libc::c_int,
) -> io::Result<Option<u64>> {
    let off = offset_arg(offset)?;
    // SAFETY: lseek takes plain integers; SEEK_DATA/SEEK_HOLE do not move a file position we rely on (all our
    // I/O is positioned).
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    Ok(Some(r as u64))
}

fn flock_for(lock_type: libc::c_int, start: u64, len: u64) -> io::Result<libc::flock64> {
    // SAFETY: flock is a plain C struct for which all-zero is a valid value.
    let mut fl: libc::flock64 = unsafe { std::mem::zeroed() };
    fl.l_type = lock_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset_arg(start)?;
    fl.l_len = offset_arg(len)?;
    Ok(fl)
}

/// Takes (or with `F_UNLCK` drops) an OFD lock of `lock_type` on `len` bytes at `start`, without waiting.
pub(crate) fn ofd_lock(
    fd: BorrowedFd<'_>,
    lock_type: libc::c_int,
    start: u64,
    len: u64,
) -> io::Result<()> {
    let mut fl = flock_for(lock_type, start, len)?;
    // SAFETY: F_OFD_SETLK reads the flock we pass by pointer, which lives across the call.
    let r = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_OFD_SETLK,
            &mut fl as *mut libc::flock64,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether another open file description holds any lock on `len` bytes at `start` (our own never conflict).
pub(crate) fn ofd_lock_conflicts(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    let mut fl = flock_for(libc::F_WRLCK, start, len)?;
    // SAFETY: F_OFD_GETLK reads and rewrites the flock we pass by pointer, which lives across the call.
    let r = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_OFD_GETLK,
            &mut fl as *mut libc::flock64,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The O_DIRECT alignment `(memory, offset)` from `statx(STATX_DIOALIGN)`, when the file system reports one.
pub(crate) fn dio_alignment(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    // SAFETY: statx is a plain C struct for which all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string, AT_EMPTY_PATH makes statx look at `fd`, and `stx` is a valid
    // out-pointer for the duration of the call.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r < 0 || stx.stx_mask & STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: these _IO block ioctls write one int through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut value as *mut libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value.max(0) as u32)
    }
}

/// Block device geometry: (logical, physical, io_min, io_opt) sizes in bytes.
pub(crate) fn block_device_geometry(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32, u32)> {
    Ok((
        ioctl_int(fd, BLKSSZGET)?,
        ioctl_int(fd, BLKPBSZGET)?,
        ioctl_int(fd, BLKIOMIN)?,
        ioctl_int(fd, BLKIOOPT)?,
    ))
}

/// The size of a block device in bytes.
pub(crate) fn block_device_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(size)
    }
}

/// `BLKDISCARD` (`zero == false`) or `BLKZEROOUT` over `len` bytes at `offset` of a block device.
pub(crate) fn block_device_range(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    zero: bool,
) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    let request = if zero { BLKZEROOUT } else { BLKDISCARD };
    // SAFETY: both ioctls read a [u64; 2] range through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, range.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
