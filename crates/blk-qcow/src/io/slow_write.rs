//! [`Mapper::write_slow`](blk_core::Mapper::write_slow)'s work: the clusters the mapper answered slow for,
//! written in guest order with the metadata changes they need (QEMU's copy-on-write allocation).
//!
//! Each cluster waits until no other writer is allocating it, then asks the classifier (`lookup`) again under
//! the metadata lock, and does what it answers:
//! - in place: a cluster that turned writable in place meanwhile (the overlap guard first);
//! - allocate: whole fresh clusters (slow because they followed a slow cluster of their request, or were in
//!   flight), allocated in runs and linked exactly as the mapper's allocations are;
//! - slow: the cluster gets a new host cluster (or keeps its preallocated one), written whole with the guest
//!   data merged into its current contents, which are read through the mapping (`blk_core::read_mapped`: the
//!   backing file, zeros, shared or compressed data, other subclusters; the cluster is in flight meanwhile, so
//!   its old entry still answers), then linked. With extended L2 entries only the partially covered
//!   subclusters are copied (QEMU's `calculate_l2_meta`), and the written subclusters get their "allocated"
//!   bit set and their "zero" bit cleared. A cluster past the end of the disk is read only up to it.
//!
//! Order: the data is written before the L2 entry pointing to it; a replaced (shared or compressed) cluster
//! loses its reference only after the new entry reached the disk.

use blk_core::buffer::{range, total_len};
use blk_core::{read_mapped, IoBuf, IoBufMut, Mapper, Result};

use crate::image::{MetadataGuard, Qcow2};
use crate::io::discard::holds_reference;
use crate::io::lookup::{ClusterWrite, WritePlan};
use crate::metadata::subclusters::{alloc_range, zero_range, ALL_ALLOCATED, SUBCLUSTERS};
use crate::metadata::tables::{L2Entry, COPIED};
use crate::metadata::Metadata;

/// Copies `bufs` into `dst` in order.
fn copy_from_bufs(bufs: &[IoBuf<'_>], dst: &mut [u8]) {
    let mut at = 0;
    for b in bufs {
        if let Some(part) = dst.get_mut(at..) {
            at += b.copy_to(part);
        }
    }
}

/// The host cluster of an entry pointing to one (QEMU's "normal" cluster type), and whether it is `COPIED`.
pub(crate) fn allocated_host(entry: L2Entry) -> Option<(u64, bool)> {
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
    /// Waits until guest cluster `gc` is not being allocated by someone else.
    pub(crate) fn wait_cluster<'a>(
        &'a self,
        mut meta: MetadataGuard<'a>,
        gc: u64,
    ) -> MetadataGuard<'a> {
        while meta.in_flight.contains(&gc) {
            meta = self.shared.linked.wait(meta, self);
        }
        meta
    }

    /// Writes guest data at host offset `host` of the file holding it (the image file or the external data
    /// file), for the slow path's own writes.
    pub(crate) fn write_data(&self, host: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        if let Some(encryption) = &self.shared.encryption {
            return self.write_encrypted(encryption, host, bufs);
        }
        match &self.shared.data_file {
            Some(data) => data.disk.write_at(host, bufs),
            None => self.file().write_vectored_at(host, bufs),
        }
    }

    /// Writes guest data at host offset `host` of an encrypted image: encrypted in a buffer with the IVs of
    /// its host sectors, the sectors it covers only in part read and decrypted first.
    fn write_encrypted(
        &self,
        encryption: &crate::encryption::Encryption,
        host: u64,
        bufs: &[IoBuf<'_>],
    ) -> Result<()> {
        let len = total_len(bufs);
        let first = host & !511;
        let end = (host + len).div_ceil(512) * 512;
        let mut buf = vec![0u8; (end - first) as usize];
        let head = (host - first) as usize;
        let mut edges = Vec::new();
        if head != 0 {
            edges.push(0);
        }
        if host + len != end && (edges.is_empty() || end - first > 512) {
            edges.push(buf.len() - 512);
        }
        for at in edges {
            let sector = &mut buf[at..at + 512];
            let got = self
                .file()
                .read_vectored_at(first + at as u64, &[IoBufMut::from(&mut *sector)])?;
            sector[got..].fill(0);
            encryption.decrypt(first + at as u64, sector)?;
        }
        copy_from_bufs(bufs, &mut buf[head..head + len as usize]);
        encryption.encrypt(first, &mut buf)?;
        self.file()
            .write_vectored_at(first, &[IoBuf::from(&buf[..])])
    }

    /// Host clusters for `n` new data clusters from guest cluster `gc`: at the guest offset in an external
    /// data file (not refcounted, as QEMU does), else allocated in the image file. Returns the host offset and
    /// whether refcounts were taken (to give back on failure).
    pub(crate) fn allocate_data(
        &self,
        meta: &mut Metadata,
        gc: u64,
        n: u64,
    ) -> Result<(u64, bool)> {
        if self.shared.data_file.is_some() {
            return Ok((gc << self.shared.geometry.cluster_bits, false));
        }
        Ok((meta.allocate_clusters(&self.shared.file, n)?, true))
    }

    /// Writes the guest bytes `data` at guest offset `pos`, as far as the cluster holding `pos` (or, for
    /// whole fresh clusters, the run of them from there) goes; returns the bytes written.
    pub(crate) fn write_slow_at(&self, pos: u64, data: &[IoBuf<'_>]) -> Result<u64> {
        let file = &self.shared.file;
        let cs = self.cluster_size();
        let len = total_len(data);
        let (gc, in_off) = (pos / cs, pos % cs);
        let n = (cs - in_off).min(len);
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let write = self.classify_write(&mut meta, gc, in_off, n)?;
        match write.plan {
            WritePlan::InPlace(host)
                if self.shared.encryption.is_some() && (in_off | n) % 512 != 0 =>
            {
                // A part of an encrypted sector: read, decrypted, merged and encrypted again, the cluster
                // in flight meanwhile so no other writer of the sector races the merge.
                meta.guard_data_write(file, host + in_off, n)?;
                meta.in_flight.insert(gc);
                drop(meta);
                let written = self.write_data(host + in_off, &range(data, 0, n));
                self.lock_metadata().in_flight.remove(&gc);
                self.shared.linked.notify_all();
                written.map(|()| n)
            }
            WritePlan::InPlace(host) => {
                meta.guard_data_write(file, host + in_off, n)?;
                drop(meta);
                self.write_data(host + in_off, &range(data, 0, n))?;
                Ok(n)
            }
            WritePlan::Allocate => {
                // Whole fresh clusters from here, allocated and linked as the mapper's are.
                let link = self.allocate_run(&mut meta, gc, pos + len)?;
                drop(meta);
                let run = link.count * cs;
                let part = range(data, 0, run);
                let written = if self.shared.encryption.is_some() {
                    self.write_data(link.host, &part)
                } else {
                    self.file().write_vectored_at(link.host, &part)
                };
                self.link_allocation(link, written)?;
                Ok(run)
            }
            WritePlan::Slow => {
                meta.check_release(file, write.entry)?;
                let part = range(data, 0, n);
                if self.shared.geometry.extended_l2 {
                    self.write_subclusters(meta, gc, write, in_off, n, &part)?;
                } else {
                    self.write_cluster(meta, gc, write.entry, in_off, n, &part)?;
                }
                Ok(n)
            }
        }
    }

    /// Copy-on-write of guest cluster `gc` (entry `entry`, checked) into a new cluster, or into its own
    /// preallocated zero cluster.
    fn write_cluster(
        &self,
        mut meta: MetadataGuard<'_>,
        gc: u64,
        entry: L2Entry,
        in_off: u64,
        n: u64,
        data: &[IoBuf<'_>],
    ) -> Result<()> {
        let file = &self.shared.file;
        let (target, fresh) = match entry {
            L2Entry::Zero {
                host: Some(h),
                copied: true,
            } => (h, false),
            _ => {
                // The L2 table first, so consecutive data clusters stay contiguous (qemu's layout).
                meta.writable_l2_table(file, gc)?;
                self.allocate_data(&mut meta, gc, 1)?
            }
        };
        meta.guard_data_write(file, target, self.cluster_size())?;
        meta.in_flight.insert(gc);
        drop(meta);
        let written = self.fill_cluster(gc, target, in_off, n, data);
        self.link(gc, entry, target, fresh, written, target | COPIED)
    }

    /// Links a written cluster into the L2 table (or undoes the allocation on failure) and wakes waiters.
    pub(crate) fn link(
        &self,
        gc: u64,
        old: L2Entry,
        target: u64,
        fresh: bool,
        written: Result<()>,
        new_entry: u64,
    ) -> Result<()> {
        let file = &self.shared.file;
        let mut meta = self.lock_metadata();
        let extended = self.shared.geometry.extended_l2;
        let result = match written.and_then(|()| {
            meta.set_l2_entry(file, gc, new_entry)?;
            // Only compressed clusters are linked here with extended L2 entries: their bitmap is 0.
            if extended {
                meta.set_l2_bitmap(file, gc, 0)?;
            }
            Ok(())
        }) {
            Err(e) => {
                // Nothing points to a fresh cluster yet: give it back.
                if fresh && self.shared.data_file.is_none() {
                    let _ = meta.change_refcount_range(file, target, 1, -1);
                }
                Err(e)
            }
            Ok(())
                if holds_reference(old)
                    && !matches!(old, L2Entry::Zero { host: Some(h), copied: true } if h == target) =>
            {
                // The old cluster loses its reference only once no L2 entry on disk points to it; a failure
                // here leaves it leaked.
                meta.flush(file).and_then(|()| meta.release(file, old))
            }
            Ok(()) => Ok(()),
        };
        meta.in_flight.remove(&gc);
        drop(meta);
        self.shared.linked.notify_all();
        result
    }

    /// Writes a whole cluster at `target`: the guest data merged with the cluster's current guest contents
    /// (read through the mapping: the cluster is in flight, so its old entry still answers) in one write.
    fn fill_cluster(
        &self,
        gc: u64,
        target: u64,
        in_off: u64,
        n: u64,
        data: &[IoBuf<'_>],
    ) -> Result<()> {
        let cs = self.cluster_size();
        if in_off == 0 && n == cs {
            return self.write_data(target, data);
        }
        let mut cluster = vec![0u8; cs as usize];
        // The last cluster may extend past the end of the disk: only the part inside is read.
        let guest = gc * cs;
        let inside = self.logical_size().saturating_sub(guest).min(cs) as usize;
        read_mapped(self, guest, &[IoBufMut::from(&mut cluster[..inside])])?;
        let at = in_off as usize;
        copy_from_bufs(data, &mut cluster[at..at + n as usize]);
        self.write_data(target, &[IoBuf::from(&cluster[..])])
    }

    /// Writes `n` bytes at byte `in_off` of guest cluster `gc` of an image with extended L2 entries, its
    /// entry and bitmap in `write` (checked), copying only what QEMU copies.
    fn write_subclusters(
        &self,
        mut meta: MetadataGuard<'_>,
        gc: u64,
        write: ClusterWrite,
        in_off: u64,
        n: u64,
        data: &[IoBuf<'_>],
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let (cs, sc) = (g.cluster_size, g.subcluster_size());
        let file = &self.shared.file;
        let ClusterWrite { entry, bitmap, .. } = write;
        let first_sc = in_off / sc;
        let last_sc = (in_off + n - 1) / sc;
        let guest = gc * cs;
        let first = crate::metadata::subclusters::Subcluster::of(
            entry,
            bitmap,
            first_sc,
            g,
            guest + in_off,
        )?;
        let last = crate::metadata::subclusters::Subcluster::of(
            entry,
            bitmap,
            last_sc,
            g,
            guest + in_off + n - 1,
        )?;
        let alloc = bitmap & ALL_ALLOCATED;
        let keep = matches!(allocated_host(entry), Some((_, true)));
        let end = in_off + n;
        let round_up = |x: u64| x.div_ceil(sc) * sc;
        let is_data = |s| matches!(s, crate::metadata::subclusters::Subcluster::Data { .. });
        // QEMU's calculate_l2_meta: the range [from, to) of the cluster written in the end.
        let (from, to) = if keep {
            (
                if is_data(first) {
                    in_off
                } else {
                    first_sc * sc
                },
                if is_data(last) { end } else { round_up(end) },
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
        self.link_subclusters(gc, entry, target, fresh, written, new_bitmap)
    }

    /// Writes bytes `from..to` of the cluster at host `target` (guest cluster at `guest`): the new data at
    /// `in_off..in_off+n`, the rest the cluster's current guest contents (read through the mapping), in one
    /// write.
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
            read_mapped(self, guest + from, &[IoBufMut::from(head)])?;
        }
        if in_off + n < to {
            let tail = &mut buf[(in_off + n - from) as usize..];
            // The cluster may extend past the end of the disk: only the part inside is read.
            let inside = self
                .logical_size()
                .saturating_sub(guest + in_off + n)
                .min(tail.len() as u64) as usize;
            read_mapped(
                self,
                guest + in_off + n,
                &[IoBufMut::from(&mut tail[..inside])],
            )?;
        }
        copy_from_bufs(data, &mut buf[(in_off - from) as usize..]);
        self.write_data(target + from, &[IoBuf::from(&buf[..])])
    }

    /// Links a written cluster (entry and bitmap), or undoes a fresh allocation on failure, and wakes waiters.
    fn link_subclusters(
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
}
