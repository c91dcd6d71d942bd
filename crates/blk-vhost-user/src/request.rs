//! The virtio-blk request parser: a descriptor chain (as [`Segment`]s) and guest memory in, a checked
//! [`BlkRequest`] or a [`Rejection`] out.
//!
//! Everything here treats the chain as hostile. A request is accepted only when its header is 16 device-readable
//! bytes at the start of the chain, its status byte is the last byte of the chain and device-writable, every data
//! byte between them lies in guest memory and moves in the direction the request type needs, the chain has at
//! most [`Limits::max_segments`] descriptors and [`Limits::max_data_bytes`] data bytes, and the guest range lies
//! inside the disk, aligned to the logical block size. Anything else is a [`Rejection`]: with the status byte's
//! address when one could be found (the caller writes the status there), without when the chain has no usable
//! status byte (the caller then only returns the chain as used, with length 0).
//!
//! The parser is a pure function of its inputs, allocates nothing (the data segments go into a caller's buffer
//! whose capacity it never grows past the limits), and is the target of the `vhost_user_blk_request` fuzz
//! target.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};

/// `VIRTIO_BLK_T_IN`: read from the disk into guest memory.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write guest memory to the disk.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: the disk's serial, up to 20 bytes.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status `VIRTIO_BLK_S_OK`.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status `VIRTIO_BLK_S_IOERR`.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status `VIRTIO_BLK_S_UNSUPP`.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The size of a request header (`struct virtio_blk_outhdr`: type, ioprio, sector).
pub const HEADER_LEN: usize = 16;
/// The size of one discard or write-zeroes range (`struct virtio_blk_discard_write_zeroes`).
pub const RANGE_LEN: u64 = 16;
/// The length of a `GET_ID` answer.
pub const ID_LEN: usize = 20;
/// virtio-blk's sector: every `sector` field counts 512-byte units.
pub const SECTOR_SIZE: u64 = 512;
/// The write-zeroes range flag asking that the range be deallocated.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// One descriptor of a chain: a guest-physical range and whether the device writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Set for device-writable descriptors (`VRING_DESC_F_WRITE`).
    pub device_writes: bool,
}

/// The bounds a request must stay within (advertised to the driver in the config space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The disk's size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// The logical block size: reads and writes start and end on its multiples.
    pub logical_block_size: u32,
    /// Most descriptors in one chain, header and status included.
    pub max_segments: usize,
    /// Most data bytes of one read or write.
    pub max_data_bytes: u64,
    /// Most ranges in one discard or write-zeroes request.
    pub max_ranges: u32,
    /// Most sectors in one discard or write-zeroes range.
    pub max_range_sectors: u32,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Discard is offered.
    pub discard: bool,
    /// Write-zeroes is offered.
    pub write_zeroes: bool,
}

/// What a parsed request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes at guest byte offset `offset` into the data segments.
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write the data segments' `len` bytes at byte offset `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the serial into the data segments (`len` bytes of room).
    GetId {
        /// Room in bytes.
        len: u64,
    },
    /// Discard the `count` ranges the data segments hold.
    Discard {
        /// Number of 16-byte ranges.
        count: u32,
    },
    /// Zero the `count` ranges the data segments hold.
    WriteZeroes {
        /// Number of 16-byte ranges.
        count: u32,
    },
}

/// A request that passed every check: what to do, where its data is, where its status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRequest {
    /// The operation.
    pub kind: RequestKind,
    /// The guest address of the status byte.
    pub status_addr: GuestAddress,
}

/// A request the device answers without touching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Where to write `status`; `None` when the chain has no writable status byte in guest memory.
    pub status_addr: Option<GuestAddress>,
    /// `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.
    pub status: u8,
    /// Why, for the log.
    pub reason: &'static str,
}

/// One discard or write-zeroes range, checked against the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroRange {
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// For write-zeroes: the range may be deallocated.
    pub unmap: bool,
}

fn reject(status_addr: Option<GuestAddress>, status: u8, reason: &'static str) -> Rejection {
    Rejection {
        status_addr,
        status,
        reason,
    }
}

/// Parses `chain` against `mem` and `limits`; the data segments (header and status byte cut off) go into
/// `data`, which is cleared first and never grows past `limits.max_segments` entries.
pub fn parse_request<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    chain: &[Segment],
    limits: &Limits,
    data: &mut Vec<Segment>,
) -> Result<BlkRequest, Rejection> {
    data.clear();
    // The status byte: the last byte of the last descriptor, which the device must be allowed to write.
    let status_addr = match chain.last() {
        Some(last) if last.device_writes && last.len > 0 => last
            .addr
            .checked_add(u64::from(last.len) - 1)
            .map(GuestAddress)
            .filter(|a| mem.address_in_range(*a)),
        _ => None,
    };
    let Some(status_addr) = status_addr else {
        return Err(reject(None, VIRTIO_BLK_S_IOERR, "no writable status byte"));
    };
    let fail = |reason| reject(Some(status_addr), VIRTIO_BLK_S_IOERR, reason);
    if chain.len() > limits.max_segments {
        return Err(fail("descriptor chain too long"));
    }

    // The header: the first 16 bytes, device-readable, possibly spread over several descriptors.
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0usize;
    let mut index = 0usize;
    let mut skip_in_first_data = 0u32;
    while have < HEADER_LEN {
        let Some(seg) = chain.get(index) else {
            return Err(fail("chain shorter than a request header"));
        };
        if seg.device_writes {
            return Err(fail("request header in a device-writable descriptor"));
        }
        let take = (HEADER_LEN - have).min(seg.len as usize);
        let whole = have == 0 && take == HEADER_LEN;
        if whole {
            // The usual case: the whole header in one descriptor, read with one load.
            match read_header(mem, GuestAddress(seg.addr)) {
                Some(raw) => header = raw,
                None => return Err(fail("request header outside guest memory")),
            }
        } else if mem
            .read_slice(&mut header[have..have + take], GuestAddress(seg.addr))
            .is_err()
        {
            return Err(fail("request header outside guest memory"));
        }
        have += take;
        if take < seg.len as usize {
            // `take` < 16 fits in u32.
            skip_in_first_data = take as u32;
        } else {
            index += 1;
        }
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);

    // The data: everything after the header and before the status byte.
    let last = chain.len() - 1;
    let mut data_len = 0u64;
    let mut readable = false;
    let mut writable = false;
    for (i, seg) in chain.iter().enumerate().skip(index) {
        let mut seg = *seg;
        if i == index && skip_in_first_data > 0 {
            seg.addr = seg.addr.wrapping_add(u64::from(skip_in_first_data));
            seg.len -= skip_in_first_data;
        }
        if i == last {
            // The status byte is not data (checked above: len >= 1).
            seg.len -= 1;
        }
        if seg.len == 0 {
            continue;
        }
        if seg.addr.checked_add(u64::from(seg.len)).is_none() || !in_memory(mem, seg) {
            return Err(fail("data descriptor outside guest memory"));
        }
        readable |= !seg.device_writes;
        writable |= seg.device_writes;
        data_len += u64::from(seg.len);
        if data_len > limits.max_data_bytes {
            return Err(fail("request larger than the device's maximum"));
        }
        data.push(seg);
    }

    let lbs = u64::from(limits.logical_block_size.max(SECTOR_SIZE as u32));
    let capacity = limits.capacity_sectors.saturating_mul(SECTOR_SIZE);
    let check_rw = |len: u64| -> Result<u64, Rejection> {
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| fail("sector past the end of the disk"))?;
        if offset % lbs != 0 || len % lbs != 0 {
            return Err(fail("request not aligned to the logical block size"));
        }
        match offset.checked_add(len) {
            Some(end) if end <= capacity => Ok(offset),
            _ => Err(fail("request past the end of the disk")),
        }
    };
    let kind = match request_type {
        VIRTIO_BLK_T_IN => {
            if readable {
                return Err(fail("read request with device-readable data"));
            }
            RequestKind::Read {
                offset: check_rw(data_len)?,
                len: data_len,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if writable {
                return Err(fail("write request with device-writable data"));
            }
            if limits.read_only {
                return Err(fail("write to a read-only disk"));
            }
            RequestKind::Write {
                offset: check_rw(data_len)?,
                len: data_len,
            }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if readable {
                return Err(fail("GET_ID with device-readable data"));
            }
            RequestKind::GetId { len: data_len }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let offered = if request_type == VIRTIO_BLK_T_DISCARD {
                limits.discard
            } else {
                limits.write_zeroes
            };
            if !offered {
                return Err(reject(
                    Some(status_addr),
                    VIRTIO_BLK_S_UNSUPP,
                    "discard or write-zeroes not offered",
                ));
            }
            if limits.read_only {
                return Err(fail("discard or write-zeroes on a read-only disk"));
            }
            if writable {
                return Err(fail("discard or write-zeroes with device-writable data"));
            }
            if data_len == 0 || data_len % RANGE_LEN != 0 {
                return Err(fail("discard or write-zeroes data not whole ranges"));
            }
            let count = data_len / RANGE_LEN;
            if count > u64::from(limits.max_ranges) {
                return Err(fail("too many discard or write-zeroes ranges"));
            }
            // count <= max_ranges, a u32.
            let count = count as u32;
            if request_type == VIRTIO_BLK_T_DISCARD {
                RequestKind::Discard { count }
            } else {
                RequestKind::WriteZeroes { count }
            }
        }
        _ => {
            return Err(reject(
                Some(status_addr),
                VIRTIO_BLK_S_UNSUPP,
                "unknown request type",
            ))
        }
    };
    Ok(BlkRequest { kind, status_addr })
}

/// Reads range `index` of a discard or write-zeroes request from its data segments and checks it against
/// `limits`: inside the disk, at most `max_range_sectors` long, flags the request type allows (`unmap` only, and
/// only for write-zeroes).
pub fn parse_range<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    data: &[Segment],
    index: u32,
    write_zeroes: bool,
    limits: &Limits,
) -> Result<ZeroRange, u8> {
    let mut raw = [0u8; RANGE_LEN as usize];
    read_data(mem, data, u64::from(index) * RANGE_LEN, &mut raw).map_err(|_| VIRTIO_BLK_S_IOERR)?;
    let sector = u64::from_le_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    let allowed = if write_zeroes {
        WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(VIRTIO_BLK_S_UNSUPP);
    }
    if sectors > limits.max_range_sectors {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(VIRTIO_BLK_S_IOERR)?;
    let len = u64::from(sectors) * SECTOR_SIZE;
    match offset.checked_add(len) {
        Some(end) if end <= limits.capacity_sectors.saturating_mul(SECTOR_SIZE) => Ok(ZeroRange {
            offset,
            len,
            unmap: flags & WRITE_ZEROES_FLAG_UNMAP != 0,
        }),
        _ => Err(VIRTIO_BLK_S_IOERR),
    }
}

/// Reads the 16-byte header at `addr`: one load when it lies in one region, a byte copy otherwise.
fn read_header<M: GuestMemoryBackend + ?Sized>(mem: &M, addr: GuestAddress) -> Option<[u8; 16]> {
    match mem.get_slice(addr, HEADER_LEN) {
        Ok(slice) => slice.get_ref::<[u8; HEADER_LEN]>(0).ok().map(|r| r.load()),
        Err(_) => mem.read_obj::<[u8; HEADER_LEN]>(addr).ok(),
    }
}

/// Whether all of `seg` lies in guest memory: one region lookup when it lies in one region.
fn in_memory<M: GuestMemoryBackend + ?Sized>(mem: &M, seg: Segment) -> bool {
    let addr = GuestAddress(seg.addr);
    let len = seg.len as usize;
    mem.get_slice(addr, len).is_ok() || mem.check_range(addr, len)
}

/// Writes a request's status byte at `addr` (marking its page in the dirty log); returns whether `addr` is in
/// guest memory.
pub fn write_status<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    status: u8,
) -> bool {
    match mem.get_slice(addr, 1) {
        Ok(slice) => slice.get_ref::<u8>(0).map(|r| r.store(status)).is_ok(),
        Err(_) => false,
    }
}

/// Copies `buf.len()` bytes starting `skip` bytes into the data segments out of guest memory.
pub fn read_data<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    data: &[Segment],
    mut skip: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for seg in data {
        if done == buf.len() {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // skip < len <= u32::MAX.
        let avail = (len - skip) as usize;
        let take = avail.min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + take], GuestAddress(seg.addr + skip))?;
        done += take;
        skip = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: buf.len(),
            completed: done,
        })
    }
}

/// Copies `buf` into the data segments, starting `skip` bytes in (stopping where the segments end).
pub fn write_data<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    data: &[Segment],
    mut skip: u64,
    buf: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for seg in data {
        if done == buf.len() {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let avail = (len - skip) as usize;
        let take = avail.min(buf.len() - done);
        mem.write_slice(&buf[done..done + take], GuestAddress(seg.addr + skip))?;
        done += take;
        skip = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            capacity_sectors: 2048,
            logical_block_size: 512,
            max_segments: 8,
            max_data_bytes: 64 << 10,
            max_ranges: 4,
            max_range_sectors: 2048,
            read_only: false,
            discard: true,
            write_zeroes: true,
        }
    }

    fn header(mem: &GuestMemoryMmap<()>, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    fn seg(addr: u64, len: u32, device_writes: bool) -> Segment {
        Segment {
            addr,
            len,
            device_writes,
        }
    }

    #[test]
    fn read_request_parses() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 8);
        let mut data = Vec::new();
        let chain = [
            seg(0x1000, 16, false),
            seg(0x2000, 4096, true),
            seg(0x3000, 1, true),
        ];
        let r = parse_request(&m, &chain, &limits(), &mut data).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Read {
                offset: 4096,
                len: 4096
            }
        );
        assert_eq!(r.status_addr, GuestAddress(0x3000));
        assert_eq!(data, [seg(0x2000, 4096, true)]);
    }

    #[test]
    fn header_and_data_in_one_descriptor() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let mut data = Vec::new();
        let chain = [seg(0x1000, 16 + 512, false), seg(0x3000, 1, true)];
        let r = parse_request(&m, &chain, &limits(), &mut data).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Write {
                offset: 0,
                len: 512
            }
        );
        assert_eq!(data, [seg(0x1010, 512, false)]);
    }

    #[test]
    fn hostile_chains_are_rejected() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let l = limits();
        let mut data = Vec::new();
        let status = Some(GuestAddress(0x3000));
        let cases: Vec<(Vec<Segment>, Option<GuestAddress>, u8)> = vec![
            // No status byte at all.
            (vec![seg(0x1000, 16, false)], None, VIRTIO_BLK_S_IOERR),
            // Status outside guest memory.
            (
                vec![seg(0x1000, 16, false), seg(1 << 30, 1, true)],
                None,
                VIRTIO_BLK_S_IOERR,
            ),
            // Data outside guest memory.
            (
                vec![
                    seg(0x1000, 16, false),
                    seg((1 << 20) - 512, 1024, true),
                    seg(0x3000, 1, true),
                ],
                status,
                VIRTIO_BLK_S_IOERR,
            ),
            // Wrong direction for a read.
            (
                vec![
                    seg(0x1000, 16, false),
                    seg(0x2000, 512, false),
                    seg(0x3000, 1, true),
                ],
                status,
                VIRTIO_BLK_S_IOERR,
            ),
            // Header device-writable.
            (
                vec![seg(0x1000, 16, true), seg(0x3000, 1, true)],
                status,
                VIRTIO_BLK_S_IOERR,
            ),
            // Too long.
            (
                std::iter::once(seg(0x1000, 16, false))
                    .chain((0..9).map(|i| seg(0x4000 + i * 512, 512, true)))
                    .chain(std::iter::once(seg(0x3000, 1, true)))
                    .collect(),
                status,
                VIRTIO_BLK_S_IOERR,
            ),
            // Past the disk's end (capacity 1 MiB, 64 KiB read at the last sector).
            (
                vec![
                    seg(0x1000, 16, false),
                    seg(0x10000, 1024, true),
                    seg(0x3000, 1, true),
                ],
                status,
                VIRTIO_BLK_S_IOERR,
            ),
        ];
        for (i, (chain, addr, st)) in cases.iter().enumerate() {
            if i == 6 {
                header(&m, 0x1000, VIRTIO_BLK_T_IN, 2047);
            }
            let e = parse_request(&m, chain, &l, &mut data).unwrap_err();
            assert_eq!((e.status_addr, e.status), (*addr, *st), "case {i}: {e:?}");
        }
        header(&m, 0x1000, 77, 0);
        let e = parse_request(
            &m,
            &[seg(0x1000, 16, false), seg(0x3000, 1, true)],
            &l,
            &mut data,
        )
        .unwrap_err();
        assert_eq!(e.status, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn ranges_are_checked() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let mut r = [0u8; 32];
        r[0..8].copy_from_slice(&8u64.to_le_bytes());
        r[8..12].copy_from_slice(&16u32.to_le_bytes());
        r[12..16].copy_from_slice(&1u32.to_le_bytes());
        r[16..24].copy_from_slice(&2040u64.to_le_bytes());
        r[24..28].copy_from_slice(&16u32.to_le_bytes());
        m.write_slice(&r, GuestAddress(0x2000)).unwrap();
        let mut data = Vec::new();
        let chain = [
            seg(0x1000, 16, false),
            seg(0x2000, 32, false),
            seg(0x3000, 1, true),
        ];
        let req = parse_request(&m, &chain, &limits(), &mut data).unwrap();
        assert_eq!(req.kind, RequestKind::WriteZeroes { count: 2 });
        assert_eq!(
            parse_range(&m, &data, 0, true, &limits()),
            Ok(ZeroRange {
                offset: 4096,
                len: 8192,
                unmap: true
            })
        );
        assert_eq!(
            parse_range(&m, &data, 1, true, &limits()),
            Err(VIRTIO_BLK_S_IOERR)
        );
        assert_eq!(
            parse_range(&m, &data, 0, false, &limits()),
            Err(VIRTIO_BLK_S_UNSUPP)
        );
    }
}
