//! The kernel's AIO ABI (`<linux/aio_abi.h>`), which libc does not define: [`Iocb`], [`IoEvent`], opcodes and
//! flags.
//!
//! The layouts are the little-endian ones (x86_64, aarch64, riscv64...): on big-endian targets `aio_key` and
//! `aio_rw_flags` swap places, so the crate refuses to build there (see `lib.rs`).

/// `IOCB_CMD_PREAD`: read into one buffer (`aio_buf`, `aio_nbytes`).
pub(crate) const IOCB_CMD_PREAD: u16 = 0;
/// `IOCB_CMD_PWRITE`: write from one buffer.
pub(crate) const IOCB_CMD_PWRITE: u16 = 1;
/// `IOCB_CMD_FDSYNC`: `fdatasync` the file.
pub(crate) const IOCB_CMD_FDSYNC: u16 = 3;
/// `IOCB_CMD_PREADV`: read into an iovec array (`aio_buf` points at it, `aio_nbytes` counts its entries).
pub(crate) const IOCB_CMD_PREADV: u16 = 7;
/// `IOCB_CMD_PWRITEV`: write from an iovec array.
pub(crate) const IOCB_CMD_PWRITEV: u16 = 8;

/// `IOCB_FLAG_RESFD`: the kernel signals `aio_resfd` (an eventfd) when the operation completes.
pub(crate) const IOCB_FLAG_RESFD: u32 = 1;

/// `struct iocb`: one operation handed to `io_submit`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Iocb {
    /// Returned unchanged in [`IoEvent::data`]; we store the slot index.
    pub(crate) aio_data: u64,
    /// Written by the kernel (`KIOCB_KEY`).
    pub(crate) aio_key: u32,
    /// `RWF_*` flags (`__kernel_rwf_t`).
    pub(crate) aio_rw_flags: i32,
    /// One of the `IOCB_CMD_*` opcodes.
    pub(crate) aio_lio_opcode: u16,
    /// I/O priority.
    pub(crate) aio_reqprio: i16,
    /// The file descriptor.
    pub(crate) aio_fildes: u32,
    /// Buffer address, or iovec array address for the vectored opcodes.
    pub(crate) aio_buf: u64,
    /// Buffer length in bytes, or number of iovecs for the vectored opcodes.
    pub(crate) aio_nbytes: u64,
    /// File offset.
    pub(crate) aio_offset: i64,
    /// Reserved, must be zero.
    pub(crate) aio_reserved2: u64,
    /// `IOCB_FLAG_*`.
    pub(crate) aio_flags: u32,
    /// The eventfd signalled when `IOCB_FLAG_RESFD` is set.
    pub(crate) aio_resfd: u32,
}

/// `struct io_event`: one completion returned by `io_getevents`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IoEvent {
    /// The operation's [`Iocb::aio_data`].
    pub(crate) data: u64,
    /// The address of the operation's iocb.
    pub(crate) obj: u64,
    /// Bytes transferred, or a negative errno.
    pub(crate) res: i64,
    /// Secondary result (unused by the opcodes we submit).
    pub(crate) res2: i64,
}

// The kernel ABI's sizes and the offsets that differ between layouts: a mistake here is a compile error.
const _: () = assert!(std::mem::size_of::<Iocb>() == 64);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_key) == 8);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_lio_opcode) == 16);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_fildes) == 20);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_buf) == 24);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_offset) == 40);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_flags) == 56);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_resfd) == 60);
const _: () = assert!(std::mem::size_of::<IoEvent>() == 32);
