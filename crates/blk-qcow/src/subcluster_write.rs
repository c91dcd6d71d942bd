//! Writes, write-zeroes and discards with extended L2 entries, as QEMU does them at subcluster granularity:
//!
//! - A write into an allocated cluster (refcount 1) writes in place, copying on write only the uncovered parts
//!   of the partially covered first and last subclusters that were not allocated (their backing file data or
//!   zeros). A write needing a new cluster copies only those partial subclusters too, or, replacing a shared
//!   or compressed cluster, the range of its allocated subclusters. The written subclusters get their
//!   "allocated" bit set and their "zero" bit cleared.
//! - Zeroing sets the "zero" bits of whole subclusters (whole clusters: all of them, unmapping the cluster when
//!   allowed); a partial subcluster is zeroed whole only when the rest of it already reads as zeros and it is
//!   not allocated, otherwise zeros are written as data.
//! - Discards act on whole clusters only (QEMU 10 ignores partial-cluster discards).

use blk_core::{IoBuf, IoBufMut, Result};

use crate::qcow2::Qcow2;
use crate::subclusters::{Subcluster, ALL_ALLOCATED, SUBCLUSTERS};
use crate::tables::{L2Entry, COPIED};

/// Bitmap bits "allocated" for subclusters `first..end`.
fn alloc_range(first: u64, end: u64) -> u64 {
    if end <= first {
        return 0;
    }
    let width = end - first;
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (ones << first) & ALL_ALLOCATED
}

/// Bitmap bits "reads as zero" for subclusters `first..end`.
fn zero_range(first: u64, end: u64) -> u64 {
    alloc_range(first, end) << 32
}

/// Whether the entry points to an allocated host cluster (QEMU's "normal" cluster type).
fn allocated_host(entry: L2Entry) -> Option<(u64, bool)> {
    match entry {
        L2Entry::Data { host, copied }
        | L2Entry::Zero {
            host: Some(host),
            copied,
        } => Some((host, copied)),
        _ => None,
    }
}

impl Qcow2 {
    /// Writes `n` bytes at byte `in_off` of guest cluster `gc` of an image with extended L2 entries.
    pub(crate) fn write_cluster_extended(
        &self,
        gc: u64,
        in_off: u64,
        n: u64,
        data: &[IoBuf<'_>],
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let (cs, sc) = (g.cluster_size, g.subcluster_size());
        let file = &self.shared.file;
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let (entry, bitmap) = self.lookup_with_bitmap_for_update(&mut meta, gc)?;
        let first_sc = in_off / sc;
        let last_sc = (in_off + n - 1) / sc;
        let guest = gc * cs;
        let first = Subcluster::of(entry, bitmap, first_sc, g, guest + in_off)?;
        let last = Subcluster::of(entry, bitmap, last_sc, g, guest + in_off + n - 1)?;
        let alloc = bitmap & ALL_ALLOCATED;
        let keep = matches!(allocated_host(entry), Some((_, true)));
        let end = in_off + n;
        let round_up = |x: u64| x.div_ceil(sc) * sc;
        // QEMU's calculate_l2_meta: the range [from, to) of the cluster written in the end.
        let (from, to) = if keep {
            (
                match first {
                    Subcluster::Data { .. } => in_off,
                    _ => first_sc * sc,
                },
                match last {
                    Subcluster::Data { .. } => end,
                    _ => round_up(end),
                },
            )
        } else {
            match entry {
                L2Entry::Compressed { .. } => (0, cs),
                _ if allocated_host(entry).is_some() => (
                    first_sc.min(u64::from(alloc.trailing_zeros())) * sc,
                    cs - (SUBCLUSTERS - 1 - last_sc).min(u64::from((alloc as u32).leading_zeros()))
                        * sc,
                ),
                _ => (first_sc * sc, round_up(end)),
            }
        };
        let new_bitmap = (bitmap | alloc_range(from / sc, to.div_ceil(sc)))
            & !zero_range(from / sc, to.div_ceil(sc));
        if keep && from == in_off && to == end && new_bitmap == bitmap {
            // Only allocated subclusters: a plain write in place.
            let Some((host, _)) = allocated_host(entry) else {
                return Ok(());
            };
            meta.guard_data_write(file, host + in_off, n)?;
            drop(meta);
            return self.write_data(host + in_off, data);
        }
        let (target, fresh) = match allocated_host(entry) {
            Some((host, true)) => (host, false),
            _ => {
                meta.writable_l2_table(file, gc)?;
                self.allocate_data(&mut meta, gc, 1)?
            }
        };
        meta.guard_data_write(file, target + from, to - from)?;
        meta.in_flight.insert(gc);
        drop(meta);
        let written = self.fill_range(guest, target, from, to, in_off, n, data);
        self.link_extended(gc, entry, target, fresh, written, new_bitmap)
    }

    /// Writes bytes `from..to` of the cluster at host `target` (guest cluster at `guest`): the new data at
    /// `in_off..in_off+n`, the rest the cluster's current guest contents, in one write.
    #[allow(clippy::too_many_arguments)]
    fn fill_range(
        &self,
        guest: u64,
        target: u64,
        from: u64,
        to: u64,
        in_off: u64,
        n: u64,
        data: &[IoBuf<'_>],
    ) -> Result<()> {
        if from == in_off && to == in_off + n {
            return self.write_data(target + from, data);
        }
        let mut buf = vec![0u8; (to - from) as usize];
        if from < in_off {
            let head = &mut buf[..(in_off - from) as usize];
            self.read_impl(guest + from, &[IoBufMut::from(head)])?;
        }
        if in_off + n < to {
            let tail = &mut buf[(in_off + n - from) as usize..];
            // The cluster may extend past the end of the disk: only the part inside is read.
            let inside = self
                .shared
                .geometry
                .size
                .saturating_sub(guest + in_off + n)
                .min(tail.len() as u64) as usize;
            self.read_impl(guest + in_off + n, &[IoBufMut::from(&mut tail[..inside])])?;
        }
        let mut at = (in_off - from) as usize;
        for b in data {
            if let Some(part) = buf.get_mut(at..) {
                at += b.copy_to(part);
            }
        }
        self.write_data_all(target + from, &buf)
    }

    /// Links a written cluster (entry and bitmap), or undoes a fresh allocation on failure, and wakes waiters.
    fn link_extended(
        &self,
        gc: u64,
        old: L2Entry,
        target: u64,
        fresh: bool,
        written: Result<()>,
        bitmap: u64,
    ) -> Result<()> {
        let file = &self.shared.file;
        let mut meta = self.lock_metadata();
        let replaced = allocated_host(old).map(|(h, _)| h) != Some(target);
        let result = written.and_then(|()| {
            meta.set_l2_entry(file, gc, target | COPIED)?;
            meta.set_l2_bitmap(file, gc, bitmap)
        });
        let result = match result {
            Err(e) => {
                if fresh && self.shared.data_file.is_none() {
                    let _ = meta.change_refcount_range(file, target, 1, -1);
                }
                Err(e)
            }
            Ok(())
                if replaced
                    && !matches!(old, L2Entry::Unallocated | L2Entry::Zero { host: None, .. }) =>
            {
                // The old (shared or compressed) cluster loses its reference once no L2 entry on disk points
                // to it; a failure here leaves it leaked.
                meta.flush(file).and_then(|()| meta.release(file, old))
            }
            Ok(()) => Ok(()),
        };
        meta.in_flight.remove(&gc);
        drop(meta);
        self.shared.linked.notify_all();
        result
    }

    /// Zeroes as QEMU does with extended L2 entries (see the module docs).
    pub(crate) fn write_zeroes_extended(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let (sc, size) = (g.subcluster_size(), g.size);
        let end = offset + len;
        let mut pos = offset;
        // The block layer's split: an unaligned head inside one subcluster, the aligned middle, a tail.
        while pos < end {
            if pos % sc != 0 || end - pos < sc && end != size {
                let n = (sc - pos % sc).min(end - pos);
                if !self.zero_partial_subcluster(pos, n)? {
                    self.write_zero_buffers(pos, n)?;
                }
                pos += n;
                continue;
            }
            let stop = if end == size { end } else { end / sc * sc };
            if !self.zero_aligned(pos, stop, may_unmap, false)? {
                self.write_zero_buffers(pos, stop - pos)?;
            }
            pos = stop;
        }
        Ok(())
    }

    /// Zeroes the whole subcluster around `n` bytes at `pos` if the rest of it reads as zeros and it is not
    /// allocated (QEMU's unaligned write-zeroes); returns whether it did.
    fn zero_partial_subcluster(&self, pos: u64, n: u64) -> Result<bool> {
        let g = &self.shared.geometry;
        let sc = g.subcluster_size();
        let start = pos / sc * sc;
        let stop = if pos + n == g.size {
            pos + n
        } else {
            (start + sc).min(g.size)
        };
        let status = {
            let mut meta = self.lock_metadata();
            self.subcluster_at(&mut meta, pos)?
        };
        let free = match status {
            Subcluster::Zero { .. } => true,
            Subcluster::Unallocated { .. } => match &self.shared.backing {
                None => true,
                Some(b) => b.reads_zero(start, pos)? && b.reads_zero(pos + n, stop)?,
            },
            _ => false,
        };
        if !free {
            return Ok(false);
        }
        // Checked again under the lock: a concurrent write may have allocated the subcluster since.
        self.zero_aligned(start, stop, false, true)
    }

    /// Zeroes subcluster-aligned `start..stop` in the metadata: partial clusters get their subclusters' zero
    /// bits, whole ones all of them (unmapped when `may_unmap`). Returns `false` (nothing changed) when a
    /// partially covered cluster is compressed (QEMU then writes zeros as data), or with `only_if_free` when
    /// the subcluster at `start` is allocated.
    fn zero_aligned(
        &self,
        start: u64,
        stop: u64,
        may_unmap: bool,
        only_if_free: bool,
    ) -> Result<bool> {
        let g = &self.shared.geometry;
        let (cs, sc, size) = (g.cluster_size, g.subcluster_size(), g.size);
        let file = &self.shared.file;
        let partial = |c: u64| {
            let (a, b) = (c * cs, (c * cs + cs).min(size));
            start > a || stop < b
        };
        {
            let mut meta = self.lock_metadata();
            for c in [start / cs, (stop - 1) / cs] {
                if partial(c) && matches!(self.lookup(&mut meta, c)?, L2Entry::Compressed { .. }) {
                    return Ok(false);
                }
            }
        }
        let mut c = start / cs;
        while c * cs < stop {
            let meta = self.lock_metadata();
            let mut meta = self.wait_cluster(meta, c);
            let (entry, bitmap) = self.lookup_with_bitmap_for_update(&mut meta, c)?;
            if only_if_free
                && !matches!(
                    self.subcluster_at(&mut meta, start)?,
                    Subcluster::Zero { .. } | Subcluster::Unallocated { .. }
                )
            {
                return Ok(false);
            }
            let (a, b) = (start.max(c * cs) - c * cs, stop.min(c * cs + cs) - c * cs);
            let (new_entry, new_bitmap, release) = if partial(c) {
                let range = (a / sc, b.div_ceil(sc));
                let raw = meta.l2_entry(file, c)?;
                (
                    raw,
                    (bitmap | zero_range(range.0, range.1)) & !alloc_range(range.0, range.1),
                    false,
                )
            } else {
                let unmap = matches!(entry, L2Entry::Compressed { .. })
                    || may_unmap && allocated_host(entry).is_some();
                let raw = meta.l2_entry(file, c)?;
                (
                    if unmap { 0 } else { raw },
                    zero_range(0, SUBCLUSTERS),
                    unmap,
                )
            };
            let raw = meta.l2_entry(file, c)?;
            if raw != new_entry || bitmap != new_bitmap {
                meta.set_l2_entry(file, c, new_entry)?;
                meta.set_l2_bitmap(file, c, new_bitmap)?;
                if !release {
                    if let Some((host, _)) = allocated_host(entry) {
                        self.zero_data_range(host + a, b - a);
                    }
                }
                self.release_all(&mut meta, if release { vec![entry] } else { Vec::new() })?;
            }
            c += 1;
        }
        Ok(true)
    }

    /// Discards whole clusters as QEMU does with extended L2 entries: an allocated cluster (or any, with a
    /// backing file) becomes unallocated with every subcluster reading as zeros.
    pub(crate) fn discard_extended(&self, first: u64, last: u64) -> Result<()> {
        let file = &self.shared.file;
        for c in first..last {
            let meta = self.lock_metadata();
            let mut meta = self.wait_cluster(meta, c);
            let (entry, bitmap) = self.lookup_with_bitmap_for_update(&mut meta, c)?;
            let allocated = !matches!(
                entry,
                L2Entry::Unallocated | L2Entry::Zero { host: None, .. }
            );
            if !(allocated || self.shared.backing.is_some()) {
                continue;
            }
            let raw = meta.l2_entry(file, c)?;
            let all_zero = zero_range(0, SUBCLUSTERS);
            if raw == 0 && bitmap == all_zero {
                continue;
            }
            meta.set_l2_entry(file, c, 0)?;
            meta.set_l2_bitmap(file, c, all_zero)?;
            self.release_all(&mut meta, if allocated { vec![entry] } else { Vec::new() })?;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at host `host` of the external data file (subclusters that became zero).
    fn zero_data_range(&self, host: u64, len: u64) {
        if let Some(data) = &self.shared.data_file {
            let len = len.min(data.disk.logical_size().saturating_sub(host));
            if len > 0 {
                let _ = data.disk.write_zeroes(host, len, true);
            }
        }
    }
}
