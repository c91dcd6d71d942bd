//! Any bytes as a virtio-blk descriptor chain and guest memory: the vhost-user-blk request parser must never
//! panic, and a request it accepts must only name guest memory, within the device's limits. The same bytes as
//! a descriptor table: walking a chain in it never panics and always ends.

use blk_vhost_user::chain::walk_chain;
use blk_vhost_user::request::{
    parse_range, parse_request, read_data, write_data, Limits, RequestKind, Segment,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Most descriptors the harness builds (the limit is set below it, so too-long chains are covered too).
const MAX_CHAIN: usize = 12;
/// Bytes per descriptor in the input: address (4), length (4), flags (1).
const DESC_BYTES: usize = 9;

/// Runs the parser on the chain and memory `data` describes.
pub fn vhost_user_blk_request(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(control & 0x0f) % (MAX_CHAIN + 1);
    if rest.len() < count * DESC_BYTES {
        return;
    }
    let (descs, contents) = rest.split_at(count * DESC_BYTES);
    // Two regions with a hole between them, so ranges can cross into nothing.
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x20000), 0x10000),
    ]) else {
        return;
    };
    let fill = contents.len().min(0x10000);
    let _ = mem.write_slice(&contents[..fill], GuestAddress(0));
    // The same bytes as a descriptor table at guest address 0: any chain in it ends, after at most the table's
    // size of direct descriptors and one indirect table's.
    let mut visited = 0usize;
    walk_chain(&mem, GuestAddress(0), 16, u16::from(control) % 16, |_| {
        visited += 1
    });
    assert!(visited <= 16 + usize::from(u16::MAX));
    let chain: Vec<Segment> = descs
        .chunks_exact(DESC_BYTES)
        .map(|d| {
            let raw = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            // Mostly near guest memory; the top bit moves the address far out.
            let addr = if raw & 0x8000_0000 != 0 {
                u64::from(raw) << 32
            } else {
                u64::from(raw & 0x3ffff)
            };
            Segment {
                addr,
                len: u32::from_le_bytes([d[4], d[5], d[6], d[7]]) & 0x1ffff,
                device_writes: d[8] & 1 != 0,
            }
        })
        .collect();
    let limits = Limits {
        capacity_sectors: 2048,
        logical_block_size: if control & 0x10 != 0 { 4096 } else { 512 },
        max_segments: 10,
        max_data_bytes: 64 << 10,
        max_ranges: 4,
        max_range_sectors: 1024,
        read_only: control & 0x20 != 0,
        discard: control & 0x40 != 0,
        write_zeroes: control & 0x80 != 0,
    };
    let mut segments = Vec::with_capacity(limits.max_segments);
    let Ok(request) = parse_request(&mem, &chain, &limits, &mut segments) else {
        return;
    };
    assert!(segments.len() <= limits.max_segments);
    let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    assert!(total <= limits.max_data_bytes);
    for s in &segments {
        assert!(mem.check_range(GuestAddress(s.addr), s.len as usize));
    }
    assert!(mem.address_in_range(request.status_addr));
    match request.kind {
        RequestKind::Read { offset, len } => {
            assert!(offset + len <= limits.capacity_sectors * 512);
            assert!(write_data(&mem, &segments, 0, &vec![0u8; len as usize]).is_ok());
        }
        RequestKind::Write { offset, len } => {
            assert!(!limits.read_only);
            assert!(offset + len <= limits.capacity_sectors * 512);
            assert!(read_data(&mem, &segments, 0, &mut vec![0u8; len as usize]).is_ok());
        }
        RequestKind::Discard { count } | RequestKind::WriteZeroes { count } => {
            assert!(!limits.read_only);
            let zeroes = matches!(request.kind, RequestKind::WriteZeroes { .. });
            for i in 0..count {
                if let Ok(r) = parse_range(&mem, &segments, i, zeroes, &limits) {
                    assert!(r.offset + r.len <= limits.capacity_sectors * 512);
                }
            }
        }
        RequestKind::GetId { len } => {
            let n = len.min(20) as usize;
            assert!(write_data(&mem, &segments, 0, &vec![0u8; n]).is_ok());
        }
        RequestKind::Flush => {}
    }
}
