//! The write half of [`Qcow2Mapper`]: in-place overwrites and whole-cluster allocations mapped under one
//! metadata lock hold, and the link of allocated clusters once their data is written.
//!
//! A write is mapped in two passes under the same hold. The first decides, cluster by cluster, without
//! changing anything: in place (`COPIED` data; the overlap guard as the sync path's), allocate (a whole
//! unallocated or zero cluster without host cluster, no extended L2 entries), or slow (anything else, or a
//! cluster in flight): one slow cluster makes the whole request slow. The second allocates the fresh clusters
//! in runs (one allocation per run inside one L2 table, the L2 table made writable first, as `write_run`
//! does, so the data stays contiguous), marks them in flight and pushes the pieces. Nothing reaches the L2
//! tables before [`AsyncMapper::finish_allocation`](blk_core::AsyncMapper::finish_allocation): readers see
//! the old contents until the data is written, and the link stays in the write-back cache.

use blk_core::{AllocationLink, Error, ErrorKind, Mapped, Result, WriteMapping};

use crate::metadata::Metadata;
use crate::qcow2_async::{Qcow2Mapper, IMAGE_FILE};
use crate::subclusters::Subcluster;
use crate::tables::{L2Entry, COPIED};

/// What the fast path does with one cluster of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WritePlan {
    /// Overwrite in place: the cluster's host offset.
    InPlace(u64),
    /// Allocate a fresh cluster for it.
    Allocate,
    /// Leave the request to the synchronous path.
    Slow,
}

impl Qcow2Mapper {
    /// What to do with `n` bytes at byte `in_off` of guest cluster `gc` (validated as the sync path does).
    fn write_plan(&self, meta: &mut Metadata, gc: u64, in_off: u64, n: u64) -> Result<WritePlan> {
        let image = &self.image;
        let g = &image.shared.geometry;
        if meta.in_flight.contains(&gc) || image.shared.data_file.is_some() {
            return Ok(WritePlan::Slow);
        }
        if g.extended_l2 {
            let (entry, bitmap) = image.lookup_with_bitmap(meta, gc)?;
            let L2Entry::Data { host, copied: true } = entry else {
                return Ok(WritePlan::Slow);
            };
            // In place only where every covered subcluster already holds data (no bitmap change).
            let first = in_off >> g.subcluster_bits;
            let last = (in_off + n - 1) >> g.subcluster_bits;
            let guest = gc << g.cluster_bits;
            for index in first..=last {
                let at = guest + (index << g.subcluster_bits);
                if !matches!(
                    Subcluster::of(entry, bitmap, index, g, at)?,
                    Subcluster::Data { .. }
                ) {
                    return Ok(WritePlan::Slow);
                }
            }
            return Ok(WritePlan::InPlace(host));
        }
        Ok(match image.lookup(meta, gc)? {
            L2Entry::Data { host, copied: true } => WritePlan::InPlace(host),
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
                if in_off == 0 && n == g.cluster_size =>
            {
                WritePlan::Allocate
            }
            _ => WritePlan::Slow,
        })
    }

    /// Maps a write under the metadata lock (see [`AsyncMapper::map_write`](blk_core::AsyncMapper::map_write)).
    pub(crate) fn map_write_locked(
        &self,
        meta: &mut Metadata,
        offset: u64,
        len: u64,
        out: &mut Vec<WriteMapping>,
    ) -> Result<Mapped> {
        let image = &self.image;
        let g = &image.shared.geometry;
        let cs = g.cluster_size;
        let end = offset + len;
        // First pass: decide, change nothing.
        let mut pos = offset;
        while pos < end {
            let (gc, in_off) = (pos >> g.cluster_bits, pos % cs);
            let n = (cs - in_off).min(end - pos);
            match self.write_plan(meta, gc, in_off, n)? {
                WritePlan::InPlace(host) => {
                    meta.guard_data_write(&image.shared.file, host + in_off, n)?
                }
                WritePlan::Allocate => {}
                WritePlan::Slow => return Ok(Mapped::Slow),
            }
            pos += n;
        }
        // Second pass: allocate and push; on failure give back what this request took.
        let start = out.len();
        match self.push_write_pieces(meta, offset, end, start, out) {
            Ok(Mapped::Fast) => Ok(Mapped::Fast),
            other => {
                if let Some(pieces) = out.get(start..) {
                    self.undo_allocations(meta, pieces);
                }
                out.truncate(start);
                other
            }
        }
    }

    /// The second pass of `map_write_locked`: pushes the pieces of `offset..end` onto `out` (this request's
    /// pieces start at index `start`), allocating runs of fresh clusters.
    fn push_write_pieces(
        &self,
        meta: &mut Metadata,
        offset: u64,
        end: u64,
        start: usize,
        out: &mut Vec<WriteMapping>,
    ) -> Result<Mapped> {
        let image = &self.image;
        let g = &image.shared.geometry;
        let cs = g.cluster_size;
        let file = &image.shared.file;
        let mut pos = offset;
        while pos < end {
            let (gc, in_off) = (pos >> g.cluster_bits, pos % cs);
            let n = (cs - in_off).min(end - pos);
            match self.write_plan(meta, gc, in_off, n)? {
                WritePlan::InPlace(host) => {
                    push_write(
                        out,
                        start,
                        WriteMapping::Host {
                            file: IMAGE_FILE,
                            offset: host + in_off,
                            len: n,
                        },
                    );
                    pos += n;
                }
                WritePlan::Allocate => {
                    // Whole fresh clusters of one L2 table, allocated together.
                    let table_end = (gc / g.l2_entries + 1) * g.l2_entries;
                    let mut count = 1;
                    while gc + count < table_end
                        && pos + (count + 1) * cs <= end
                        && self.write_plan(meta, gc + count, 0, cs)? == WritePlan::Allocate
                    {
                        count += 1;
                    }
                    // The L2 table first, then the data, as the sync path lays them out.
                    meta.writable_l2_table(file, gc)?;
                    let (host, fresh) = image.allocate_data(meta, gc, count)?;
                    if let Err(e) = meta.guard_data_write(file, host, count * cs) {
                        if fresh {
                            let _ = meta.change_refcount_range(file, host, count * cs, -1);
                        }
                        return Err(e);
                    }
                    for c in gc..gc + count {
                        meta.in_flight.insert(c);
                    }
                    out.push(WriteMapping::Allocated {
                        file: IMAGE_FILE,
                        offset: host,
                        len: count * cs,
                        link: AllocationLink {
                            guest: gc,
                            host,
                            count,
                        },
                    });
                    pos += count * cs;
                }
                // Cannot happen (the lock was held since the first pass, which said otherwise); handled
                // anyway by giving the request to the sync path.
                WritePlan::Slow => return Ok(Mapped::Slow),
            }
        }
        Ok(Mapped::Fast)
    }

    /// Gives back the clusters of the `Allocated` pieces among `pieces` (a request that failed while being
    /// mapped) and takes them out of flight. The caller wakes waiters after dropping the lock.
    fn undo_allocations(&self, meta: &mut Metadata, pieces: &[WriteMapping]) {
        let image = &self.image;
        let cs = image.cluster_size();
        for piece in pieces {
            if let WriteMapping::Allocated { link, .. } = piece {
                if image.shared.data_file.is_none() {
                    let _ = meta.change_refcount_range(
                        &image.shared.file,
                        link.host,
                        link.count * cs,
                        -1,
                    );
                }
                for c in link.guest..link.guest + link.count {
                    meta.in_flight.remove(&c);
                }
            }
        }
    }

    /// Links the clusters of `link` into their L2 entries (in the cache) after their data was written, or
    /// gives them back when `written` failed; takes them out of flight and wakes waiters either way.
    pub(crate) fn link_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let image = &self.image;
        let file = &image.shared.file;
        let cs = image.cluster_size();
        let mut meta = image.lock_metadata();
        // The link comes back from the queue: refuse one this mapper did not hand out (its clusters would
        // not be in flight) rather than link arbitrary clusters.
        let ours = link.count > 0
            && link.host % cs == 0
            && link.count.checked_mul(cs).is_some_and(|bytes| {
                link.host.checked_add(bytes).is_some()
                    && link.guest.checked_add(link.count).is_some()
            })
            && (link.guest..link.guest.saturating_add(link.count))
                .all(|c| meta.in_flight.contains(&c));
        if !ours {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("allocation link {link:?} was not handed out by this mapper"),
            ));
        }
        let result = match written {
            Err(e) => {
                // Nothing points to the clusters yet: give them back.
                if image.shared.data_file.is_none() {
                    let _ = meta.change_refcount_range(file, link.host, link.count * cs, -1);
                }
                Err(e)
            }
            // The old entries were unallocated or zero without host cluster: no reference to drop. A failure
            // while linking leaves at most leaked clusters.
            Ok(()) => (0..link.count).try_for_each(|i| {
                meta.set_l2_entry(file, link.guest + i, (link.host + i * cs) | COPIED)
            }),
        };
        for c in link.guest..link.guest + link.count {
            meta.in_flight.remove(&c);
        }
        drop(meta);
        image.shared.linked.notify_all();
        result
    }
}

/// Pushes `piece`, merged into the previous in-place piece of the same request (from index `start`) when it
/// continues it on the host.
fn push_write(out: &mut Vec<WriteMapping>, start: usize, piece: WriteMapping) {
    if out.len() > start {
        if let (
            Some(WriteMapping::Host {
                file, offset, len, ..
            }),
            WriteMapping::Host {
                file: f,
                offset: o,
                len: n,
            },
        ) = (out.last_mut(), piece)
        {
            if *file == f && *offset + *len == o {
                *len += n;
                return;
            }
        }
    }
    out.push(piece);
}
