//! Cluster allocation (first fit from a free-space hint, reusing freed clusters) and byte allocation for
//! compressed clusters (packed like QEMU's, each host cluster counting one reference per compressed cluster).

use blk_core::{HostFile, Result};

use crate::header::MAX_HOST_OFFSET;
use crate::metadata::{corrupt, Metadata};

impl Metadata {
    /// Whether cluster `c` is being handed out.
    pub(crate) fn is_reserved(&self, c: u64) -> bool {
        self.reserved.iter().any(|&(s, e)| c >= s && c < e)
    }

    /// The first run of `n` free clusters (refcount 0, not reserved, not cluster 0) from the hint. Moves the
    /// hint to the first free cluster seen (everything before it is in use).
    pub(crate) fn find_free_run(&mut self, file: &HostFile, n: u64) -> Result<u64> {
        let limit = MAX_HOST_OFFSET >> self.g.cluster_bits;
        let mut start = self.free_hint.max(1);
        let mut first_free = None;
        let mut c = start;
        while c - start < n {
            if c >= limit {
                return Err(corrupt(
                    "the image would grow past 2^56 bytes",
                    c << self.g.cluster_bits,
                ));
            }
            if self.is_reserved(c) || self.refcount(file, c)? != 0 {
                c += 1;
                start = c;
            } else {
                first_free.get_or_insert(c);
                c += 1;
            }
        }
        self.free_hint = first_free.unwrap_or(start);
        Ok(start)
    }

    /// Allocates `n` contiguous clusters (refcount 1 each, in the cache) and returns the host offset of the
    /// first.
    pub(crate) fn allocate_clusters(&mut self, file: &HostFile, n: u64) -> Result<u64> {
        let start = self.find_free_run(file, n)?;
        self.reserved.push((start, start + n));
        let result = (|| -> Result<()> {
            for c in start..start + n {
                self.set_refcount(file, c, 1)?;
            }
            Ok(())
        })();
        self.reserved.retain(|&r| r != (start, start + n));
        result?;
        if self.free_hint == start {
            self.free_hint = start + n;
        }
        let offset = start << self.g.cluster_bits;
        self.file_end = self.file_end.max((start + n) << self.g.cluster_bits);
        self.guard_metadata_write(file, offset, n << self.g.cluster_bits)?;
        Ok(offset)
    }

    /// Allocates `len` bytes (at most one cluster) for compressed data, packed after the previous compressed
    /// cluster when it fits in the same host cluster. Every host cluster touched gains one reference.
    pub(crate) fn allocate_bytes(&mut self, file: &HostFile, len: u64) -> Result<u64> {
        let cs = self.g.cluster_size;
        let tail = self.compressed_tail;
        if tail != 0 && tail % cs != 0 && tail % cs + len <= cs {
            // Still ours: the tail's cluster is referenced by an earlier compressed cluster.
            let cluster = tail >> self.g.cluster_bits;
            // A full refcount (1-bit refcounts: any second reference) starts a new host cluster, as QEMU's
            // qcow2_alloc_bytes does.
            let refcount = self.refcount(file, cluster)?;
            if refcount > 0 && refcount < self.max_refcount() {
                self.change_refcount(file, cluster, 1)?;
                self.compressed_tail = tail + len;
                return Ok(tail);
            }
        }
        let offset = self.allocate_clusters(file, len.div_ceil(cs))?;
        self.compressed_tail = offset + len;
        Ok(offset)
    }

    /// Checks that the clusters an L2 entry references may be freed or replaced: inside the used part of the
    /// file (`CorruptImage` otherwise) and not over the header, the L1 / refcount tables or a cached table
    /// (which, as a prevented write over metadata, also marks the image corrupt). Called before anything is
    /// changed for the entry, so a hostile entry changes nothing.
    pub(crate) fn check_release(
        &mut self,
        file: &HostFile,
        entry: crate::tables::L2Entry,
    ) -> Result<()> {
        use crate::tables::L2Entry;
        match entry {
            // Clusters of an external data file are not refcounted.
            L2Entry::Data { .. } | L2Entry::Zero { .. } if self.g.data_file => Ok(()),
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => {
                self.check_data_location(host)?;
                self.guard_data_write(file, host, self.g.cluster_size)
            }
            L2Entry::Compressed { host, size } => {
                self.check_compressed_location(host, size)?;
                self.guard_data_write(file, host, size)
            }
            _ => Ok(()),
        }
    }

    /// Frees (decrements) the clusters an L2 entry referenced, after `check_release` (so no refcount block is
    /// ever created past the end of the file and no metadata is punched).
    pub(crate) fn release(&mut self, file: &HostFile, entry: crate::tables::L2Entry) -> Result<()> {
        use crate::tables::L2Entry;
        self.check_release(file, entry)?;
        match entry {
            L2Entry::Data { .. } | L2Entry::Zero { .. } if self.g.data_file => Ok(()),
            L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } => self.change_refcount(file, host >> self.g.cluster_bits, -1),
            L2Entry::Compressed { host, size } => self.change_refcount_range(file, host, size, -1),
            _ => Ok(()),
        }
    }
}
