//! Write-zeroes with extended L2 entries, as QEMU does it at subcluster granularity: the "zero" bits of whole
//! subclusters are set (whole clusters: all of them, unmapping the cluster when allowed); a partial
//! subcluster is zeroed whole only when the rest of it already reads as zeros and it is not allocated,
//! otherwise zeros are written as data, through the mapping. (Writes: `slow_write`; discards: `discard`.)

use blk_core::{write_zeros_mapped, Result};

use crate::image::Qcow2;
use crate::io::slow_write::allocated_host;
use crate::metadata::subclusters::{alloc_range, zero_range, Subcluster, SUBCLUSTERS};
use crate::metadata::tables::L2Entry;

impl Qcow2 {
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
                    write_zeros_mapped(self, pos, n)?;
                }
                pos += n;
                continue;
            }
            let stop = if end == size { end } else { end / sc * sc };
            if !self.zero_aligned(pos, stop, may_unmap, false)? {
                write_zeros_mapped(self, pos, stop - pos)?;
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
                self.release_all(
                    &mut meta,
                    if release { vec![entry] } else { Vec::new() },
                    crate::io::discard::Freed::Request,
                )?;
            }
            c += 1;
        }
        Ok(true)
    }
}
