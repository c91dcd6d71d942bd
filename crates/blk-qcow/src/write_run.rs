//! Multi-cluster writes in one host write: runs of clusters already allocated in place and contiguous on the
//! host, and runs of whole unallocated clusters allocated together (contiguous, like qemu's layout).

use blk_core::{IoBuf, Result};

use crate::qcow2::Qcow2;
use crate::tables::{L2Entry, COPIED};
use blk_core::buffer::range;

impl Qcow2 {
    /// Writes as much as one host write can take from guest offset `pos` (at most up to `end`), the data
    /// being `bufs` from byte `done`. Returns the bytes written; 0 leaves `pos` to the per-cluster path
    /// (copy-on-write, partial allocations, clusters being allocated by someone else).
    pub(crate) fn write_run(
        &self,
        pos: u64,
        end: u64,
        bufs: &[IoBuf<'_>],
        done: u64,
    ) -> Result<u64> {
        let g = &self.shared.geometry;
        let cs = g.cluster_size;
        let file = &self.shared.file;
        let gc0 = pos / cs;
        let mut meta = self.lock_metadata();
        if meta.in_flight.contains(&gc0) {
            return Ok(0);
        }
        match self.lookup(&mut meta, gc0)? {
            L2Entry::Data { host, copied: true } => {
                let start = host + pos % cs;
                let mut run_end = ((gc0 + 1) * cs).min(end);
                while run_end < end {
                    let gc = run_end / cs;
                    if meta.in_flight.contains(&gc) {
                        break;
                    }
                    match self.lookup(&mut meta, gc)? {
                        L2Entry::Data {
                            host: h,
                            copied: true,
                        } if h == host + (gc - gc0) * cs => {
                            run_end = (run_end + cs).min(end);
                        }
                        _ => break,
                    }
                }
                meta.guard_data_write(file, start, run_end - pos)?;
                drop(meta);
                self.write_data(start, &range(bufs, done, run_end - pos))?;
                Ok(run_end - pos)
            }
            L2Entry::Unallocated | L2Entry::Zero { host: None, .. } if pos % cs == 0 => {
                // Whole clusters of one L2 table that need no copy-on-write.
                let table_end = (gc0 / g.l2_entries + 1) * g.l2_entries;
                let mut n = 0;
                while gc0 + n < table_end && pos + (n + 1) * cs <= end {
                    let gc = gc0 + n;
                    if meta.in_flight.contains(&gc) {
                        break;
                    }
                    match self.lookup(&mut meta, gc)? {
                        L2Entry::Unallocated | L2Entry::Zero { host: None, .. } => n += 1,
                        _ => break,
                    }
                }
                if n < 2 {
                    return Ok(0);
                }
                // The L2 table first, then the data, as qemu lays them out.
                meta.writable_l2_table(file, gc0)?;
                let (host, fresh) = self.allocate_data(&mut meta, gc0, n)?;
                meta.guard_data_write(file, host, n * cs)?;
                for gc in gc0..gc0 + n {
                    meta.in_flight.insert(gc);
                }
                drop(meta);
                let written = self.write_data(host, &range(bufs, done, n * cs));
                let mut meta = self.lock_metadata();
                let result = match written {
                    Err(e) => {
                        // Nothing points to the clusters yet: give them back.
                        if fresh {
                            let _ = meta.change_refcount_range(file, host, n * cs, -1);
                        }
                        Err(e)
                    }
                    // A failure while linking leaves at most leaked clusters.
                    Ok(()) => (0..n).try_for_each(|i| {
                        meta.set_l2_entry(file, gc0 + i, (host + i * cs) | COPIED)
                    }),
                };
                for gc in gc0..gc0 + n {
                    meta.in_flight.remove(&gc);
                }
                drop(meta);
                self.shared.linked.notify_all();
                result.map(|()| n * cs)
            }
            _ => Ok(0),
        }
    }
}
