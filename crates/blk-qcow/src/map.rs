//! `map`: the first run of equal status at an offset, as `qemu-img map` reports it (depth, zero, data,
//! compressed, host offset), looking through the backing file for unallocated clusters.

use blk_core::{check_range, Extent, ExtentKind, Result};

use crate::qcow2::Qcow2;
use crate::subclusters::Subcluster;

/// At most this many clusters (subclusters with extended L2 entries) are examined per call (the caller merges adjacent equal runs).
const MAX_CLUSTERS_PER_CALL: u64 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Data(u64),
    Compressed,
    Zero(Option<u64>),
    /// Not allocated here; the host offset when the cluster is (other subclusters hold data).
    Unallocated(Option<u64>),
}

impl Qcow2 {
    pub(crate) fn map_impl(&self, offset: u64, len: u64) -> Result<Extent> {
        let size = self.shared.geometry.size;
        check_range(offset, len, size)?;
        // The unit of status: the subcluster (the cluster without extended L2 entries).
        let cs = self.shared.geometry.subcluster_size();
        let end = offset + len;
        let mut meta = self.lock_metadata();
        let cluster_size = self.shared.geometry.cluster_size;
        let status_at = |meta: &mut crate::metadata::Metadata, pos: u64| -> Result<Status> {
            let at = |host: u64| host + pos % cluster_size;
            Ok(match self.subcluster_at(meta, pos)? {
                Subcluster::Data { host } => Status::Data(at(host)),
                Subcluster::Compressed { .. } => Status::Compressed,
                Subcluster::Zero { host } => Status::Zero(host.map(at)),
                Subcluster::Unallocated { host } => Status::Unallocated(host.map(at)),
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
                (Status::Unallocated(Some(h0)), Status::Unallocated(Some(h))) => {
                    h == h0 + (pos - offset)
                }
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
            Status::Unallocated(h) => match &self.shared.backing {
                None => extent(ExtentKind::Unallocated, h, false),
                // Past the end of a shorter backing file: qemu reports this layer, not present.
                Some(b) if offset >= b.size => extent(ExtentKind::Unallocated, h, false),
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
