//! Block allocation: where the next block goes, and the blocks of dynamic disks that writes in flight have
//! reserved ([`WriteMapping::Allocated`](blk_core::WriteMapping::Allocated), linked in
//! [`Mapper::finish_allocation`](blk_core::Mapper::finish_allocation)), so allocating writes run on the
//! backend like any other instead of on the worker pool.
//!
//! A block is laid out as QEMU's `alloc_block` lays it out (VHD spec, "Block Allocation Table and Data
//! Blocks") but for its place: at the end of the blocks, its data on a [`DATA_ALIGNMENT`] boundary, its sector
//! bitmap with every bit set, data never written reading as zeros. Its life:
//! 1. **Reserve** (the first write mapped into the unallocated block, under the allocator lock, metadata only):
//!    the file is grown ahead if the block does not fit below the end footer (below); nothing of the block
//!    is written yet.
//! 2. **Data**: every write mapped into the block while it is reserved joins the reservation (a count of
//!    writes in flight) and is a plain host write into the block's data, below the end of the file; 32 writes
//!    of 64 KiB into one new block run at once.
//! 3. **Link**: when the first of those writes has succeeded, the BAT entry is published in memory (after
//!    the block's bitmap state, so a reader that sees the entry sees the block full). The next flush or
//!    close writes the block's bitmap (with the padding before it: one write from a 4 KiB boundary), then
//!    the BAT entries linked since (in as few writes as the BAT allows: one for the usual run of neighbouring
//!    entries), then syncs. An entry points at a block inside the durable length of the file whose first
//!    data is written; the block's other writes still in flight are a disk's ordinary writes in flight.
//!    Writing bitmap and entry as each block came cost two stalls per block on the thread that maps and
//!    completes requests: synchronous writes, and the entry's 512-byte sector smaller than ext4's block, a
//!    direct write ext4 makes wait for every direct write in flight (together about 15% of the time of
//!    allocating 64 KiB writes on this project's machine). A process killed before the flush loses the
//!    links, as it may lose any write not flushed: the blocks read as before (zeros), their places are a
//!    leak `check` reports.
//! 4. **Give back**: when every write of a reservation failed (or never ran), the block is not linked; if it
//!    is still the last one and the file is not grown ahead, the footer moves back to where it began and the
//!    file is cut there; else its place stays unused.
//!
//! A process killed at any step leaves an image that opens and checks clean up to a leak (the grown tail, or
//! a block's place between the last linked block and the footer).
//!
//! # Growing ahead
//!
//! Every new block needs the file to end after it with a footer, and that length durable (a sync) before a
//! BAT entry may point into it: else a power loss could leave an entry pointing past the end of the file, an
//! image that no longer opens. A sync per block (a virtual disk's cache flush each time) took about 40% of the
//! time of allocating 64 KiB writes, so the footer is moved ahead of need, one sync for many blocks:
//! `clamp(end / 8, GROW_MIN, GROW_MAX)` past the end of the block that needs it (in whole blocks; 12.5% of
//! the file at most while open, QCOW2's rule), the space in between a hole, whatever lay there before zeroed.
//! A new block inside the grown part writes nothing of its own but its data until the next flush, which
//! writes its bitmap before its BAT entry and syncs after both: a power loss during that flush can leave a
//! durable BAT entry whose bitmap is not, and the block then reads as zeros (blk) or as zeros or the data
//! written (QEMU, which ignores bitmaps), as unflushed writes lost; never bytes of another block. Growing
//! again zeroes only the old end footer (a small write) when this session grew the file before: the rest up
//! to it is the hole it grew by. Closing the image (the last handle) moves the footer back to
//! its place after the last block and cuts the file there; a crash leaves the grown tail, which `check`
//! reports as leaked blocks (`-r leaks` cuts it) and the next growth zeroes and reuses.
//!
//! Differencing disks set bitmap bits only for the sectors written (the rest comes from the parent): they
//! allocate on the slow path (`slow_write`), under the same lock, one block and one sync at a time (the
//! footer right after the block), and never reserve or grow ahead.

use std::collections::BTreeMap;
use std::sync::MutexGuard;

use blk_core::{AllocationLink, Error, ErrorKind, HostFile, Result};
use zerocopy::IntoBytes;

use crate::bat::{SparseLayout, BITMAP_FULL, UNALLOCATED};
use crate::footer::{DiskType, FOOTER_SIZE};
use crate::sector_bitmap::set_bit;
use crate::vhd::Vhd;

/// Where the next block goes and the reservations in flight; behind [`SparseLayout::allocator`]'s lock.
#[derive(Debug)]
pub(crate) struct Allocator {
    /// Where the last block ends (QEMU's `free_data_block_offset`): the next block goes at or just after it
    /// (see [`SparseLayout::block_start`]), and the end footer sits there while the file is not grown ahead.
    pub(crate) next: u64,
    /// Where the end footer sits while the file is grown ahead of the blocks (see the module docs, "Growing
    /// ahead"); `None` when it sits right after the last block.
    pub(crate) grown: Option<u64>,
    /// Blocks reserved by writes in flight (a few at a time: their vector grows once to the working set).
    in_flight: Vec<Reservation>,
    /// Blocks linked in memory whose sector bitmaps and BAT entries are not in the file yet (see the module
    /// docs, "Link"), each with where its padding starts (its reservation's `from`): at most one per block
    /// of the disk.
    unwritten: BTreeMap<u64, u64>,
}

/// A block reserved by writes in flight.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    block: u64,
    /// Where the last block ended before this one (the allocator's `next` then).
    from: u64,
    /// Where the block (its sector bitmap) starts in the file.
    start: u64,
    /// Writes mapped into it whose `finish_allocation` has not come yet.
    pending: u64,
    /// Whether its BAT entry was written and published.
    linked: bool,
}

impl Allocator {
    /// The allocator of an image whose next block goes at `next`.
    pub(crate) fn new(next: u64) -> Allocator {
        Allocator {
            next,
            grown: None,
            in_flight: Vec::new(),
            unwritten: BTreeMap::new(),
        }
    }
}

/// The BAT entry of a block starting at `start`, or the error when the file outgrew 32-bit sector numbers.
pub(crate) fn entry_for(start: u64) -> Result<u32> {
    u32::try_from(start / 512)
        .ok()
        .filter(|&s| s != UNALLOCATED)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NoSpace,
                "the image file outgrew the BAT's 32-bit sector numbers",
            )
        })
}

impl SparseLayout {
    /// Takes the allocator lock (see the crate docs for the lock order).
    pub(crate) fn lock_allocator(&self) -> MutexGuard<'_, Allocator> {
        self.allocator.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// New blocks' data start at a multiple of this in the file: 4 KiB, the block size of the common Linux file
/// systems (ext4, XFS) and the page size. QEMU packs blocks end to end, so that the data of all but the first
/// sits 512 bytes past such a boundary; every O_DIRECT data write then misses the file system's blocks, and
/// ext4 serializes such writes against every other direct write of the file (64 KiB writes at depth 32 took
/// 2.4x as long 512 bytes off alignment on this project's machine). The padding, at most 4 KiB less the bitmap
/// per block, is nobody's: QEMU and every reader find blocks where the BAT says.
pub const DATA_ALIGNMENT: u64 = 4096;

/// Least growth of the file ahead of the blocks (see the module docs, "Growing ahead").
pub const GROW_MIN: u64 = 16 << 20;
/// Most growth of the file ahead of the blocks.
pub const GROW_MAX: u64 = 256 << 20;

/// The largest O_DIRECT unit a BAT entry is written in whole from memory (larger units read first).
const MAX_BAT_UNIT: u64 = 64 << 10;

impl SparseLayout {
    /// Where a new block's sector bitmap goes when the last block (or the metadata) ends at `next`: the first
    /// place from which its data starts at a multiple of [`DATA_ALIGNMENT`] (blocks smaller than that are
    /// packed, as QEMU packs them). The padding before it is zeros (the end footer sits at `next` while the
    /// file is not grown ahead, as QEMU leaves it).
    pub fn block_start(&self, next: u64) -> u64 {
        if self.block_size % DATA_ALIGNMENT != 0 {
            return next;
        }
        (next + self.bitmap_size).next_multiple_of(DATA_ALIGNMENT) - self.bitmap_size
    }
}

impl Vhd {
    /// Prepares the place of a new block of a differencing disk after `next` (where the last block ends)
    /// before its data goes in, and returns where the block starts: the footer right after it (QEMU's place),
    /// bytes past it cut off, and its sector bitmap with the bits of sectors `first..=last` set, the padding
    /// before it zeroed (one write). (Clear bits read from the parent: leftovers in the data need no zeroing.)
    pub(crate) fn prepare_block(
        &self,
        sparse: &SparseLayout,
        next: u64,
        (first, last): (u64, u64),
    ) -> Result<u64> {
        let start = sparse.block_start(next);
        let data = start + sparse.bitmap_size;
        let end = data + sparse.block_size;
        let old_len = self.file.len()?;
        // The footer first, after the new block: from here on the file ends with a footer whatever happens
        // next (the block's place is a hole, or leftovers of an allocation that never finished).
        self.file.write_all_at(end, self.shared.footer.as_bytes())?;
        if old_len > end + FOOTER_SIZE {
            // Bytes past the new footer are no block's (the BAT points below `start`): a leftover from an
            // interrupted allocation or a repair. The file must end with the footer.
            self.file.set_len(end + FOOTER_SIZE)?;
        }
        // The padding and the bitmap: less than DATA_ALIGNMENT bytes more than the bitmap (512 KiB at most).
        let mut head = vec![0u8; (data - next) as usize];
        let bitmap = &mut head[(start - next) as usize..];
        (first..=last).for_each(|s| set_bit(bitmap, s));
        self.file.write_all_at(next, &head)?;
        Ok(start)
    }

    /// Grows the file ahead of the blocks so that a block ending at `end` fits (see the module docs, "Growing ahead"): the
    /// footer written at its new place, what lies between the last block (`from`) and it zeroed (leftovers
    /// of an interrupted allocation, a crash's grown tail), the file cut after the footer, and synced.
    fn grow_ahead(
        &self,
        sparse: &SparseLayout,
        alloc: &mut Allocator,
        from: u64,
        end: u64,
    ) -> Result<()> {
        let span = sparse.bitmap_size + sparse.block_size;
        let ahead = (end / 8).clamp(GROW_MIN, GROW_MAX).div_ceil(span) * span;
        let footer_at = sparse.block_start(end + ahead);
        let old_len = self.file.len()?;
        // The footer first: from here on the file ends with a footer whatever happens next.
        self.file
            .write_all_at(footer_at, self.shared.footer.as_bytes())?;
        if old_len > footer_at + FOOTER_SIZE {
            self.file.set_len(footer_at + FOOTER_SIZE)?;
        }
        match alloc.grown {
            // Grown before in this session: between the last block and the old footer lies the hole the file
            // grew by (a reservation given back zeroes what its failed writes left, or stays below `next`),
            // so only the old footer needs zeroing: a small write, where punching a hole would first wait for
            // every direct write in flight.
            Some(old_footer) if old_footer >= from && old_footer + FOOTER_SIZE == old_len => {
                self.file
                    .write_all_at(old_footer, &[0u8; FOOTER_SIZE as usize])?;
            }
            // The old end footer and whatever an interrupted allocation or a crash's grown tail left: new
            // blocks read as zeros.
            _ if old_len > from => {
                self.file
                    .zero_range(from, old_len.min(footer_at) - from, false, false)?;
            }
            _ => {}
        }
        self.file.sync_data()?;
        alloc.grown = Some(footer_at);
        Ok(())
    }

    /// On close: writes the BAT entries not flushed yet, then cuts a file grown ahead back to its blocks (the
    /// end footer right after the last block, synced, then the tail cut off). Errors leave the grown tail,
    /// which `check` reports as a leak.
    pub(crate) fn cut_grown_tail(file: &HostFile, sparse: &SparseLayout, footer: &[u8]) {
        let mut alloc = sparse.lock_allocator();
        // The links not flushed yet first (an error leaves those blocks a leak, as a crash would).
        let _ = write_unwritten_entries(file, sparse, &mut alloc);
        if alloc.grown.is_none() {
            return;
        }
        // QEMU's place, right after the last block: QEMU allocates its next block there and assumes the
        // file ends there (a footer further on would sit inside that block's data).
        let place = alloc.next;
        let cut = file
            .write_all_at(place, footer)
            .and_then(|()| file.sync_data())
            .and_then(|()| file.set_len(place + FOOTER_SIZE));
        if cut.is_ok() {
            let _ = file.sync_data();
        }
    }

    /// Reserves unallocated `block` of a dynamic disk for a write, or joins the reservation in flight: the
    /// link to hand to `finish_allocation` and where the block's data starts in the file. `None` when the
    /// block was linked meanwhile (the caller maps it again).
    pub(crate) fn reserve(
        &self,
        sparse: &SparseLayout,
        block: u64,
    ) -> Result<Option<(AllocationLink, u64)>> {
        let mut alloc = sparse.lock_allocator();
        if sparse.entry(block) != UNALLOCATED {
            return Ok(None);
        }
        let link = |start: u64| {
            let link = AllocationLink {
                guest: block,
                host: start,
                count: 1,
            };
            Some((link, start + sparse.bitmap_size))
        };
        if let Some(r) = alloc.in_flight.iter_mut().find(|r| r.block == block) {
            r.pending += 1;
            return Ok(link(r.start));
        }
        let from = alloc.next;
        let start = sparse.block_start(from);
        entry_for(start)?;
        let data = start + sparse.bitmap_size;
        let end = data + sparse.block_size;
        if alloc.grown.is_none_or(|footer| end > footer) {
            self.grow_ahead(sparse, &mut alloc, from, end)?;
        }
        // The padding and the bitmap are written with the BAT entry, by the next flush or close.
        alloc.next = end;
        alloc.in_flight.push(Reservation {
            block,
            from,
            start,
            pending: 1,
            linked: false,
        });
        Ok(link(start))
    }

    /// One write into a reservation finished with `written`: the first success links the block; the last
    /// write of an unlinked reservation gives it back. Returns the write's error, or the link's.
    pub(crate) fn finish_reservation(
        &self,
        sparse: &SparseLayout,
        link: AllocationLink,
        written: Result<()>,
    ) -> Result<()> {
        let mut alloc = sparse.lock_allocator();
        let found = alloc
            .in_flight
            .iter()
            .position(|r| r.block == link.guest && r.start == link.host);
        let Some(index) = found else {
            written?;
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("no block reservation matches {link:?}"),
            ));
        };
        let mut result = written;
        let r = alloc.in_flight[index];
        if result.is_ok() && !r.linked {
            result = entry_for(r.start).map(|sector| {
                // The entry is written by the next flush or close (see the module docs, "Link").
                sparse.set_bitmap_state(r.block, BITMAP_FULL);
                sparse.publish(r.block, sector);
                alloc.unwritten.insert(r.block, r.from);
            });
            alloc.in_flight[index].linked = result.is_ok();
        }
        alloc.in_flight[index].pending -= 1;
        if alloc.in_flight[index].pending == 0 {
            let r = alloc.in_flight.swap_remove(index);
            let end = r.start + sparse.bitmap_size + sparse.block_size;
            if !r.linked && alloc.next == end {
                let reusable = match alloc.grown {
                    None => {
                        // The footer back right after the last block (QEMU's place), the block's place cut
                        // off; should either fail, the place stays a leak that `check` reports and the next
                        // allocation reuses.
                        if self
                            .file
                            .write_all_at(r.from, self.shared.footer.as_bytes())
                            .is_ok()
                        {
                            let _ = self.file.set_len(r.from + FOOTER_SIZE);
                        }
                        true
                    }
                    // Inside the grown part: reused once a failed write's bytes there are gone.
                    Some(_) => self
                        .file
                        .zero_range(r.start, end - r.start, false, false)
                        .is_ok(),
                };
                if reusable {
                    alloc.next = r.from;
                }
            }
        }
        result
    }

    /// Writes `block`'s BAT entry (the block at `start`) and publishes it, full (dynamic) or to be classified
    /// from its bitmap (differencing). The allocator lock is held.
    pub(crate) fn link_block(&self, sparse: &SparseLayout, block: u64, start: u64) -> Result<()> {
        let sector = entry_for(start)?;
        write_bat_entry(&self.file, sparse, block, sector)?;
        if self.shared.disk_type == DiskType::Dynamic {
            sparse.set_bitmap_state(block, BITMAP_FULL);
        }
        sparse.publish(block, sector);
        Ok(())
    }
}

/// Writes `block`'s BAT entry. With O_DIRECT, the aligned unit of the BAT holding it is written whole from
/// the table in memory (entries linked but not written yet go with it, early: their blocks are linked), so
/// the write needs no read first; else, or when the unit reaches outside the BAT, the 4 bytes alone.
fn write_bat_entry(file: &HostFile, sparse: &SparseLayout, block: u64, sector: u32) -> Result<()> {
    let bat_at = sparse.bat_offset + 4 * block;
    let bat_end = sparse.bat_offset + 4 * sparse.entry_count();
    let unit = file
        .direct_io_alignment()
        .map_or(0, |a| u64::from(a.offset));
    if (4..=MAX_BAT_UNIT).contains(&unit) {
        let first = bat_at / unit * unit;
        if first >= sparse.bat_offset
            && (first - sparse.bat_offset) % 4 == 0
            && first + unit <= bat_end
        {
            let first_block = (first - sparse.bat_offset) / 4;
            // At most MAX_BAT_UNIT bytes.
            let mut bytes = vec![0u8; unit as usize];
            for (i, entry) in bytes.chunks_exact_mut(4).enumerate() {
                let b = first_block + i as u64;
                let value = if b == block { sector } else { sparse.entry(b) };
                entry.copy_from_slice(&value.to_be_bytes());
            }
            return file.write_all_at(first, &bytes);
        }
    }
    file.write_all_at(bat_at, &sector.to_be_bytes())
}

/// The most bytes of the BAT one write of [`write_unwritten_entries`] covers.
const MAX_BAT_RUN: u64 = 1 << 20;

/// Writes the BAT entries linked since the last call (see the module docs, "Link"), from the table in memory:
/// each run of neighbouring entries (within [`MAX_BAT_RUN`] bytes) as one write of the O_DIRECT units
/// holding it, or entry by entry where a unit reaches outside the BAT. The allocator lock is held; the caller
/// syncs. Entries that fail to be written stay to be written.
pub(crate) fn write_unwritten_entries(
    file: &HostFile,
    sparse: &SparseLayout,
    alloc: &mut Allocator,
) -> Result<()> {
    let unit = file
        .direct_io_alignment()
        .map_or(4, |a| u64::from(a.offset))
        .clamp(4, MAX_BAT_UNIT);
    let bat_end = sparse.bat_offset + 4 * sparse.entry_count();
    let at = |block: u64| sparse.bat_offset + 4 * block;
    // The blocks' padding and bitmaps first (every bit set), then the entries: not synced in between, so a
    // power loss in this flush may keep an entry without its bitmap (see the module docs, "Growing ahead").
    for (&block, &from) in &alloc.unwritten {
        let start = u64::from(sparse.entry(block)) * 512;
        let data = start + sparse.bitmap_size;
        if block >= sparse.entry_count() || start < from || data < from + sparse.bitmap_size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "block {block} was linked at {start:#x}, below its reservation at {from:#x}"
                ),
            ));
        }
        // Less than DATA_ALIGNMENT bytes more than the bitmap (512 KiB at most).
        let mut head = vec![0u8; (data - from) as usize];
        head[(start - from) as usize..].fill(0xff);
        file.write_all_at(from, &head)?;
    }
    while let Some((&first, _)) = alloc.unwritten.first_key_value() {
        let lo = at(first) / unit * unit;
        let mut hi = (at(first) + 4).next_multiple_of(unit);
        let mut run = vec![first];
        for (&b, _) in alloc.unwritten.range(first + 1..) {
            let end = (at(b) + 4).next_multiple_of(unit);
            if at(b) / unit * unit > hi || end - lo > MAX_BAT_RUN {
                break;
            }
            hi = hi.max(end);
            run.push(b);
        }
        if lo >= sparse.bat_offset && (lo - sparse.bat_offset) % 4 == 0 && hi <= bat_end {
            // At most MAX_BAT_RUN + a unit bytes.
            let first_block = (lo - sparse.bat_offset) / 4;
            let mut bytes = vec![0u8; (hi - lo) as usize];
            for (i, entry) in bytes.chunks_exact_mut(4).enumerate() {
                entry.copy_from_slice(&sparse.entry(first_block + i as u64).to_be_bytes());
            }
            file.write_all_at(lo, &bytes)?;
        } else {
            for &b in &run {
                write_bat_entry(file, sparse, b, sparse.entry(b))?;
            }
        }
        for b in run {
            alloc.unwritten.remove(&b);
        }
    }
    Ok(())
}
