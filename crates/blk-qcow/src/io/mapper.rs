//! `impl blk_core::Mapper for Qcow2`: the one answer to "where does this guest range live", which blk-core's
//! engines serve on both paths ([`blk_core::MappedDisk`] on the calling thread, [`blk_core::MappedQueue`] on a
//! backend), and the metadata operations the guest can ask for.
//!
//! | request | pieces |
//! |---|---|
//! | read | data clusters: the image file (host-contiguous clusters merged), or the external data file (host file 1 when it is a raw file, else `Disk` 1; zeros past its end); zero clusters: zeros; compressed clusters: an encoded piece inflated by [`decode`](blk_core::Mapper::decode); unallocated clusters: the backing file (`Disk` 0, zeros past its end), or zeros. With extended L2 entries the same per subcluster. |
//! | write | in place where the cluster is `COPIED` data (with extended L2 entries: every covered subcluster holds data), in the image file (the overlap guard first) or the data file (host file 1, or `Disk` 1); whole fresh clusters allocated in runs (`Allocated`, linked in [`finish_allocation`](blk_core::Mapper::finish_allocation)); every other cluster (copy-on-write, shared, compressed or preallocated zero clusters, clusters in flight, data-file allocations, subcluster bitmap changes) a `Slow` piece of its own, served by [`write_slow`](blk_core::Mapper::write_slow) (see `slow_write`); fresh clusters after a slow one are slow too, so a request's clusters are allocated in guest order. |
//!
//! Both answers come from the lookup and the write classifier of `lookup`. One mapping takes the metadata lock
//! once (a read whose L2 tables are all cached, or a write that overwrites in place, only its shared side; a
//! request that finds a table missing or a cluster to allocate, once more exclusively); an allocating write marks its clusters in flight under that hold
//! and `finish_allocation` links them (or gives them back) under a second one, after the data write. The
//! mapper never waits on the link signal: a cluster in flight is a slow piece, and
//! `write_slow` waits there instead.

use std::sync::Arc;

use blk_core::buffer::range;
use blk_core::{
    check_range, push_disk_read, AllocationLink, DiskFile, Error, ErrorKind, Extent, HostFile,
    IoBuf, Mapper, Operation, ReadMapping, Result, WriteMapping,
};

use crate::image::Qcow2;
use crate::io::lookup::WritePlan;
use crate::metadata::subclusters::Subcluster;
use crate::metadata::tables::{L2Entry, COPIED};
use crate::metadata::Metadata;
use crate::FORMAT_NAME;

/// Index of the image file in [`Mapper::host_files`].
pub(crate) const IMAGE_FILE: usize = 0;
/// Index of the external data file in [`Mapper::host_files`], when it is a host file byte for byte.
pub(crate) const DATA_HOST_FILE: usize = 1;
/// [`Mapper::disk`] index of the backing file.
pub const BACKING_DISK: usize = 0;
/// [`Mapper::disk`] index of the external data file.
pub const DATA_FILE_DISK: usize = 1;

/// The `codec` of an encrypted read piece: this bit, and the host offset of its first sector (host offsets
/// are below 2^56).
const ENCRYPTED_CODEC: u64 = 1 << 63;

/// The encoded piece of an encrypted read of `len` bytes at host offset `host`: the 512-byte sectors holding
/// it (inside its cluster or subcluster, which are whole sectors), to be decrypted by `decode`.
fn encrypted_read(host: u64, len: u64) -> ReadMapping {
    let first = host & !511;
    let end = (host + len).div_ceil(512) * 512;
    ReadMapping::Encoded {
        file: IMAGE_FILE,
        offset: first,
        host_len: end - first,
        decoded_len: end - first,
        skip: host - first,
        len,
        codec: ENCRYPTED_CODEC | first,
    }
}

impl Qcow2 {
    /// Decrypts the sectors of an encrypted read piece read at host offset `host`.
    fn decrypt_piece(&self, host: u64, input: &[u8], output: &mut [u8]) -> Result<()> {
        let ctx = |e| self.context(e, Operation::Read, None);
        let encryption = self.shared.encryption.as_ref().ok_or_else(|| {
            ctx(Error::new(
                ErrorKind::InvalidInput,
                "an encrypted piece handed to an image that is not encrypted",
            ))
        })?;
        if input.len() != output.len() {
            return Err(ctx(Error::new(
                ErrorKind::InvalidInput,
                "an encrypted piece decoded into a unit of another size",
            )));
        }
        output.copy_from_slice(input);
        encryption.decrypt(host, output).map_err(ctx)
    }

    /// Pushes the pieces of the read `offset..end`, this request's from `start`, with the entries `lookup`
    /// gives (under the metadata lock, shared or exclusive). `Ok(false)` when `lookup` had no answer for a
    /// cluster (its L2 table is not cached); the caller truncates `out`.
    fn map_read_with(
        &self,
        mut lookup: impl FnMut(u64) -> Result<Option<(L2Entry, u64)>>,
        offset: u64,
        end: u64,
        start: usize,
        out: &mut Vec<ReadMapping>,
    ) -> Result<bool> {
        let g = &self.shared.geometry;
        let cs = g.cluster_size;
        let step = g.subcluster_size();
        let mut pos = offset;
        // The entry of the cluster being walked (looked up once for all its subclusters).
        let mut current = None;
        while pos < end {
            let gc = pos >> g.cluster_bits;
            let (entry, bitmap) = match current {
                Some((c, e, b)) if c == gc => (e, b),
                _ => {
                    let Some((e, b)) = lookup(gc)? else {
                        return Ok(false);
                    };
                    current = Some((gc, e, b));
                    (e, b)
                }
            };
            let index = (pos % cs) >> g.subcluster_bits;
            let n = (step - pos % step).min(end - pos);
            match Subcluster::of(entry, bitmap, index, g, pos)? {
                // Encrypted data: the sectors holding the piece, decrypted by `decode` with the IVs of their
                // host sectors.
                Subcluster::Data { host } if self.shared.encryption.is_some() => {
                    encrypted_read(host + pos % cs, n).push_onto(out, start)
                }
                Subcluster::Data { host } => match &self.shared.data_file {
                    None => ReadMapping::Host {
                        file: IMAGE_FILE,
                        offset: host + pos % cs,
                        len: n,
                    }
                    .push_onto(out, start),
                    // On the queue's host queue when the data file is a host file (zeros past its end, as a
                    // raw image reads).
                    Some(_) if self.files.len() > DATA_HOST_FILE => ReadMapping::Host {
                        file: DATA_HOST_FILE,
                        offset: host + pos % cs,
                        len: n,
                    }
                    .push_onto(out, start),
                    // Zeros past the end of the data file, which QEMU does not bound either.
                    Some(data) => push_disk_read(
                        out,
                        start,
                        DATA_FILE_DISK,
                        data.disk.logical_size(),
                        host + pos % cs,
                        n,
                    ),
                },
                Subcluster::Zero { .. } => ReadMapping::Zero { len: n }.push_onto(out, start),
                Subcluster::Unallocated { .. } => match &self.shared.backing {
                    // Zeros past the end of a shorter backing file.
                    Some(backing) => push_disk_read(out, start, BACKING_DISK, backing.size, pos, n),
                    None => ReadMapping::Zero { len: n }.push_onto(out, start),
                },
                // Inflated by `decode`: at most two clusters of compressed bytes, zeros past the end of the
                // file.
                Subcluster::Compressed { host, size } => ReadMapping::Encoded {
                    file: IMAGE_FILE,
                    offset: host,
                    host_len: size.min(2 * cs),
                    decoded_len: cs,
                    skip: pos % cs,
                    len: n,
                    codec: u64::from(g.compression_type),
                }
                .push_onto(out, start),
            }
            pos += n;
        }
        Ok(true)
    }

    /// Pushes the pieces of the write `offset..end` (under the metadata lock), this request's from `start`,
    /// allocating runs of fresh clusters. On failure the caller gives back what was allocated.
    fn map_write_locked(
        &self,
        meta: &mut Metadata,
        offset: u64,
        end: u64,
        start: usize,
        out: &mut Vec<WriteMapping>,
    ) -> Result<()> {
        let g = &self.shared.geometry;
        let cs = g.cluster_size;
        let file = &self.shared.file;
        let mut slow_seen = false;
        let mut pos = offset;
        if self.shared.encryption.is_some() {
            // Encrypted data is encrypted into a buffer by `write_slow` (see `slow_write`).
            WriteMapping::Slow { len: end - offset }.push_onto(out, start);
            return Ok(());
        }
        while pos < end {
            let (gc, in_off) = (pos >> g.cluster_bits, pos % cs);
            let n = (cs - in_off).min(end - pos);
            match self.classify_write(meta, gc, in_off, n)?.plan {
                WritePlan::InPlace(host) => {
                    meta.guard_data_write(file, host + in_off, n)?;
                    self.in_place_piece(host + in_off, n).push_onto(out, start);
                    pos += n;
                }
                // After a slow piece, fresh clusters are slow too: the slow path allocates in guest order, so
                // the request's clusters lie on the host in guest order, as QEMU lays them out.
                WritePlan::Allocate if slow_seen => {
                    WriteMapping::Slow { len: n }.push_onto(out, start);
                    pos += n;
                }
                WritePlan::Allocate => {
                    let link = self.allocate_run(meta, gc, end)?;
                    let len = link.count * cs;
                    out.push(WriteMapping::Allocated {
                        file: IMAGE_FILE,
                        offset: link.host,
                        len,
                        link,
                    });
                    pos += len;
                }
                WritePlan::Slow => {
                    slow_seen = true;
                    WriteMapping::Slow { len: n }.push_onto(out, start);
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// The piece of an in-place write of `len` bytes at host `at`: the image file, or the data file (a host
    /// file of this handle's when it is one, else `Disk` 1).
    fn in_place_piece(&self, at: u64, len: u64) -> WriteMapping {
        match &self.shared.data_file {
            None => WriteMapping::Host {
                file: IMAGE_FILE,
                offset: at,
                len,
            },
            Some(_) if self.files.len() > DATA_HOST_FILE => WriteMapping::Host {
                file: DATA_HOST_FILE,
                offset: at,
                len,
            },
            Some(_) => WriteMapping::Disk {
                disk: DATA_FILE_DISK,
                offset: at,
                len,
            },
        }
    }

    /// Pushes the pieces of the write `offset..end`, this request's from `start`, under the metadata lock's
    /// shared side, when every cluster it touches is written in place (its L2 table cached, the overlap check
    /// decided in memory) and no persistent bitmap tracks writes: `Ok(false)` otherwise (the caller truncates
    /// `out` and maps the write exclusively).
    fn map_write_in_place(
        &self,
        meta: &Metadata,
        offset: u64,
        end: u64,
        start: usize,
        out: &mut Vec<WriteMapping>,
    ) -> Result<bool> {
        let g = &self.shared.geometry;
        let cs = g.cluster_size;
        let mut pos = offset;
        while pos < end {
            let (gc, in_off) = (pos >> g.cluster_bits, pos % cs);
            let n = (cs - in_off).min(end - pos);
            let Some((entry, bitmap)) = self.cached_lookup_with_bitmap(meta, gc)? else {
                return Ok(false);
            };
            let WritePlan::InPlace(host) = self
                .classify_entry(meta, gc, in_off, n, entry, bitmap)?
                .plan
            else {
                return Ok(false);
            };
            if !meta.data_write_allowed(host + in_off, n) {
                return Ok(false);
            }
            self.in_place_piece(host + in_off, n).push_onto(out, start);
            pos += n;
        }
        Ok(true)
    }

    /// Allocates the run of whole fresh clusters from guest cluster `gc` (which the classifier answered
    /// `Allocate` for) up to guest offset `end`, inside one L2 table: the L2 table made writable first, then
    /// the clusters, contiguous (qemu's layout), checked against the overlap guard and marked in flight. The
    /// link ([`link_allocation`](Qcow2::link_allocation)) makes them visible once their data is written.
    pub(crate) fn allocate_run(
        &self,
        meta: &mut Metadata,
        gc: u64,
        end: u64,
    ) -> Result<AllocationLink> {
        let g = &self.shared.geometry;
        let cs = g.cluster_size;
        let file = &self.shared.file;
        let table_end = (gc / g.l2_entries + 1) * g.l2_entries;
        let mut count = 1;
        while gc + count < table_end
            && (gc + count + 1) * cs <= end
            && self.classify_write(meta, gc + count, 0, cs)?.plan == WritePlan::Allocate
        {
            count += 1;
        }
        meta.writable_l2_table(file, gc)?;
        let host = meta.allocate_clusters(file, count)?;
        if let Err(e) = meta.guard_data_write(file, host, count * cs) {
            let _ = meta.change_refcount_range(file, host, count * cs, -1);
            return Err(e);
        }
        for c in gc..gc + count {
            meta.in_flight.insert(c);
        }
        Ok(AllocationLink {
            guest: gc,
            host,
            count,
        })
    }

    /// Gives back the clusters of the `Allocated` pieces among `pieces` (a request that failed while being
    /// mapped) and takes them out of flight. The caller wakes waiters after dropping the lock.
    fn undo_allocations(&self, meta: &mut Metadata, pieces: &[WriteMapping]) {
        let cs = self.cluster_size();
        for piece in pieces {
            if let WriteMapping::Allocated { link, .. } = piece {
                let _ =
                    meta.change_refcount_range(&self.shared.file, link.host, link.count * cs, -1);
                for c in link.guest..link.guest + link.count {
                    meta.in_flight.remove(&c);
                }
            }
        }
    }

    /// Links the clusters of `link` into their L2 entries (in the cache) after their data was written, or
    /// gives them back when `written` failed; takes them out of flight and wakes waiters either way.
    pub(crate) fn link_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let file = &self.shared.file;
        let cs = self.cluster_size();
        let mut meta = self.lock_metadata();
        // The link comes back from an engine: refuse one this image did not hand out (its clusters would not
        // be in flight) rather than link arbitrary clusters.
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
                format!("allocation link {link:?} was not handed out by this image"),
            ));
        }
        let result = match written {
            Err(e) => {
                // Nothing points to the clusters yet: give them back.
                let _ = meta.change_refcount_range(file, link.host, link.count * cs, -1);
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
        self.shared.linked.notify_all();
        result
    }
}

impl Qcow2 {
    /// Sets the persistent bitmaps' bits for a write-zeroes, discard or compressed write of
    /// `offset..offset + len`.
    pub(crate) fn track_write(&self, operation: Operation, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.shared.geometry.size)
            .and_then(|()| {
                self.lock_metadata()
                    .track_write(&self.shared.file, offset, len)
            })
            .map_err(|e| self.context(e, operation, Some(offset)))
    }
}

impl Mapper for Qcow2 {
    fn format_name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn logical_size(&self) -> u64 {
        self.shared.geometry.size
    }

    fn host_files(&self) -> &[HostFile] {
        &self.files
    }

    /// The image file's geometry, with the cluster size as discard granularity: QCOW2 frees whole clusters
    /// (QEMU's qcow2 sets `pdiscard_alignment` to it, and virtio-blk's default `discard_granularity` follows).
    fn topology(&self) -> blk_core::DiskTopology {
        let host = self
            .files
            .first()
            .map(HostFile::topology)
            .unwrap_or_default();
        let cluster = u32::try_from(self.shared.geometry.cluster_size).unwrap_or(u32::MAX);
        blk_core::DiskTopology {
            discard_granularity: cluster.max(host.logical_block_size),
            ..host
        }
    }

    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        Ok(Arc::new(Qcow2::duplicate(self)?))
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        let ctx = |e| self.context(e, Operation::Read, Some(offset));
        check_range(offset, len, self.shared.geometry.size).map_err(ctx)?;
        if let Some(encryption) = &self.shared.encryption {
            // An image opened without its secret (for `info`) serves no guest data at all.
            encryption.cipher().map_err(ctx)?;
        }
        let start = out.len();
        let end = offset + len;
        // The hit path: the metadata lock's shared side, every L2 table from the cache (see `metadata`).
        let meta = self.read_metadata();
        let hit = self.map_read_with(
            |gc| self.cached_lookup_with_bitmap(&meta, gc),
            offset,
            end,
            start,
            out,
        );
        drop(meta);
        let result = match hit {
            Ok(true) => Ok(()),
            Ok(false) => {
                // A table to load: exclusively, from the start of the request.
                out.truncate(start);
                let mut meta = self.lock_metadata();
                self.map_read_with(
                    |gc| self.lookup_with_bitmap(&mut meta, gc).map(Some),
                    offset,
                    end,
                    start,
                    out,
                )
                .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result.map_err(ctx)
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        self.writable(Operation::Write, offset)?;
        let ctx = |e| self.context(e, Operation::Write, Some(offset));
        check_range(offset, len, self.shared.geometry.size).map_err(ctx)?;
        let start = out.len();
        if self.shared.encryption.is_none() {
            // The hit path: overwrites in place under the metadata lock's shared side.
            let meta = self.read_metadata();
            if !meta.tracks_writes() {
                match self.map_write_in_place(&meta, offset, offset + len, start, out) {
                    Ok(true) => return Ok(()),
                    Ok(false) => out.truncate(start),
                    Err(e) => {
                        out.truncate(start);
                        return Err(ctx(e));
                    }
                }
            }
        }
        let mut meta = self.lock_metadata();
        let result = meta
            .track_write(&self.shared.file, offset, len)
            .and_then(|()| self.map_write_locked(&mut meta, offset, offset + len, start, out));
        if result.is_err() {
            if let Some(pieces) = out.get(start..) {
                self.undo_allocations(&mut meta, pieces);
            }
            out.truncate(start);
            drop(meta);
            // The undone allocations took clusters out of flight: wake writers waiting for them.
            self.shared.linked.notify_all();
        }
        result.map_err(ctx)
    }

    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let guest = link.guest.saturating_mul(self.cluster_size());
        self.link_allocation(link, written)
            .map_err(|e| self.context(e, Operation::Write, Some(guest)))
    }

    fn write_slow(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let len = blk_core::buffer::total_len(bufs);
        check_range(offset, len, self.shared.geometry.size)?;
        let mut done = 0;
        while done < len {
            done += self.write_slow_at(offset + done, &range(bufs, done, len - done))?;
        }
        Ok(())
    }

    fn decode(&self, codec: u64, input: &[u8], output: &mut [u8]) -> Result<()> {
        if codec & ENCRYPTED_CODEC != 0 {
            return self.decrypt_piece(codec & !ENCRYPTED_CODEC, input, output);
        }
        // The codec is the image's, the only one a mapping names; decompression checks the output size.
        let kind = self.shared.geometry.compression_type;
        if codec != u64::from(kind) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("compression type {codec} was not handed out by this image"),
            ));
        }
        crate::io::compression::decompress(kind, input, output)
            .map_err(|e| self.context(e, Operation::Read, None))
    }

    fn disk(&self, index: usize) -> Option<&dyn DiskFile> {
        match index {
            BACKING_DISK => self.shared.backing.as_ref().map(|b| &*b.disk),
            DATA_FILE_DISK => self.shared.data_file.as_ref().map(|d| &*d.disk),
            _ => None,
        }
    }

    fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        if let Some(encryption) = &self.shared.encryption {
            // As QEMU, which opens no encrypted image for I/O without its secret: no map either.
            encryption
                .cipher()
                .map_err(|e| self.context(e, Operation::Read, Some(offset)))?;
        }
        self.map_impl(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.writable(Operation::WriteZeroes, offset)?;
        self.track_write(Operation::WriteZeroes, offset, len)?;
        self.write_zeroes_impl(offset, len, may_unmap)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(Operation::Discard, offset)?;
        self.track_write(Operation::Discard, offset, len)?;
        self.discard_impl(offset, len)
    }

    fn flush(&self) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        // Guest data in the data file first, then the metadata pointing to it.
        if let Some(data) = &self.shared.data_file {
            data.disk.flush()?;
        }
        let mut meta = self.lock_metadata();
        meta.store_bitmaps(&self.shared.file)?;
        meta.flush(&self.shared.file)
    }
}
