//! Guest I/O: read, write (allocation and copy-on-write), write-zeroes, discard and compressed writes.

use blk_core::buffer::{range, range_mut, total_len, total_len_mut, zero_fill};
use blk_core::{check_range, IoBuf, IoBufMut, Result};

use crate::metadata::{corrupt, read_zero_filled, Metadata};
use crate::qcow2::Qcow2;
use crate::tables::{L2Entry, COPIED, ZERO};

/// Copies `src` into `bufs` in order.
fn copy_into(bufs: &[IoBufMut<'_>], src: &[u8]) {
    let mut at = 0;
    for b in bufs {
        if let Some(part) = src.get(at..) {
            at += b.copy_from(part);
        }
    }
}

/// Copies `bufs` into `dst` in order.
fn copy_from_bufs(bufs: &[IoBuf<'_>], dst: &mut [u8]) {
    let mut at = 0;
    for b in bufs {
        if let Some(part) = dst.get_mut(at..) {
            at += b.copy_to(part);
        }
    }
}

/// Whether replacing an entry must drop a reference to what it pointed to.
pub(crate) fn holds_reference(entry: L2Entry) -> bool {
    matches!(
        entry,
        L2Entry::Data { .. } | L2Entry::Compressed { .. } | L2Entry::Zero { host: Some(_), .. }
    )
}

impl Qcow2 {
    pub(crate) fn cluster_size(&self) -> u64 {
        self.shared.geometry.cluster_size
    }

    pub(crate) fn lookup(&self, meta: &mut Metadata, gc: u64) -> Result<L2Entry> {
        let raw = meta.l2_entry(&self.shared.file, gc)?;
        let entry = L2Entry::decode(raw, &self.shared.geometry);
        if let L2Entry::Data { host, .. }
        | L2Entry::Zero {
            host: Some(host), ..
        } = entry
        {
            if host % self.cluster_size() != 0 {
                return Err(corrupt(
                    format!(
                        "L2 entry of guest cluster {gc} points to unaligned host offset {host:#x}"
                    ),
                    gc * self.cluster_size(),
                ));
            }
            meta.check_data_location(host)?;
        }
        if matches!(entry, L2Entry::Compressed { .. }) && self.shared.data_file.is_some() {
            return Err(corrupt(
                format!("compressed cluster entry for guest cluster {gc} in an image with an external data file"),
                gc * self.cluster_size(),
            ));
        }
        Ok(entry)
    }

    /// `lookup` for a request that may replace or free the entry: also checks that what it references may be
    /// freed (`Metadata::check_release`), before anything changes.
    pub(crate) fn lookup_for_update(&self, meta: &mut Metadata, gc: u64) -> Result<L2Entry> {
        let entry = self.lookup(meta, gc)?;
        meta.check_release(&self.shared.file, entry)?;
        Ok(entry)
    }

    /// Decompresses the compressed cluster at `host` (`size` bytes) into `out` (one cluster).
    pub(crate) fn read_compressed(&self, host: u64, size: u64, out: &mut [u8]) -> Result<()> {
        let input = read_zero_filled(&self.file, host, size.min(2 * self.cluster_size()) as usize)?;
        crate::compression::decompress(self.shared.geometry.compression_type, &input, out)
    }

    pub(crate) fn read_impl(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len = total_len_mut(bufs);
        check_range(offset, len, self.shared.geometry.size)?;
        let cs = self.cluster_size();
        let end = offset + len;
        let mut segments = Vec::new();
        {
            let mut meta = self.lock_metadata();
            let mut pos = offset;
            while pos < end {
                let n = (cs - pos % cs).min(end - pos);
                self.push_read_segments(&mut meta, pos, n, &mut segments)?;
                pos += n;
            }
        }
        let mut i = 0;
        while i < segments.len() {
            let (pos, n, entry) = segments[i];
            let done = pos - offset;
            match entry {
                L2Entry::Data { host, .. } => {
                    // Merge the following clusters that continue on the host.
                    let start = host + pos % cs;
                    let mut run = n;
                    while let Some(&(p, m, L2Entry::Data { host: h, .. })) = segments.get(i + 1) {
                        if h + p % cs != start + run {
                            break;
                        }
                        run += m;
                        i += 1;
                    }
                    self.read_data(start, &range_mut(bufs, done, run))?;
                }
                L2Entry::Unallocated => {
                    let mut run = n;
                    while let Some(&(_, m, L2Entry::Unallocated)) = segments.get(i + 1) {
                        run += m;
                        i += 1;
                    }
                    let part = range_mut(bufs, done, run);
                    match &self.shared.backing {
                        Some(b) => b.read(pos, &part)?,
                        None => zero_fill(&part),
                    }
                }
                L2Entry::Zero { .. } => zero_fill(&range_mut(bufs, done, n)),
                L2Entry::Compressed { host, size } => {
                    let mut cluster = vec![0u8; cs as usize];
                    self.read_compressed(host, size, &mut cluster)?;
                    let at = (pos % cs) as usize;
                    copy_into(&range_mut(bufs, done, n), &cluster[at..at + n as usize]);
                }
            }
            i += 1;
        }
        Ok(())
    }

    pub(crate) fn write_impl(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = total_len(bufs);
        check_range(offset, len, self.shared.geometry.size)?;
        let cs = self.cluster_size();
        let mut pos = offset;
        let extended = self.shared.geometry.extended_l2;
        while pos < offset + len {
            if extended {
                let n = (cs - pos % cs).min(offset + len - pos);
                let part = range(bufs, pos - offset, n);
                self.write_cluster_extended(pos / cs, pos % cs, n, &part)?;
                pos += n;
                continue;
            }
            let run = self.write_run(pos, offset + len, bufs, pos - offset)?;
            if run > 0 {
                pos += run;
                continue;
            }
            let n = (cs - pos % cs).min(offset + len - pos);
            let part = range(bufs, pos - offset, n);
            self.write_cluster(pos / cs, pos % cs, n, &part)?;
            pos += n;
        }
        Ok(())
    }

    /// Waits until guest cluster `gc` is not being allocated by someone else.
    pub(crate) fn wait_cluster<'a>(
        &'a self,
        mut meta: std::sync::MutexGuard<'a, Metadata>,
        gc: u64,
    ) -> std::sync::MutexGuard<'a, Metadata> {
        while meta.in_flight.contains(&gc) {
            meta = self
                .shared
                .linked
                .wait(meta)
                .unwrap_or_else(|p| p.into_inner());
        }
        meta
    }

    /// Writes `n` bytes at byte `in_off` of guest cluster `gc`.
    fn write_cluster(&self, gc: u64, in_off: u64, n: u64, data: &[IoBuf<'_>]) -> Result<()> {
        let file = &self.shared.file;
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let entry = self.lookup_for_update(&mut meta, gc)?;
        if let L2Entry::Data { host, copied: true } = entry {
            meta.guard_data_write(file, host + in_off, n)?;
            drop(meta);
            return self.write_data(host + in_off, data);
        }
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
        let written = self.fill_cluster(gc, entry, target, in_off, n, data);
        self.link(gc, entry, target, fresh, written, target | COPIED)
    }

    /// Links a written cluster into the L2 table (or undoes the allocation on failure) and wakes waiters.
    fn link(
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

    /// Writes a whole cluster at `target`: the guest data merged with the old contents (backing file, zeros,
    /// shared or compressed data) in one write.
    fn fill_cluster(
        &self,
        gc: u64,
        old: L2Entry,
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
        match old {
            L2Entry::Unallocated => {
                if let Some(b) = &self.shared.backing {
                    b.read(gc * cs, &[IoBufMut::from(&mut cluster[..])])?;
                }
            }
            L2Entry::Zero { .. } => {}
            L2Entry::Data { host, .. } => {
                let old = self.read_data_vec(host, cs as usize)?;
                cluster.copy_from_slice(&old);
            }
            L2Entry::Compressed { host, size } => self.read_compressed(host, size, &mut cluster)?,
        }
        let at = in_off as usize;
        copy_from_bufs(data, &mut cluster[at..at + n as usize]);
        self.write_data_all(target, &cluster)
    }

    /// Drops the references of replaced entries (after their L2 tables reached the disk: one flush for the
    /// whole batch) and punches the freed host clusters, contiguous ones in one call. Runs under the lock, so
    /// no allocation can take a freed cluster before its punch.
    pub(crate) fn release_all(&self, meta: &mut Metadata, released: Vec<L2Entry>) -> Result<()> {
        if released.is_empty() {
            return Ok(());
        }
        let file = &self.shared.file;
        let cs = self.cluster_size();
        meta.flush(file)?;
        // Freed host ranges to punch, (start, end), merged when contiguous.
        let mut punches: Vec<(u64, u64)> = Vec::new();
        let mut result = Ok(());
        for entry in released {
            if let Err(e) = meta.release(file, entry) {
                result = Err(e);
                break;
            }
            if let L2Entry::Data { host, .. }
            | L2Entry::Zero {
                host: Some(host), ..
            } = entry
            {
                if self.shared.data_file.is_some() {
                    self.zero_data_cluster(host);
                    continue;
                }
                match meta.refcount(file, host >> self.shared.geometry.cluster_bits) {
                    Ok(0) => match punches.last_mut() {
                        Some((_, end)) if *end == host => *end = host + cs,
                        _ => punches.push((host, host + cs)),
                    },
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        for (start, end) in punches {
            // A failed punch only leaves the freed clusters' old bytes on the host.
            let _ = file.punch_hole(start, end - start);
        }
        result
    }

    pub(crate) fn discard_impl(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.shared.geometry.size;
        check_range(offset, len, size)?;
        let cs = self.cluster_size();
        let start = offset.div_ceil(cs) * cs;
        let mut end = (offset + len) / cs * cs;
        if offset + len == size && size % cs != 0 && offset <= end {
            end = size;
        }
        if start >= end {
            return Ok(());
        }
        let file = &self.shared.file;
        let v3 = self.shared.geometry.version >= 3;
        if !v3 && self.shared.backing.is_some() {
            // QEMU refuses discards on v2 images with a backing file (ENOTSUP, which its block layer turns
            // into success): without the zero flag, unallocating would expose the backing file's data.
            return Ok(());
        }
        let first = start / cs;
        let last = end.div_ceil(cs);
        if self.shared.geometry.extended_l2 {
            return self.discard_extended(first, last);
        }
        let mut gc = first;
        while gc < last {
            let meta = self.lock_metadata();
            let mut meta = self.wait_cluster(meta, gc);
            let mut released = Vec::new();
            // One L2 table's worth per lock hold.
            let stop = ((gc / self.shared.geometry.l2_entries + 1)
                * self.shared.geometry.l2_entries)
                .min(last);
            let mut changed = || -> Result<()> {
                for c in gc..stop {
                    if meta.in_flight.contains(&c) {
                        continue;
                    }
                    let entry = self.lookup_for_update(&mut meta, c)?;
                    let new = match entry {
                        L2Entry::Unallocated if self.shared.backing.is_some() && v3 => ZERO,
                        L2Entry::Data { .. } | L2Entry::Compressed { .. } => {
                            if v3 {
                                ZERO
                            } else {
                                0
                            }
                        }
                        _ => continue,
                    };
                    meta.set_l2_entry(file, c, new)?;
                    if holds_reference(entry) {
                        released.push(entry);
                    }
                }
                Ok(())
            };
            // A bad entry stops the discard there; what was changed before it is still released.
            let result = changed();
            self.release_all(&mut meta, released)?;
            result?;
            gc = stop;
        }
        Ok(())
    }

    pub(crate) fn write_compressed_impl(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        if self.shared.data_file.is_some() {
            return Err(blk_core::Error::new(
                blk_core::ErrorKind::UnsupportedFeature,
                "Compression is not supported with external data files",
            ));
        }
        check_range(offset, buf.len() as u64, self.shared.geometry.size)?;
        if offset % cs != 0
            || buf.len() as u64 > cs
            || (buf.len() as u64) < cs && offset + buf.len() as u64 != self.shared.geometry.size
        {
            return Err(blk_core::Error::new(
                blk_core::ErrorKind::InvalidInput,
                "a compressed write must cover exactly one cluster",
            ));
        }
        let mut cluster = vec![0u8; cs as usize];
        cluster[..buf.len()].copy_from_slice(buf);
        let Some(compressed) =
            crate::compression::compress(self.shared.geometry.compression_type, &cluster)?
        else {
            return self.write_impl(offset, &[IoBuf::from(buf)]);
        };
        let gc = offset / cs;
        let file = &self.shared.file;
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let old = self.lookup_for_update(&mut meta, gc)?;
        let len = compressed.len() as u64;
        let host = meta.allocate_bytes(file, len)?;
        meta.guard_data_write(file, host, len)?;
        meta.in_flight.insert(gc);
        drop(meta);
        let written = self.file.write_all_at(host, &compressed).map(|()| {
            // As qemu-img, the file ends on a 512-byte boundary (sector-based readers of the last compressed
            // cluster). Allocating never shrinks the file nor changes bytes already written there (another
            // compressed cluster may be packed right after), and a failure only leaves the file unpadded.
            let end = host + len;
            if end % 512 != 0 {
                let _ = self.file.allocate(end, 512 - end % 512);
            }
        });
        let entry = L2Entry::compressed(host, len, &self.shared.geometry);
        // The compressed bytes lie in one host cluster (see `allocate_bytes`): the undo of a fresh cluster.
        self.link(gc, old, host, true, written, entry)
    }
}
