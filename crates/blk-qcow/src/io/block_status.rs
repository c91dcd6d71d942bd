//! [`Mapper::block_status`](blk_core::Mapper::block_status): the first run of equal status at an offset, as
//! `qemu-img map` reports it (depth, zero, data, compressed, host offset), from the same lookup as the mapper
//! (`lookup`), looking through the backing file for unallocated clusters.

use blk_core::{check_range, Extent, ExtentKind, Result};

use crate::image::Qcow2;
use crate::metadata::subclusters::Subcluster;

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
    /// The first run of equal status from `offset` (at most `len` bytes, and at most `MAX_CLUSTERS_PER_CALL`
    /// units).
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
        let mut found = match first {
            Status::Data(h)
                if !self.shared.geometry.data_file && self.metadata_preallocated()? =>
            {
                // As qemu-img on an image that looks metadata-preallocated: it asks the host file, so a hole
                // under allocated clusters (never written) is allocated zeros, and a data run ends where the
                // host file's allocation changes.
                let (kind, run) = self.host_allocation(h, length);
                Extent {
                    length: run,
                    ..extent(kind, Some(h), false)
                }
            }
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
        };
        // As QEMU: no host offsets of an encrypted image (its host bytes are not the guest's).
        if self.shared.encryption.is_some() && found.depth == 0 {
            found.host_offset = None;
        }
        Ok(found)
    }

    /// As QEMU's `qcow2_detect_metadata_preallocation`, decided once per open: whether clearly more clusters
    /// have a refcount than the host file has bytes allocated (more than `max(n * 10 / 9, n + 2)` for `n`
    /// allocated clusters). Only then does QEMU's block status look at the host file's holes, and so does
    /// `map`.
    fn metadata_preallocated(&self) -> Result<bool> {
        if let Some(&known) = self.shared.metadata_preallocated.get() {
            return Ok(known);
        }
        let file = &self.shared.file;
        let cluster_size = self.shared.geometry.cluster_size;
        let real_clusters = file.allocated_size()? / cluster_size;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let end = file.len()?.div_ceil(cluster_size);
        let mut referenced = 0u64;
        {
            let mut meta = self.lock_metadata();
            let mut cluster = 0;
            while cluster < end && referenced <= threshold {
                if meta.refcount(file, cluster)? != 0 {
                    referenced += 1;
                }
                cluster += 1;
            }
        }
        let preallocated = referenced > threshold;
        Ok(*self
            .shared
            .metadata_preallocated
            .get_or_init(|| preallocated))
    }

    /// Whether `len` host bytes at `host` start with data or a hole in the image file, and how far that lasts.
    /// If the host cannot tell (no `SEEK_DATA`), everything is data.
    fn host_allocation(&self, host: u64, len: u64) -> (ExtentKind, u64) {
        let file = self.host_file();
        match file.next_data(host) {
            Ok(Some(d)) if d == host => {
                let run = match file.next_hole(host) {
                    Ok(Some(h)) if h > host => (h - host).min(len),
                    _ => len,
                };
                (ExtentKind::Data, run)
            }
            Ok(Some(d)) if d > host => (ExtentKind::AllocatedZero, (d - host).min(len)),
            Ok(None) => (ExtentKind::AllocatedZero, len),
            _ => (ExtentKind::Data, len),
        }
    }
}
