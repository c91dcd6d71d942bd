//! `map`: the first run of equal status at an offset, as `qemu-img map` reports it (depth, zero, data,
//! compressed, host offset), looking through the backing file for unallocated clusters.

use blk_core::{check_range, Extent, ExtentKind, Result};

use crate::qcow2::Qcow2;
use crate::tables::L2Entry;

/// At most this many clusters are examined per call (the caller merges adjacent equal runs).
const MAX_CLUSTERS_PER_CALL: u64 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Data(u64),
    Compressed,
    Zero(Option<u64>),
    Unallocated,
}

impl Qcow2 {
    pub(crate) fn map_impl(&self, offset: u64, len: u64) -> Result<Extent> {
        let size = self.shared.geometry.size;
        check_range(offset, len, size)?;
        let cs = self.shared.geometry.cluster_size;
        let end = offset + len;
        let mut meta = self.lock_metadata();
        let file = &self.shared.file;
        let status_at = |meta: &mut crate::metadata::Metadata, pos: u64| -> Result<Status> {
            let raw = meta.l2_entry(file, pos / cs)?;
            Ok(match L2Entry::decode(raw, &self.shared.geometry) {
                L2Entry::Data { host, .. } => Status::Data(host + pos % cs),
                L2Entry::Compressed { .. } => Status::Compressed,
                L2Entry::Zero { host, .. } => Status::Zero(host.map(|h| h + pos % cs)),
                L2Entry::Unallocated => Status::Unallocated,
            })
        };
        let first = status_at(&mut meta, offset)?;
        let mut pos = (offset / cs + 1) * cs;
        let mut clusters = 1;
        while pos < end && clusters < MAX_CLUSTERS_PER_CALL {
            let s = status_at(&mut meta, pos)?;
            let continues = match (first, s) {
                (Status::Data(h0), Status::Data(h)) => h == h0 + (pos - offset),
                (Status::Zero(Some(h0)), Status::Zero(Some(h))) => h == h0 + (pos - offset),
                (a, b) => a == b,
            };
            if !continues {
                break;
            }
            pos += cs;
            clusters += 1;
        }
        drop(meta);
        let length = pos.min(end) - offset;
        let extent = |kind, host_offset, compressed| Extent {
            offset,
            length,
            kind,
            depth: 0,
            host_offset,
            compressed,
        };
        Ok(match first {
            Status::Data(h) => extent(ExtentKind::Data, Some(h), false),
            Status::Compressed => extent(ExtentKind::Data, None, true),
            Status::Zero(h) => extent(ExtentKind::Zero, h, false),
            Status::Unallocated => match &self.shared.backing {
                None => extent(ExtentKind::Unallocated, None, false),
                // Past the end of a shorter backing file: qemu reports this layer, not present.
                Some(b) if offset >= b.size => extent(ExtentKind::Unallocated, None, false),
                Some(b) => {
                    let inside = length.min(b.size - offset);
                    let mut e = b.disk.map(offset, inside)?;
                    e.depth += 1;
                    e.offset = offset;
                    e
                }
            },
        })
    }
}
