//! The VHD's one translation from guest ranges to the image file: [`Mapper`] for [`Vhd`]. blk-core's engines
//! (`MappedDisk` for the synchronous path, `MappedQueue` for queues) do all data I/O from its answers.
//!
//! | request | fixed disk | dynamic disk | differencing disk |
//! |---|---|---|---|
//! | read | one host range | per block: unallocated zeros; full a host range; partial per run of sectors a host range or zeros | the same, with the parent (zeros past its end) instead of zeros |
//! | write | one host range | per block: full a host range; unallocated a fresh allocation (`Allocated`); partial slow | full blocks a host range for sector-aligned pieces; else slow |
//!
//! A block's full/partial state comes from [`Vhd::classify`], which reads its sector bitmap once (on the
//! mapping thread, no lock held) and caches the answer; a lookup of a known block is two atomic loads. A write
//! into an unallocated block of a dynamic disk reserves the block (or joins its reservation) and is linked in
//! [`Mapper::finish_allocation`] (the `allocation` module). Slow pieces (differencing allocations, bitmap bits
//! to set, merges of partial sectors) run through [`Mapper::write_slow`] (the `slow_write` module).

use std::sync::Arc;

use blk_core::{
    check_range, push_disk_read, read_only_error, write_zeros_mapped, AllocationLink, DiskFile,
    DiskTopology, Error, ErrorKind, Extent, HostFile, IoBuf, Mapper, Operation, ReadMapping,
    Result, WriteMapping,
};

use crate::allocation::write_unwritten_entries;
use crate::bat::{SparseLayout, UNALLOCATED};
use crate::footer::DiskType;
use crate::sector_bitmap::Block;
use crate::vhd::Vhd;
use crate::FORMAT_NAME;

/// The index of the image file in [`Mapper::host_files`].
const IMAGE_FILE: usize = 0;
/// The index of a differencing disk's parent for [`Mapper::disk`].
const PARENT: usize = 0;

impl Vhd {
    /// Pushes what lies below this image for `len` guest bytes at `offset`: zeros for dynamic disks, the
    /// parent (zeros past its end) for differencing ones.
    fn push_below(&self, out: &mut Vec<ReadMapping>, start: usize, offset: u64, len: u64) {
        match &self.parent {
            Some(parent) => push_disk_read(out, start, PARENT, parent.logical_size(), offset, len),
            None => ReadMapping::Zero { len }.push_onto(out, start),
        }
    }

    /// Maps a read of a sparse disk, block by block.
    fn map_sparse_read(
        &self,
        sparse: &SparseLayout,
        offset: u64,
        len: u64,
        out: &mut Vec<ReadMapping>,
        start: usize,
    ) -> Result<()> {
        for piece in sparse.pieces(offset, len) {
            match self.classify(sparse, piece.block)? {
                Block::Unallocated => self.push_below(out, start, piece.pos, piece.len),
                Block::Full { data } => ReadMapping::Host {
                    file: IMAGE_FILE,
                    offset: data + piece.in_block,
                    len: piece.len,
                }
                .push_onto(out, start),
                Block::Partial { bitmap, data } => {
                    // Per run of sectors: present ones from the block, the others from below.
                    let end = piece.in_block + piece.len;
                    let (first, last) = (piece.in_block / 512, (end - 1) / 512);
                    let bits = self.read_bitmap(bitmap, first, last)?;
                    let mut at = piece.in_block;
                    while at < end {
                        let (present, run_end) = bits.run(at / 512);
                        let n = (run_end * 512).min(end) - at;
                        if present {
                            ReadMapping::Host {
                                file: IMAGE_FILE,
                                offset: data + at,
                                len: n,
                            }
                            .push_onto(out, start);
                        } else {
                            self.push_below(out, start, piece.pos - piece.in_block + at, n);
                        }
                        at += n;
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps a write of a sparse disk, block by block: in place into full blocks (sector-aligned pieces only
    /// for differencing disks, whose partial sectors merge with the parent); into unallocated blocks of
    /// dynamic disks as a fresh allocation (the block reserved, see the `allocation` module); slow everywhere
    /// else.
    fn map_sparse_write(
        &self,
        sparse: &SparseLayout,
        offset: u64,
        len: u64,
        out: &mut Vec<WriteMapping>,
        start: usize,
    ) -> Result<()> {
        let differencing = self.shared.disk_type == DiskType::Differencing;
        for piece in sparse.pieces(offset, len) {
            let aligned = piece.in_block % 512 == 0 && piece.len % 512 == 0;
            let mapping = loop {
                if differencing && !aligned {
                    break WriteMapping::Slow { len: piece.len };
                }
                match self.classify(sparse, piece.block)? {
                    Block::Full { data } => {
                        break WriteMapping::Host {
                            file: IMAGE_FILE,
                            offset: data + piece.in_block,
                            len: piece.len,
                        }
                    }
                    Block::Unallocated if !differencing => {
                        if let Some((link, data)) = self.reserve(sparse, piece.block)? {
                            break WriteMapping::Allocated {
                                file: IMAGE_FILE,
                                offset: data + piece.in_block,
                                len: piece.len,
                                link,
                            };
                        }
                        // Linked meanwhile: map it again.
                    }
                    Block::Partial { .. } | Block::Unallocated => {
                        break WriteMapping::Slow { len: piece.len }
                    }
                }
            };
            mapping.push_onto(out, start);
        }
        Ok(())
    }

    /// Gives back the reservations of the `Allocated` pieces of a mapping that failed half-way.
    fn give_back(&self, sparse: &SparseLayout, pieces: &[WriteMapping]) {
        for piece in pieces {
            if let WriteMapping::Allocated { link, .. } = *piece {
                let never = Error::new(ErrorKind::Io, "the write was never submitted");
                // Returns `never` itself; the reservation is released all the same.
                let _ = self.finish_reservation(sparse, link, Err(never));
            }
        }
    }
}

impl Mapper for Vhd {
    fn format_name(&self) -> &'static str {
        FORMAT_NAME
    }

    fn logical_size(&self) -> u64 {
        self.shared.size
    }

    fn host_files(&self) -> &[HostFile] {
        std::slice::from_ref(&self.file)
    }

    fn duplicate(&self) -> Result<Arc<dyn Mapper>> {
        let file = self.file.try_clone()?;
        let parent = match &self.parent {
            Some(p) => Some(p.try_clone()?),
            None => None,
        };
        Ok(Arc::new(Vhd {
            file,
            shared: Arc::clone(&self.shared),
            parent,
        }))
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<ReadMapping>) -> Result<()> {
        check_range(offset, len, self.shared.size)?;
        let Some(sparse) = &self.shared.sparse else {
            out.push(ReadMapping::Host {
                file: IMAGE_FILE,
                offset,
                len,
            });
            return Ok(());
        };
        let start = out.len();
        let mapped = self.map_sparse_read(sparse, offset, len, out, start);
        if mapped.is_err() {
            out.truncate(start);
        }
        mapped
    }

    fn map_write(&self, offset: u64, len: u64, out: &mut Vec<WriteMapping>) -> Result<()> {
        if self.file.is_read_only() {
            return Err(read_only_error(Operation::Write).with_offset(offset));
        }
        check_range(offset, len, self.shared.size)?;
        let Some(sparse) = &self.shared.sparse else {
            out.push(WriteMapping::Host {
                file: IMAGE_FILE,
                offset,
                len,
            });
            return Ok(());
        };
        let start = out.len();
        let mapped = self.map_sparse_write(sparse, offset, len, out, start);
        if mapped.is_err() {
            self.give_back(sparse, out.get(start..).unwrap_or_default());
            out.truncate(start);
        }
        mapped
    }

    fn finish_allocation(&self, link: AllocationLink, written: Result<()>) -> Result<()> {
        let Some(sparse) = &self.shared.sparse else {
            written?;
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a fixed disk allocates nothing, yet was asked to link {link:?}"),
            ));
        };
        self.finish_reservation(sparse, link, written).map_err(|e| {
            self.context(
                e,
                Operation::Write,
                Some(link.guest.saturating_mul(sparse.block_size)),
            )
        })
    }

    /// Writes the BAT entries of blocks linked since the last flush (see the `allocation` module), then syncs.
    fn flush(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        if let Some(sparse) = &self.shared.sparse {
            let mut alloc = sparse.lock_allocator();
            write_unwritten_entries(&self.file, sparse, &mut alloc)
                .map_err(|e| self.context(e, Operation::Flush, None))?;
        }
        self.file
            .sync_data()
            .map_err(|e| self.context(e, Operation::Flush, None))
    }

    fn write_slow(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.write_slow_pieces(offset, bufs)
    }

    fn disk(&self, index: usize) -> Option<&dyn DiskFile> {
        match index {
            PARENT => self.parent.as_deref(),
            _ => None,
        }
    }

    /// The VHD shows the guest no geometry of its own.
    fn topology(&self) -> DiskTopology {
        DiskTopology::default()
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        if len == 0 {
            return Ok(Extent::data(offset, 0, None));
        }
        self.map_guest(offset, len)
    }

    /// Fixed disks zero the host range; dynamic disks zero the allocated blocks' data in place and leave
    /// unallocated blocks alone (they read as zeros); differencing disks write zeros through the mapping
    /// (allocating), which hides the parent's data.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let Some(sparse) = &self.shared.sparse else {
            return self.file.zero_range(offset, len, !may_unmap, false);
        };
        if self.shared.disk_type == DiskType::Differencing {
            return write_zeros_mapped(self, offset, len);
        }
        for piece in sparse.pieces(offset, len) {
            let entry = sparse.entry(piece.block);
            if entry != UNALLOCATED {
                let data = sparse.data_offset(entry);
                self.file
                    .zero_range(data + piece.in_block, piece.len, true, false)?;
            }
        }
        Ok(())
    }
}
