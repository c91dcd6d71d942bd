//! A fake cluster-mapped image over a temporary host file, for testing `MappedQueue`: clusters are
//! unallocated, zero, or at a host offset; some clusters ("slow" ones) are read through another disk (a
//! `DiskFile` reading the same image its own way) and written as `WriteMapping::Slow` pieces; writes into
//! unallocated clusters are `Allocated` pieces (fresh host clusters from a bump allocator, never reused, so
//! they read as zeros), linked in `finish_allocation`, which counts how often each link is finished.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use blk_core::{
    check_range, AllocationLink, DiskFile, DiskTopology, Error, ErrorKind, HostFile, IoBuf,
    IoBufMut, Mapper, ReadMapping, Result, WriteMapping,
};

pub const CLUSTER: u64 = 4096;
pub const CLUSTERS: u64 = 32;
pub const SIZE: u64 = CLUSTER * CLUSTERS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unallocated,
    Zero,
    Host(u64),
    Pending(u64),
}

#[derive(Debug)]
struct Meta {
    map: Vec<State>,
    next_host: u64,
    issued: HashMap<(u64, u64), u32>,
    finished: HashMap<(u64, u64), u32>,
}

#[derive(Debug)]
pub struct Shared {
    meta: Mutex<Meta>,
    /// Cluster `i` is slow when `i % 5 == 2` (if enabled).
    slow_clusters: bool,
    read_only: bool,
    pub fail_finish: AtomicBool,
    pub flushes: AtomicU32,
}

#[derive(Debug)]
pub struct FakeDisk {
    file: HostFile,
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub struct FakeMapper {
    pub disk: FakeDisk,
}

pub struct FakeOptions {
    pub slow_clusters: bool,
    pub read_only: bool,
    pub host_shift: u64,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            slow_clusters: true,
            read_only: false,
            host_shift: 0,
        }
    }
}

impl FakeMapper {
    pub fn new(file: HostFile, options: FakeOptions) -> FakeMapper {
        FakeMapper {
            disk: FakeDisk {
                file,
                shared: Arc::new(Shared {
                    meta: Mutex::new(Meta {
                        map: vec![State::Unallocated; CLUSTERS as usize],
                        next_host: options.host_shift,
                        issued: HashMap::new(),
                        finished: HashMap::new(),
                    }),
                    slow_clusters: options.slow_clusters,
                    read_only: options.read_only,
                    fail_finish: AtomicBool::new(false),
                    flushes: AtomicU32::new(0),
                }),
            },
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.disk.shared
    }

    /// The image read and written through the fake's own byte-level code (what slow pieces use).
    pub fn fake_disk(&self) -> &dyn DiskFile {
        &self.disk
    }
}

impl Shared {
    /// Every link issued was finished exactly once, and nothing is pending.
    pub fn check_links(&self) {
        let meta = self.meta.lock().unwrap();
        assert_eq!(meta.issued, meta.finished, "links finished != links issued");
        assert!(
            meta.finished.values().all(|&n| n == 1),
            "{:?}",
            meta.finished
        );
        assert!(!meta.map.iter().any(|s| matches!(s, State::Pending(_))));
    }

    pub fn links_issued(&self) -> usize {
        self.meta.lock().unwrap().issued.len()
    }

    fn slow(&self, cluster: u64) -> bool {
        self.slow_clusters && cluster % 5 == 2
    }
}

/// (cluster index, offset in cluster, length) of each cluster piece of a range.
fn clusters(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let i = pos / CLUSTER;
        let in_off = pos % CLUSTER;
        let n = (CLUSTER - in_off).min(end - pos);
        pos += n;
        Some((i, in_off, n))
    })
}

impl Mapper for FakeMapper {
    fn format_name(&self) -> &'static str {
        "fake"
    }

    fn logical_size(&self) -> u64 {
        SIZE
    }

    fn host_files(&self) -> &[HostFile] {
        std::slice::from_ref(&self.disk.file)
    }

    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        Ok(Arc::new(FakeMapper {
            disk: FakeDisk {
                file: self.disk.file.try_clone()?,
                shared: self.disk.shared.clone(),
            },
        }))
    }

    fn is_read_only(&self) -> bool {
        self.disk.shared.read_only
    }

    fn disk(&self, index: usize) -> Option<&dyn DiskFile> {
        (index == 0).then_some(&self.disk as &dyn DiskFile)
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        let shared = &self.disk.shared;
        let meta = shared.meta.lock().unwrap();
        for (i, in_off, n) in clusters(offset, len) {
            if shared.slow(i) {
                out.push(ReadMapping::Disk {
                    disk: 0,
                    offset: i * CLUSTER + in_off,
                    len: n,
                });
                continue;
            }
            out.push(match meta.map[i as usize] {
                State::Unallocated | State::Zero => ReadMapping::Zero { len: n },
                State::Host(h) => ReadMapping::Host {
                    file: 0,
                    offset: h + in_off,
                    len: n,
                },
                State::Pending(_) => {
                    return Err(Error::new(
                        ErrorKind::CorruptImage,
                        "read of a pending cluster",
                    ))
                }
            });
        }
        Ok(())
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        let shared = &self.disk.shared;
        let mut meta = shared.meta.lock().unwrap();
        let start = out.len();
        for (i, in_off, n) in clusters(offset, len) {
            if shared.slow(i) {
                out.push(WriteMapping::Slow { len: n });
                continue;
            }
            let piece = match meta.map[i as usize] {
                State::Host(h) => WriteMapping::Host {
                    file: 0,
                    offset: h + in_off,
                    len: n,
                },
                State::Unallocated | State::Zero => {
                    let h = meta.next_host;
                    meta.next_host += CLUSTER;
                    meta.map[i as usize] = State::Pending(h);
                    *meta.issued.entry((i, h)).or_default() += 1;
                    WriteMapping::Allocated {
                        file: 0,
                        offset: h + in_off,
                        len: n,
                        link: AllocationLink {
                            guest: i,
                            host: h,
                            count: 1,
                        },
                    }
                }
                State::Pending(_) => {
                    // Nothing may stay allocated for a failed mapping: give back what this request took.
                    for piece in out.drain(start..) {
                        if let WriteMapping::Allocated { link, .. } = piece {
                            meta.map[link.guest as usize] = State::Unallocated;
                            *meta.finished.entry((link.guest, link.host)).or_default() += 1;
                        }
                    }
                    return Err(Error::new(
                        ErrorKind::CorruptImage,
                        "write to a pending cluster",
                    ));
                }
            };
            out.push(piece);
        }
        Ok(())
    }

    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let shared = &self.disk.shared;
        let mut meta = shared.meta.lock().unwrap();
        *meta.finished.entry((link.guest, link.host)).or_default() += 1;
        let fail = shared.fail_finish.load(Ordering::SeqCst);
        meta.map[link.guest as usize] = if written.is_ok() && !fail {
            State::Host(link.host)
        } else {
            State::Unallocated
        };
        written?;
        if fail {
            return Err(Error::new(ErrorKind::NoSpace, "injected link failure"));
        }
        Ok(())
    }

    fn write_slow(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.disk.write_at(offset, bufs)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
        self.disk.zero(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.disk.zero(offset, len)
    }

    fn flush(&self) -> Result<()> {
        self.disk.flush()
    }
}

impl FakeDisk {
    fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let meta = self.shared.meta.lock().unwrap();
        let mut pos = 0usize;
        for (i, in_off, n) in clusters(offset, out.len() as u64) {
            let piece = &mut out[pos..pos + n as usize];
            match meta.map[i as usize] {
                State::Host(h) => {
                    let got = self.file.read_at(h + in_off, piece)?;
                    piece[got..].fill(0);
                }
                _ => piece.fill(0),
            }
            pos += n as usize;
        }
        Ok(())
    }

    fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut meta = self.shared.meta.lock().unwrap();
        let mut pos = 0usize;
        for (i, in_off, n) in clusters(offset, data.len() as u64) {
            let h = match meta.map[i as usize] {
                State::Host(h) => h,
                State::Pending(_) => {
                    return Err(Error::new(
                        ErrorKind::CorruptImage,
                        "sync write to a pending cluster",
                    ))
                }
                State::Unallocated | State::Zero => {
                    let h = meta.next_host;
                    meta.next_host += CLUSTER;
                    meta.map[i as usize] = State::Host(h);
                    h
                }
            };
            self.file
                .write_all_at(h + in_off, &data[pos..pos + n as usize])?;
            pos += n as usize;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        check_range(offset, len, SIZE)?;
        for (i, in_off, n) in clusters(offset, len) {
            if n == CLUSTER {
                self.shared.meta.lock().unwrap().map[i as usize] = State::Zero;
            } else {
                let allocated = matches!(
                    self.shared.meta.lock().unwrap().map[i as usize],
                    State::Host(_)
                );
                if allocated {
                    self.write_bytes(i * CLUSTER + in_off, &vec![0; n as usize])?;
                }
            }
        }
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        if self.shared.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, "read-only"));
        }
        Ok(())
    }
}

impl DiskFile for FakeDisk {
    fn logical_size(&self) -> u64 {
        SIZE
    }
    fn physical_size(&self) -> Result<u64> {
        self.file.allocated_size()
    }
    fn topology(&self) -> DiskTopology {
        DiskTopology::default()
    }
    fn is_read_only(&self) -> bool {
        self.shared.read_only
    }
    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(FakeDisk {
            file: self.file.try_clone()?,
            shared: self.shared.clone(),
        }))
    }
    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, len as u64, SIZE)?;
        let mut data = vec![0u8; len];
        self.read_bytes(offset, &mut data)?;
        let mut pos = 0;
        for b in bufs {
            pos += b.copy_from(&data[pos..]);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.writable()?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, len as u64, SIZE)?;
        let mut data = vec![0u8; len];
        let mut pos = 0;
        for b in bufs {
            pos += b.copy_to(&mut data[pos..]);
        }
        self.write_bytes(offset, &data)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
        self.zero(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len)
    }
    fn flush(&self) -> Result<()> {
        self.shared.flushes.fetch_add(1, Ordering::SeqCst);
        self.file.sync_data()
    }
}
