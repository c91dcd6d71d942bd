//! The in-memory refcount table (QEMU's "IMRT"): how many references the check found to each host cluster.
//!
//! Unlike QEMU's flat array (sized by the file), it is kept in chunks allocated on first use, so a huge sparse
//! file costs nothing, and the memory is capped by [`MAX_COUNTED_CLUSTERS`].

use std::collections::{BTreeMap, HashMap};

/// How far past the end of the file the table may grow (in clusters): only the rebuild of the refcount
/// structure appends clusters there.
pub(super) const MAX_CLUSTERS_PAST_END: u64 = 1 << 24;
/// Clusters covered by allocated chunks at most (2^27 clusters: 256 MiB of counts, 8 TiB of 64 KiB clusters
/// in use); an image referencing more is not checked (a check error).
pub(super) const MAX_COUNTED_CLUSTERS: u64 = 1 << 27;
/// log2 of the clusters per chunk.
const CHUNK_BITS: u32 = 12;
/// Clusters per chunk.
const CHUNK: u64 = 1 << CHUNK_BITS;

/// Expected refcounts, one per host cluster. Counts up to `u16::MAX - 1` live in the chunks, larger ones (only
/// possible with 32/64-bit refcounts) in a side map.
#[derive(Debug, Clone)]
pub(super) struct ExpectedRefcounts {
    chunks: BTreeMap<u64, Box<[u16]>>,
    large: HashMap<u64, u64>,
    len: u64,
    limit: u64,
}

/// The table would grow past its caps.
#[derive(Debug, Clone, Copy)]
pub(super) struct TooLarge {
    /// The cluster that was referenced.
    pub cluster: u64,
}

impl ExpectedRefcounts {
    /// An empty table for a file of `nb_clusters` clusters.
    pub fn new(nb_clusters: u64) -> ExpectedRefcounts {
        ExpectedRefcounts {
            chunks: BTreeMap::new(),
            large: HashMap::new(),
            len: nb_clusters,
            limit: nb_clusters.saturating_add(MAX_CLUSTERS_PAST_END),
        }
    }

    /// Clusters covered (the file's, plus any added past its end).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The expected refcount of `cluster` (0 past the table's end).
    pub fn get(&self, cluster: u64) -> u64 {
        let slot = self
            .chunks
            .get(&(cluster >> CHUNK_BITS))
            .and_then(|chunk| chunk.get((cluster & (CHUNK - 1)) as usize));
        match slot {
            Some(&u16::MAX) => self.large.get(&cluster).copied().unwrap_or(0),
            Some(&count) => u64::from(count),
            None => 0,
        }
    }

    /// Sets the expected refcount of `cluster`, growing the table to cover it.
    pub fn set(&mut self, cluster: u64, value: u64) -> Result<(), TooLarge> {
        self.grow_to(cluster.saturating_add(1))?;
        let key = cluster >> CHUNK_BITS;
        if !self.chunks.contains_key(&key) {
            if value == 0 {
                return Ok(());
            }
            if (self.chunks.len() as u64 + 1) * CHUNK > MAX_COUNTED_CLUSTERS {
                return Err(TooLarge { cluster });
            }
            self.chunks
                .insert(key, vec![0u16; CHUNK as usize].into_boxed_slice());
        }
        let slot = self
            .chunks
            .get_mut(&key)
            .and_then(|chunk| chunk.get_mut((cluster & (CHUNK - 1)) as usize));
        let Some(slot) = slot else {
            return Err(TooLarge { cluster });
        };
        if value >= u64::from(u16::MAX) {
            *slot = u16::MAX;
            self.large.insert(cluster, value);
        } else {
            *slot = value as u16;
            self.large.remove(&cluster);
        }
        Ok(())
    }

    /// Makes the table cover `nb_clusters` clusters (new ones at 0).
    pub fn grow_to(&mut self, nb_clusters: u64) -> Result<(), TooLarge> {
        if nb_clusters > self.len {
            if nb_clusters > self.limit {
                return Err(TooLarge {
                    cluster: nb_clusters - 1,
                });
            }
            self.len = nb_clusters;
        }
        Ok(())
    }

    /// Forgets every count, keeping the size.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.large.clear();
    }

    /// The first cluster at or after `from` (and before the table's end) with a nonzero count.
    pub fn next_used(&self, from: u64) -> Option<u64> {
        for (&key, chunk) in self.chunks.range(from >> CHUNK_BITS..) {
            let base = key << CHUNK_BITS;
            let skip = from.saturating_sub(base) as usize;
            let found = chunk.iter().skip(skip).position(|&c| c != 0);
            if let Some(i) = found {
                let cluster = base + (skip + i) as u64;
                return (cluster < self.len).then_some(cluster);
            }
        }
        None
    }
}
