//! Persistent dirty bitmaps (QEMU's `qcow2_check_bitmaps_refcounts`): the bitmap directory, each bitmap's
//! table and the clusters it points to are referenced clusters. QEMU reads the bitmaps extension only while
//! the bitmaps autoclear bit is set, and so does the check.

use super::checker::{Checker, Stop};
use super::expected::ExpectedRefcounts;
use super::layout::{decode_be64, read_padded, L2_OFFSET_MASK};

use crate::bitmaps::table::{TABLE_ENTRY_ALL_ONES, TABLE_ENTRY_RESERVED};
use crate::bitmaps::{
    AUTOCLEAR_BITMAPS, EXT_BITMAPS, MAX_BITMAPS, MAX_DIRECTORY_BYTES, MAX_TABLE_ENTRIES,
};
use crate::image::header::Header;

/// Bitmap table entries read at once (the table itself may be up to 1 GiB; it is streamed).
const TABLE_CHUNK: u64 = 1 << 17;

/// Where the bitmap directory is, from the header (None: no bitmaps QEMU would read).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BitmapDirectory {
    count: u64,
    size: u64,
    offset: u64,
}

impl BitmapDirectory {
    /// The directory the header's bitmaps extension describes, when the autoclear bit makes it valid.
    pub fn from_header(header: &Header) -> Option<BitmapDirectory> {
        if header.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return None;
        }
        let (_, data) = header
            .extensions
            .other
            .iter()
            .find(|(kind, _)| *kind == EXT_BITMAPS)?;
        let field = |at: usize, n: usize| {
            data.get(at..at + n)
                .map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        };
        Some(BitmapDirectory {
            count: field(0, 4)?,
            size: field(8, 8)?,
            offset: field(16, 8)?,
        })
    }
}

impl Checker<'_> {
    /// Counts the bitmap directory, the bitmap tables and their clusters.
    pub(super) fn check_bitmaps(&mut self, expected: &mut ExpectedRefcounts) -> Result<(), Stop> {
        let Some(dir) = self.bitmaps else {
            return Ok(());
        };
        if dir.count == 0 {
            return Ok(());
        }
        self.inc(expected, dir.offset, dir.size)?;
        let Some(tables) = self.bitmap_tables(dir) else {
            self.say("ERROR: the bitmap directory cannot be read".to_string());
            self.res.corruptions += 1;
            return Err(Stop);
        };
        let cs = self.layout.cluster_size;
        for (offset, entries) in tables {
            self.inc(expected, offset, entries * 8)?;
            if offset % cs != 0 || entries > u64::from(MAX_TABLE_ENTRIES) {
                self.res.corruptions += 1;
                break;
            }
            let mut done = 0;
            while done < entries {
                let n = TABLE_CHUNK.min(entries - done);
                let at = offset.saturating_add(done * 8);
                let Ok(raw) = read_padded(self.file, self.file_len, at, (n * 8) as usize) else {
                    self.res.corruptions += 1;
                    return Ok(());
                };
                for entry in decode_be64(&raw) {
                    let data = entry & L2_OFFSET_MASK;
                    let bad = entry & TABLE_ENTRY_RESERVED != 0
                        || (data != 0 && (data % cs != 0 || entry & TABLE_ENTRY_ALL_ONES != 0));
                    if bad {
                        self.res.corruptions += 1;
                        continue;
                    }
                    if data != 0 {
                        self.inc(expected, data, cs)?;
                    }
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Each bitmap's table (offset, entries), from the directory; None when it is malformed.
    fn bitmap_tables(&self, dir: BitmapDirectory) -> Option<Vec<(u64, u64)>> {
        if dir.count > u64::from(MAX_BITMAPS)
            || dir.size > MAX_DIRECTORY_BYTES
            || dir.offset % self.layout.cluster_size != 0
        {
            return None;
        }
        let raw = read_padded(self.file, self.file_len, dir.offset, dir.size as usize).ok()?;
        let mut at = 0usize;
        let mut tables = Vec::new();
        for _ in 0..dir.count {
            let field = |off: usize, n: usize| {
                raw.get(at + off..at + off + n)
                    .map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
            };
            let table_offset = field(0, 8)?;
            let table_size = field(8, 4)?;
            let name_size = field(18, 2)?;
            let extra = field(20, 4)?;
            tables.push((table_offset, table_size));
            at = (at + 24 + extra as usize + name_size as usize).next_multiple_of(8);
            if at > raw.len() {
                return None;
            }
        }
        Some(tables)
    }
}
