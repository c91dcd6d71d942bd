//! Guest I/O: `impl blk_core::Mapper for Qcow2`, the one translation from guest ranges to where they live,
//! which blk-core's engines serve on both paths (synchronous and asynchronous), and what the format does
//! itself: the slow writes, write-zeroes, discards and compressed writes.
//!
//! | module | what it holds |
//! |---|---|
//! | `lookup` | a guest cluster's validated entry, and the classifier of writes every path decides through |
//! | `mapper` | `impl Mapper`: read and write mappings, allocations of fresh clusters and their link |
//! | `slow_write` | the clusters the mapper answers slow for: copy-on-write allocation, subclusters |
//! | `write_zeroes` | write-zeroes: zero flags in batches per L2 table, zeros through the mapping for the rest |
//! | `write_zeroes_extended` | write-zeroes at subcluster granularity (extended L2 entries) |
//! | `discard` | discards, and freeing what replaced entries referenced |
//! | `compression` | the deflate / zstd codecs, and compressed writes |
//! | `block_status` | `map` runs as `qemu-img map` shows them |
//!
//! # Locking on the I/O path
//!
//! The metadata lock (see `metadata`: a read-write lock, whose shared side serves only the read path's cache
//! hits) and the link signal after it are the crate's locks; on the I/O path:
//!
//! 1. Guest data I/O never happens under the metadata lock: a request is mapped (looked up, or allocated)
//!    under the lock, the lock is dropped, the engine moves the data, and the lock is taken again to link
//!    newly written clusters into their L2 table.
//! 2. A guest cluster being allocated is recorded in the in-flight table; readers see its old contents
//!    (backing file, zeros) until the link, which happens only after the data is written. Another writer of the
//!    same cluster waits on the image's link signal (`LinkSignal`: the lock released) until it is linked.
//! 3. The mapper, used by both engines, takes the lock once per request to map it: a read whose L2 tables are
//!    cached, and a write that only overwrites allocated clusters in place, take only its shared side; one
//!    that must load a table, allocate or change metadata starts over under the exclusive side (lookups, the overlap
//!    guard, the allocation of fresh clusters, which enter the in-flight table under that hold) and once per
//!    allocated run to link it after its data write (`finish_allocation`, which takes the clusters out of
//!    flight and notifies the link signal). It never waits on the link signal: a cluster in
//!    flight is a slow piece, and `write_slow` (on the calling thread, or a queue's worker) waits there
//!    instead. The engines call `finish_allocation` for every allocated piece, or its clusters would block
//!    their writers.
//! 4. A request's allocated pieces come before its first slow piece (fresh clusters after a slow one are slow
//!    too, so the clusters of a request lie on the host in guest order, as QEMU lays them out), so a writer
//!    waiting in `write_slow` holds no cluster in flight: writers cannot wait on each other in a cycle.
//! 5. Other disks (the backing file, the external data file) are never called under the metadata lock
//!    (they have their own locks), with one exception: when clusters are freed or zeroed under the lock, their
//!    range is zeroed in the data file (so a raw data file keeps reading as the guest does). The data file is a
//!    leaf (it never calls back into this image), so this adds the order "metadata lock, then the data
//!    file's own locks" and no cycle.
//!
//! # Write ordering
//!
//! Data is written before the L2 entry pointing to it; refcount increments reach the disk before L2 tables
//! (the L2 cache writes the refcount cache back and syncs first); a new L2 table is written and synced before
//! the L1 entry pointing to it; for discards, write-zeroes that unmap and overwritten shared or compressed
//! clusters, the L2 change is written and synced before the refcounts are decremented and the host range
//! punched (discards and write-zeroes batch this per L2 table: one flush, then the decrements and merged
//! punch-holes). A crash leaves at most leaked clusters. With an external data file, `flush` flushes the data
//! file before the metadata. Every path that writes, copies on write, zeroes, discards or frees through an L2
//! entry checks its cluster (compressed data: its byte span) first (see `lookup`), and guest data is never
//! written over metadata (the overlap guard, see `metadata`).

pub(crate) mod block_status;
pub(crate) mod compression;
pub(crate) mod discard;
pub(crate) mod lookup;
pub(crate) mod mapper;
pub(crate) mod slow_write;
pub(crate) mod write_zeroes;
pub(crate) mod write_zeroes_extended;
