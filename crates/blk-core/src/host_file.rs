//! The host-file layer formats are written against: a file or block device with positioned vectored I/O,
//! punch hole and zero range, allocation queries, advisory locks and O_DIRECT alignment handled inside.
//!
//! A format translates guest offsets to host ranges and calls these methods; it never names io_uring or AIO
//! (asynchronous submission is a backend's job, added on top of the same file).
//!
//! Tests can inject faults here ([`inject_host_faults`], the idea of QEMU's blkdebug): a [`HostFaults`] hook
//! registered for a file is asked before each read or write step, flush and allocation of every handle opened
//! on it, and may fail the call or cut a step short.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::buffer::{total_len, total_len_mut, IoBuf, IoBufMut};
use crate::direct_io::{DirectIo, DirectIoAlignment};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::host_queue::HostTransfer;
use crate::sys;
use crate::topology::DiskTopology;

/// Which advisory lock to hold on an open file, as qemu-img does (OFD locks, so they belong to the open file
/// description and are shared by [`HostFile::try_clone`] handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Shared lock for read-only opens, exclusive for writable ones.
    #[default]
    Auto,
    /// No lock at all (qemu-img `-U`, force-share).
    None,
}

/// The largest write of zeros [`HostFile::zero_range`] issues when it has to write them.
const ZERO_CHUNK: u64 = 1 << 20;
/// The alignment of [`ZERO_SOURCE`]: a multiple of every page size Linux uses for user memory (4, 16, 64 KiB).
const ZERO_ALIGN: u64 = 64 << 10;

/// Zeros aligned to [`ZERO_ALIGN`], one alignment unit longer than a chunk so a chunk can start at any offset
/// within a page (in `.bss`: it costs address space, and memory only for the shared zero page it maps).
#[repr(C, align(65536))]
struct AlignedZeros([u8; (ZERO_CHUNK + ZERO_ALIGN) as usize]);

/// The source of [`HostFile::zero_range`]'s zero writes.
static ZERO_SOURCE: AlignedZeros = AlignedZeros([0; (ZERO_CHUNK + ZERO_ALIGN) as usize]);
const _: () = assert!(std::mem::align_of::<AlignedZeros>() as u64 == ZERO_ALIGN);

/// How long a lock conflict is retried before it is reported: long enough to cover a fork-to-exec window in a
/// process that spawns programs while it opens images.
pub const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How to open a host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostOpenOptions {
    /// Open without write access.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`); unaligned requests are bounced.
    pub direct: bool,
    /// Advisory locking.
    pub lock: LockMode,
}

/// QEMU's lock byte bases: `100 + i` while holding permission `i`, `200 + i` while refusing to share it.
const LOCK_PERM_BASE: u64 = 100;
const LOCK_SHARED_BASE: u64 = 200;

/// QEMU's permission bits (`BLK_PERM_*`), by bit index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permission {
    ConsistentRead = 0,
    Write = 1,
    Resize = 3,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::ConsistentRead => "consistent read",
            Permission::Write => "write",
            Permission::Resize => "resize",
        }
    }
}

/// Which kind of host-file call a [`HostFaults`] hook is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostCall {
    /// One step (system call) of a positioned read.
    Read,
    /// One step (system call) of a positioned write.
    Write,
    /// `fdatasync`.
    Flush,
    /// A call that allocates or deallocates host space or changes the length: `fallocate` (allocate, zero
    /// range, punch hole) and `ftruncate`.
    Allocate,
}

/// What a [`HostFaults`] hook makes of one host-file call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFault {
    /// The call fails with this (positive) errno and does nothing.
    Fail(i32),
    /// A read or write step transfers at most this many bytes (at least 1), as a kernel may on a signal or a
    /// page fault; the host-file loop continues the rest. Other calls ignore it.
    Short(u64),
}

/// A fault-injection hook (the idea of QEMU's blkdebug): asked before every host-file call of the files it is
/// registered for with [`inject_host_faults`], it may make the call fail or transfer less. For tests: an
/// image opened while no hook is registered never asks one (one branch per call).
pub trait HostFaults: Send + Sync + std::fmt::Debug {
    /// What to do with `call` of `len` bytes at `offset` (0 for flushes) on the file at `path`; `None`
    /// lets it run.
    fn check(&self, path: &Path, call: HostCall, offset: u64, len: u64) -> Option<HostFault>;
}

/// Hooks by registration and the (device, inode) of the file they are for.
type HookTable = Vec<(u64, (u64, u64), Arc<dyn HostFaults>)>;

/// Registered hooks; `HOOKS_REGISTERED` lets opens skip the lock when there are none.
static HOOKS: Mutex<HookTable> = Mutex::new(Vec::new());
static HOOKS_REGISTERED: AtomicUsize = AtomicUsize::new(0);
static NEXT_REGISTRATION: AtomicU64 = AtomicU64::new(0);

/// Registers `hook` for the file at `path` (by device and inode, so every path naming it counts): every
/// [`HostFile`] opened on it from now on, and their clones, ask the hook before each call (the latest hook
/// registered for a file, when there are several). The hook stays registered until the returned guard is
/// dropped; files opened meanwhile keep it.
pub fn inject_host_faults(
    path: impl AsRef<Path>,
    hook: Arc<dyn HostFaults>,
) -> Result<HostFaultsRegistration> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(e).with_path(path))?;
    let key = (meta.dev(), meta.ino());
    let id = NEXT_REGISTRATION.fetch_add(1, Ordering::Relaxed);
    let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks.push((id, key, hook));
    HOOKS_REGISTERED.fetch_add(1, Ordering::AcqRel);
    Ok(HostFaultsRegistration { id })
}

/// Keeps a [`HostFaults`] hook registered (see [`inject_host_faults`]); dropping it unregisters the hook.
#[derive(Debug)]
pub struct HostFaultsRegistration {
    id: u64,
}

impl Drop for HostFaultsRegistration {
    fn drop(&mut self) {
        let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = hooks.iter().position(|(id, ..)| *id == self.id) {
            hooks.remove(i);
            HOOKS_REGISTERED.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The hook registered for the file `meta` describes, if any.
fn registered_hook(meta: &std::fs::Metadata) -> Option<Arc<dyn HostFaults>> {
    if HOOKS_REGISTERED.load(Ordering::Acquire) == 0 {
        return None;
    }
    let key = (meta.dev(), meta.ino());
    let hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks
        .iter()
        .rev()
        .find(|(_, k, _)| *k == key)
        .map(|(.., h)| h.clone())
}

/// An open host file or block device.
#[derive(Debug)]
pub struct HostFile {
    file: File,
    path: Arc<Path>,
    read_only: bool,
    block_device: bool,
    direct: Option<DirectIo>,
    /// A fault-injection hook registered for the file when it was opened (tests only).
    faults: Option<Arc<dyn HostFaults>>,
}

impl HostFile {
    /// Opens `path` as `options` say, taking the advisory lock.
    pub fn open(path: impl AsRef<Path>, options: HostOpenOptions) -> Result<HostFile> {
        let path = path.as_ref();
        let ctx = |e: Error| e.with_path(path).with_operation(Operation::Open);
        let meta = std::fs::metadata(path).map_err(|e| ctx(Error::io(e)))?;
        if meta.is_dir() {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                "is a directory, not an image file",
            )));
        }
        let mut oo = OpenOptions::new();
        oo.read(true)
            .write(!options.read_only)
            .custom_flags(libc::O_CLOEXEC);
        let file = oo.open(path).map_err(|e| ctx(Error::io(e)))?;
        HostFile::from_file(file, path, options)
    }

    /// Creates (or truncates) a regular file at `path` for writing. The lock is taken before truncating, so an
    /// image another process has open is refused, not wiped.
    pub fn create(path: impl AsRef<Path>, options: HostOpenOptions) -> Result<HostFile> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                Error::io(e)
                    .with_path(path)
                    .with_operation(Operation::Create)
            })?;
        let host = HostFile::from_file(
            file,
            path,
            HostOpenOptions {
                read_only: false,
                ..options
            },
        )?;
        host.set_len(0)
            .map_err(|e| e.with_operation(Operation::Create))?;
        Ok(host)
    }

    /// Wraps an already open file (e.g. a memfd in a fuzz target); `path` is used in error messages.
    pub fn from_file(
        file: File,
        path: impl AsRef<Path>,
        options: HostOpenOptions,
    ) -> Result<HostFile> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        let ctx = |e: Error| e.with_path(&path).with_operation(Operation::Open);
        let meta = file.metadata().map_err(|e| ctx(Error::io(e)))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                "not a regular file or block device",
            )));
        }
        let mut host = HostFile {
            file,
            path,
            read_only: options.read_only,
            block_device,
            direct: None,
            faults: registered_hook(&meta),
        };
        if options.lock == LockMode::Auto {
            host.lock()?;
        }
        if options.direct {
            host.set_direct()?;
        }
        Ok(host)
    }

    /// Takes advisory locks the way QEMU does (`block/file-posix.c`), so blk and QEMU see each other: one-byte
    /// OFD read locks at `100 + i` for each permission `i` held and at `200 + i` for each permission refused to
    /// others, then a check that nobody refuses what we hold or holds what we refuse. A reader holds
    /// consistent-read and refuses write and resize; a writer also holds write and resize.
    ///
    /// A conflict is retried for up to [`LOCK_RETRY`]: OFD locks belong to open file descriptions, and a child
    /// process forked by another thread of this process holds copies of every descriptor until it execs, so a
    /// file just closed here can look locked for that instant (see ADR 0003). A real conflict still fails,
    /// only that much later.
    fn lock(&self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            match self.try_lock() {
                Err(e) if e.kind() == ErrorKind::Locked && started.elapsed() < LOCK_RETRY => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                result => return result,
            }
        }
    }

    /// One attempt at [`HostFile::lock`].
    fn try_lock(&self) -> Result<()> {
        let held: &[Permission] = if self.read_only {
            &[Permission::ConsistentRead]
        } else {
            &[
                Permission::ConsistentRead,
                Permission::Write,
                Permission::Resize,
            ]
        };
        let refused = [Permission::Write, Permission::Resize];
        let fd = self.file.as_fd();
        let io_err = |e: io::Error| {
            Error::io_while(e, "taking the advisory lock")
                .with_path(&self.path)
                .with_operation(Operation::Lock)
        };
        let held_bytes = held.iter().map(|p| (LOCK_PERM_BASE + *p as u64, *p));
        let refused_bytes = refused.iter().map(|p| (LOCK_SHARED_BASE + *p as u64, *p));
        for (byte, permission) in held_bytes.clone().chain(refused_bytes.clone()) {
            match sys::ofd_lock(fd, libc::F_RDLCK, byte, 1) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                    return Err(self.lock_conflict(permission));
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        // Someone refusing to share a permission we hold, or holding one we refuse.
        for (byte, permission) in held_bytes {
            if sys::ofd_lock_conflicts(fd, LOCK_SHARED_BASE + (byte - LOCK_PERM_BASE), 1)
                .map_err(io_err)?
            {
                return Err(self.lock_conflict(permission));
            }
        }
        for (byte, permission) in refused_bytes {
            if sys::ofd_lock_conflicts(fd, LOCK_PERM_BASE + (byte - LOCK_SHARED_BASE), 1)
                .map_err(io_err)?
            {
                return Err(self.lock_conflict(permission));
            }
        }
        Ok(())
    }

    fn lock_conflict(&self, permission: Permission) -> Error {
        Error::new(
            ErrorKind::Locked,
            format!(
                "failed to get the \"{}\" lock: is another process using the image? (-U skips locking)",
                permission.name()
            ),
        )
        .with_path(&self.path)
        .with_operation(Operation::Lock)
    }

    fn set_direct(&mut self) -> Result<()> {
        let ctx = |e: io::Error| Error::io_while(e, "enabling O_DIRECT").with_path(&self.path);
        sys::add_status_flags(self.file.as_fd(), libc::O_DIRECT).map_err(ctx)?;
        let alignment = match sys::dio_alignment(self.file.as_fd()) {
            Some((memory, offset)) => DirectIoAlignment { memory, offset },
            None if self.block_device => {
                let (logical, ..) = sys::block_device_geometry(self.file.as_fd()).map_err(ctx)?;
                DirectIoAlignment {
                    memory: logical.max(512),
                    offset: logical.max(512),
                }
            }
            None => DirectIoAlignment {
                memory: 4096,
                offset: 4096,
            },
        };
        self.direct = Some(DirectIo::new(alignment));
        Ok(())
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a shared handle, cheap to clone into errors and other handles.
    pub fn path_arc(&self) -> Arc<Path> {
        self.path.clone()
    }

    /// Whether the file was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the file is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The O_DIRECT alignment, when the file was opened with `direct`.
    pub fn direct_io_alignment(&self) -> Option<DirectIoAlignment> {
        self.direct.as_ref().map(DirectIo::alignment)
    }

    /// An independent handle (its own descriptor, `dup(2)`), sharing the lock and the O_DIRECT state.
    pub fn try_clone(&self) -> Result<HostFile> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| self.err(e, "duplicating the descriptor", None))?;
        Ok(HostFile {
            file,
            path: self.path.clone(),
            read_only: self.read_only,
            block_device: self.block_device,
            direct: self.direct.clone(),
            faults: self.faults.clone(),
        })
    }

    /// What the fault-injection hook (if any) makes of `call`.
    #[inline]
    fn fault(&self, call: HostCall, offset: u64, len: u64) -> Option<HostFault> {
        match &self.faults {
            None => None,
            Some(hook) => hook.check(&self.path, call, offset, len),
        }
    }

    /// The injected failure of `call`, as the error the call would return.
    #[inline]
    fn injected_failure(&self, call: HostCall, offset: u64, len: u64) -> io::Result<()> {
        match self.fault(call, offset, len) {
            Some(HostFault::Fail(errno)) => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }

    /// One read or write step through the hook: a failure instead of the call, or the call's count cut.
    #[inline]
    fn faulted_step(
        &self,
        call: HostCall,
        offset: u64,
        remaining: u64,
        run: impl FnOnce() -> io::Result<usize>,
    ) -> io::Result<usize> {
        match self.fault(call, offset, remaining) {
            None => run(),
            Some(HostFault::Fail(errno)) => Err(io::Error::from_raw_os_error(errno)),
            // The whole step runs (re-transferring the same bytes later is harmless); only its count is cut.
            Some(HostFault::Short(most)) => {
                let most = usize::try_from(most.max(1)).unwrap_or(usize::MAX);
                run().map(|n| n.min(most))
            }
        }
    }

    fn err(&self, e: io::Error, what: &str, offset: Option<u64>) -> Error {
        let err = Error::io_while(e, what).with_path(&self.path);
        match offset {
            Some(o) => err.with_offset(o),
            None => err,
        }
    }

    /// The file's length (a block device's size).
    pub fn len(&self) -> Result<u64> {
        if self.block_device {
            return sys::block_device_size(self.file.as_fd())
                .map_err(|e| self.err(e, "querying the block device size", None));
        }
        let meta = self
            .file
            .metadata()
            .map_err(|e| self.err(e, "querying the file size", None))?;
        Ok(meta.len())
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Sets the length of a regular file (extending sparsely).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.writable(Operation::Resize)?;
        self.injected_failure(HostCall::Allocate, len, 0)
            .and_then(|()| self.file.set_len(len))
            .map_err(|e| self.err(e, "resizing the file", Some(len)))
    }

    /// Host bytes allocated to the file (`st_blocks * 512`); a block device's size.
    pub fn allocated_size(&self) -> Result<u64> {
        if self.block_device {
            return self.len();
        }
        let meta = self
            .file
            .metadata()
            .map_err(|e| self.err(e, "querying the allocated size", None))?;
        Ok(meta.blocks() * 512)
    }

    /// The geometry to show a guest: the device's for a block device; 512-byte sectors for a file, with the
    /// file system block as discard granularity. O_DIRECT alignment never changes it.
    pub fn topology(&self) -> DiskTopology {
        if self.block_device {
            if let Ok((logical, physical, min, opt)) = sys::block_device_geometry(self.file.as_fd())
            {
                return DiskTopology {
                    logical_block_size: logical.max(512),
                    physical_block_size: physical.max(logical).max(512),
                    minimum_io_size: min.max(logical).max(512),
                    optimal_io_size: opt,
                    discard_granularity: physical.max(logical).max(512),
                };
            }
        }
        let fs_block = self
            .file
            .metadata()
            .map(|m| m.blksize() as u32)
            .unwrap_or(4096);
        DiskTopology {
            discard_granularity: fs_block.max(512),
            ..DiskTopology::default()
        }
    }

    /// Reads into `bufs` at `offset` until they are full or the file ends; returns the bytes read.
    pub fn read_vectored_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<usize> {
        if let Some(direct) = &self.direct {
            if !direct.is_aligned_mut(offset, bufs) {
                return direct.bounce_read(self, offset, bufs);
            }
        }
        self.read_vectored_raw(offset, bufs)
    }

    /// Positioned vectored read without alignment handling: loops over short reads and `IOV_MAX` as the
    /// [`HostTransfer`] rules say (the same ones every host-queue backend follows); fewer bytes than asked only
    /// at the end of the file.
    pub(crate) fn read_vectored_raw(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<usize> {
        let mut transfer = HostTransfer::read(offset, total_len_mut(bufs));
        if transfer.remaining() == 0 {
            return Ok(0);
        }
        loop {
            let step = self.faulted_step(
                HostCall::Read,
                transfer.offset(),
                transfer.remaining(),
                || match transfer.rest(bufs) {
                    (Some(first), _) => sys::preadv(self.file.as_fd(), &[first], transfer.offset()),
                    (None, rest) => sys::preadv(self.file.as_fd(), rest, transfer.offset()),
                },
            );
            let result = step.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
            match transfer.step(result, bufs, || self.len().ok()) {
                None => {}
                // The bytes read fit the buffers, whose lengths are usizes.
                Some(Ok(n)) => return Ok(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(Err(errno)) => {
                    return Err(self.err(
                        io::Error::from_raw_os_error(errno),
                        "reading",
                        Some(transfer.offset()),
                    ))
                }
            }
        }
    }

    /// Reads exactly enough bytes to fill `bufs` at `offset`; the end of the file first is an error.
    pub fn read_exact_vectored_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let got = self.read_vectored_at(offset, bufs)?;
        if got < want {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!("unexpected end of file: wanted {want} bytes, the file ends after {got}"),
            )
            .with_path(&self.path)
            .with_offset(offset));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; the end of the file first is an error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_exact_vectored_at(offset, &[IoBufMut::from(buf)])
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end of the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_vectored_at(offset, &[IoBufMut::from(buf)])
    }

    /// Writes all of `bufs` at `offset`.
    pub fn write_vectored_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.writable(Operation::Write)?;
        if let Some(direct) = &self.direct {
            if !direct.is_aligned(offset, bufs) {
                return direct.bounce_write(self, offset, bufs);
            }
        }
        self.write_vectored_raw(offset, bufs)
    }

    /// Positioned vectored write without alignment handling: loops over short writes and `IOV_MAX` as the
    /// [`HostTransfer`] rules say (the same ones every host-queue backend follows); all of `bufs` or an error.
    pub(crate) fn write_vectored_raw(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let mut transfer = HostTransfer::write(offset, total_len(bufs));
        if transfer.remaining() == 0 {
            return Ok(());
        }
        loop {
            let step = self.faulted_step(
                HostCall::Write,
                transfer.offset(),
                transfer.remaining(),
                || match transfer.rest(bufs) {
                    (Some(first), _) => {
                        sys::pwritev(self.file.as_fd(), &[first], transfer.offset())
                    }
                    (None, rest) => sys::pwritev(self.file.as_fd(), rest, transfer.offset()),
                },
            );
            let wrote_nothing = matches!(step, Ok(0));
            let result = step.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
            match transfer.step(result, bufs, || None) {
                None => {}
                Some(Ok(_)) => return Ok(()),
                Some(Err(_)) if wrote_nothing => {
                    return Err(self.err(
                        io::Error::from(io::ErrorKind::WriteZero),
                        "writing",
                        Some(offset),
                    ));
                }
                Some(Err(errno)) => {
                    return Err(self.err(
                        io::Error::from_raw_os_error(errno),
                        "writing",
                        Some(transfer.offset()),
                    ))
                }
            }
        }
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_vectored_at(offset, &[IoBuf::from(buf)])
    }

    fn writable(&self, operation: Operation) -> Result<()> {
        if self.read_only {
            return Err(
                Error::new(ErrorKind::ReadOnly, "the file is opened read-only")
                    .with_path(&self.path)
                    .with_operation(operation),
            );
        }
        Ok(())
    }

    /// Deallocates `len` bytes at `offset`; they read as zeros afterwards. On a block device, `BLKDISCARD`
    /// (which need not zero: use [`zero_range`](HostFile::zero_range) for that).
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(Operation::Discard)?;
        if len == 0 {
            return Ok(());
        }
        let r = if let Err(e) = self.injected_failure(HostCall::Allocate, offset, len) {
            Err(e)
        } else if self.block_device {
            sys::block_device_range(self.file.as_fd(), offset, len, false)
        } else {
            sys::fallocate(
                self.file.as_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        r.map_err(|e| self.err(e, "punching a hole", Some(offset)))
    }

    /// Makes `len` bytes at `offset` read as zeros, growing the file when the range ends past its end.
    ///
    /// With `keep_allocated` the range stays allocated (`FALLOC_FL_ZERO_RANGE`); otherwise it is deallocated
    /// (punch hole). When the file system lacks one mechanism the other is tried, then writing zero buffers;
    /// `no_fallback` makes that last step fail with [`ErrorKind::Unsupported`] instead. On a block device this is
    /// `BLKZEROOUT`.
    pub fn zero_range(
        &self,
        offset: u64,
        len: u64,
        keep_allocated: bool,
        no_fallback: bool,
    ) -> Result<()> {
        self.writable(Operation::WriteZeroes)?;
        if len == 0 {
            return Ok(());
        }
        if let Err(e) = self.injected_failure(HostCall::Allocate, offset, len) {
            return Err(self
                .err(e, "zeroing a range", Some(offset))
                .with_operation(Operation::WriteZeroes));
        }
        let fd = self.file.as_fd();
        let unsupported = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
            )
        };
        let fail = |e: io::Error| {
            self.err(e, "zeroing a range", Some(offset))
                .with_operation(Operation::WriteZeroes)
        };
        if self.block_device {
            match sys::block_device_range(fd, offset, len, true) {
                Ok(()) => return Ok(()),
                Err(e) if !unsupported(&e) => return Err(fail(e)),
                Err(_) => {}
            }
        } else {
            let end = offset.saturating_add(len);
            let size = self.len()?;
            // Punching never grows a file: punch what lies inside it and extend with a hole.
            let punch = || -> io::Result<()> {
                if offset < size {
                    let inside = end.min(size) - offset;
                    sys::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset,
                        inside,
                    )?;
                }
                if end > size {
                    self.file.set_len(end)?;
                }
                Ok(())
            };
            let zero = || sys::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset, len);
            let first = if keep_allocated { zero() } else { punch() };
            match first {
                Ok(()) => return Ok(()),
                Err(e) if !unsupported(&e) => return Err(fail(e)),
                Err(_) => {}
            }
            match if keep_allocated {
                Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
            } else {
                zero()
            } {
                Ok(()) => return Ok(()),
                Err(e) if !unsupported(&e) => return Err(fail(e)),
                Err(_) => {}
            }
        }
        if no_fallback {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the host cannot zero a range without writing it",
            )
            .with_path(&self.path)
            .with_offset(offset)
            .with_operation(Operation::WriteZeroes));
        }
        self.write_zero_buffers(offset, len)
    }

    /// Writes `len` zero bytes at `offset` from [`ZERO_SOURCE`], each chunk starting at the same offset within a
    /// page of it as in the file. A `pwrite` stopped short (a fatal signal while the kernel faults in a source
    /// page) ends at a source page boundary, so it ends at a page boundary of the file too, never inside a
    /// sector: from a buffer whose pages sit elsewhere (a heap or `calloc` one, 16 bytes past a page start) a
    /// killed writer left sectors with zeros in front and the old data in their last 16 bytes.
    fn write_zero_buffers(&self, offset: u64, len: u64) -> Result<()> {
        let mut pos = 0;
        while pos < len {
            let at = offset + pos;
            let n = ZERO_CHUNK.min(len - pos);
            // Both below the array's length: skew < ZERO_ALIGN and n <= ZERO_CHUNK.
            let skew = (at % ZERO_ALIGN) as usize;
            self.write_all_at(at, &ZERO_SOURCE.0[skew..skew + n as usize])?;
            pos += n;
        }
        Ok(())
    }

    /// Allocates `len` bytes at `offset` (`fallocate` mode 0), growing the file if needed.
    pub fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(Operation::Write)?;
        if len == 0 {
            return Ok(());
        }
        self.injected_failure(HostCall::Allocate, offset, len)
            .and_then(|()| sys::fallocate(self.file.as_fd(), 0, offset, len))
            .map_err(|e| self.err(e, "allocating", Some(offset)))
    }

    /// The first offset at or after `offset` holding data (`SEEK_DATA`), or `None` past the last data.
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        sys::seek(self.file.as_fd(), offset, libc::SEEK_DATA)
            .map_err(|e| self.err(e, "seeking data", Some(offset)))
    }

    /// The first hole at or after `offset` (`SEEK_HOLE`; the end of the file counts as one), or `None` when
    /// `offset` is past the end.
    pub fn next_hole(&self, offset: u64) -> Result<Option<u64>> {
        sys::seek(self.file.as_fd(), offset, libc::SEEK_HOLE)
            .map_err(|e| self.err(e, "seeking a hole", Some(offset)))
    }

    /// Makes written data durable (`fdatasync`).
    pub fn sync_data(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.injected_failure(HostCall::Flush, 0, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| {
                self.err(e, "flushing", None)
                    .with_operation(Operation::Flush)
            })
    }
}

impl AsFd for HostFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for HostFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Resolves `name` (a file named inside an image) against the directory of `image`: absolute names stay as they
/// are, relative ones are relative to the image, never to the working directory.
pub fn resolve_relative_to(image: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        return name.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_path_buf(),
    }
}
