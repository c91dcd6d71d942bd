//! Write-zeroes without extended L2 entries, as QEMU does it: whole clusters get the zero flag (v3) or are
//! deallocated (v2 without backing file), a batch of clusters of one L2 table at a time (one L2 write and
//! sync, then the refcount decrements and merged punch-holes); partial clusters that already read as zeros
//! are widened to the cluster; everything else is written as zeros through the mapping.

use blk_core::{check_range, write_zeros_mapped, Result};

use crate::image::Qcow2;
use crate::io::discard::holds_reference;
use crate::metadata::tables::{L2Entry, COPIED, L2_OFFSET_MASK, ZERO};
use crate::metadata::Metadata;

impl Qcow2 {
    /// Zeroes as QEMU does: whole clusters (and partial ones that already read as zeros, widened to the
    /// cluster) get the zero flag (v3) or are deallocated (v2 without backing file, qemu's full discard);
    /// everything else is written as zero buffers.
    pub(crate) fn write_zeroes_impl(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        check_range(offset, len, self.shared.geometry.size)?;
        if self.shared.geometry.extended_l2 {
            return self.write_zeroes_extended(offset, len, may_unmap);
        }
        let g = &self.shared.geometry;
        let (cs, size, l2_entries) = (g.cluster_size, g.size, g.l2_entries);
        let v3 = g.version >= 3;
        let in_metadata = v3 || self.shared.backing.is_none();
        let end = offset + len;
        // Whole clusters end here: the request's end rounded down, or the disk's end.
        let whole_end = if end == size { end } else { end / cs * cs };
        let mut pos = offset;
        while pos < end {
            let n = (cs - pos % cs).min(end - pos);
            let whole = pos % cs == 0 && (n == cs || pos + n == size);
            if whole && in_metadata {
                // Every whole cluster from here to the end of this L2 table, in one batch.
                let first = pos / cs;
                let stop = ((first / l2_entries + 1) * l2_entries).min(whole_end.div_ceil(cs));
                self.zero_cluster_run(first, stop, may_unmap || !v3, !v3)?;
                pos = (stop * cs).min(end);
                continue;
            }
            // A partial cluster is zeroed whole only if it still reads as zeros under the lock (a concurrent
            // write may have allocated it since the check).
            let zeroed = in_metadata
                && self.partial_zero_is_free(pos, n)?
                && self.zero_partial_cluster(pos / cs, may_unmap || !v3, !v3)?;
            if !zeroed {
                write_zeros_mapped(self, pos, n)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Whether a partial zero write of `n` bytes at guest offset `pos` may zero its whole cluster (the rest of
    /// the cluster already reads as zeros).
    fn partial_zero_is_free(&self, pos: u64, n: u64) -> Result<bool> {
        let cs = self.cluster_size();
        let gc = pos / cs;
        let entry = {
            let mut meta = self.lock_metadata();
            self.lookup(&mut meta, gc)?
        };
        Ok(match entry {
            L2Entry::Zero { .. } => true,
            // QEMU's is_zero: the rest of the cluster reads as zeros through the backing file (past its end,
            // or zero / unallocated there), asked without the metadata lock (rule 4).
            L2Entry::Unallocated => match &self.shared.backing {
                None => true,
                Some(backing) => {
                    let start = gc * cs;
                    let end = (start + cs).min(self.shared.geometry.size);
                    backing.reads_zero(start, pos)? && backing.reads_zero(pos + n, end)?
                }
            },
            _ => false,
        })
    }

    /// Zeroes whole guest clusters `first..stop` (one L2 table) under one lock hold: new entries first, then
    /// one flush and the released clusters' refcounts and punches (`release_all`). Stops at the first bad
    /// entry; what was changed before it is still released.
    fn zero_cluster_run(
        &self,
        first: u64,
        stop: u64,
        may_unmap: bool,
        deallocate: bool,
    ) -> Result<()> {
        let mut meta = self.lock_metadata();
        let mut released = Vec::new();
        let mut result = Ok(());
        for gc in first..stop {
            meta = self.wait_cluster(meta, gc);
            if let Err(e) =
                self.zero_entry(&mut meta, gc, may_unmap, deallocate, false, &mut released)
            {
                result = Err(e);
                break;
            }
        }
        self.release_all(&mut meta, released, crate::io::discard::Freed::Request)?;
        result
    }

    /// Zeroes the whole guest cluster `gc` for a partial zero write, only if it is still unallocated or a
    /// zero cluster; returns whether it did.
    fn zero_partial_cluster(&self, gc: u64, may_unmap: bool, deallocate: bool) -> Result<bool> {
        let meta = self.lock_metadata();
        let mut meta = self.wait_cluster(meta, gc);
        let mut released = Vec::new();
        let zeroed = self.zero_entry(&mut meta, gc, may_unmap, deallocate, true, &mut released)?;
        self.release_all(&mut meta, released, crate::io::discard::Freed::Request)?;
        Ok(zeroed)
    }

    /// Makes guest cluster `gc` read as zeros in its L2 entry: the zero flag (keeping an allocation unless
    /// `may_unmap`), or with `deallocate` (v2) an unallocated entry; the replaced entry is pushed to
    /// `released` when it loses its reference. With `only_if_zero`, does nothing and returns `false` unless
    /// the cluster is unallocated or already a zero cluster.
    fn zero_entry(
        &self,
        meta: &mut Metadata,
        gc: u64,
        may_unmap: bool,
        deallocate: bool,
        only_if_zero: bool,
        released: &mut Vec<L2Entry>,
    ) -> Result<bool> {
        let file = &self.shared.file;
        let raw = meta.l2_entry(file, gc)?;
        let entry = self.lookup_for_update(meta, gc)?;
        if only_if_zero && !matches!(entry, L2Entry::Unallocated | L2Entry::Zero { .. }) {
            return Ok(false);
        }
        let new = match entry {
            _ if deallocate => 0,
            L2Entry::Data { host, copied: true }
            | L2Entry::Zero {
                host: Some(host),
                copied: true,
            } if !may_unmap => host | COPIED | ZERO,
            _ => ZERO,
        };
        if new == raw {
            return Ok(true);
        }
        meta.set_l2_entry(file, gc, new)?;
        if let (L2Entry::Data { host, .. }, true) = (entry, new & ZERO != 0) {
            if new & L2_OFFSET_MASK != 0 {
                // A zero cluster keeping its data-file cluster: zero it there too, as QEMU does.
                self.zero_data_cluster(host);
            }
        }
        if holds_reference(entry) && new & L2_OFFSET_MASK == 0 {
            released.push(entry);
        }
        Ok(true)
    }
}
