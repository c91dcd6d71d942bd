//! Writing metadata updates through the log (MS-VHDX 2.3): write the entry, flush, apply in place, flush.
//!
//! One log GUID serves a whole writable session: the first update writes its entry, flushes, then stores the
//! new GUID in both headers (so the header never names a GUID without a valid entry behind it), then applies.
//! Every entry is its own tail (everything logged before it is applied and flushed), so the active sequence
//! after a crash is at most the last entry, and replaying it again is harmless. A clean close clears the GUID.

use blk_core::{ErrorKind, HostFile, Result};

use crate::error::at;
use crate::guid::Guid;
use crate::header::{Headers, MIB};
use crate::log_format::build_entry;
use crate::region::Region;

/// The log's write position and session state.
#[derive(Debug)]
pub struct LogWriter {
    region: Region,
    guid: Option<Guid>,
    next_sequence: u64,
    position: u64,
}

impl LogWriter {
    /// A writer for the log at `region`, empty.
    pub fn new(region: Region) -> LogWriter {
        LogWriter {
            region,
            guid: None,
            next_sequence: 1,
            position: 0,
        }
    }

    /// Writes `sectors` (4 KiB each, with their file offsets) through the log and applies them.
    pub fn write(
        &mut self,
        file: &HostFile,
        headers: &mut Headers,
        sectors: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        let starting = self.guid.is_none();
        let guid = *self.guid.get_or_insert_with(Guid::random);
        let file_len = file.len()?;
        let flushed = file_len / MIB * MIB;
        let last = file_len.div_ceil(MIB) * MIB;
        let entry = build_entry(self.next_sequence, 0, guid, flushed, last, sectors);
        let length = entry.len() as u64;
        if length > self.region.length {
            return Err(at(
                ErrorKind::Unsupported,
                self.region.offset,
                format!(
                    "a metadata update of {length} bytes does not fit the {}-byte log",
                    self.region.length
                ),
            ));
        }
        if self.position + length > self.region.length {
            self.position = 0;
        }
        // The entry is its own tail: rebuild with the position known.
        let entry = build_entry(
            self.next_sequence,
            self.position,
            guid,
            flushed,
            last,
            sectors,
        );
        file.write_all_at(self.region.offset + self.position, &entry)?;
        file.sync_data()?;
        if starting {
            if let Err(e) = headers.update_both(file, |h| h.log_guid = guid.0) {
                self.guid = None;
                return Err(e);
            }
        }
        for (offset, sector) in sectors {
            file.write_all_at(*offset, sector)?;
        }
        file.sync_data()?;
        self.next_sequence += 1;
        self.position = (self.position + length) % self.region.length;
        Ok(())
    }

    /// Marks the log empty in both headers (after a clean session).
    pub fn close(&mut self, file: &HostFile, headers: &mut Headers) -> Result<()> {
        if self.guid.take().is_some() {
            headers.update_both(file, |h| h.log_guid = [0; 16])?;
        }
        Ok(())
    }
}
