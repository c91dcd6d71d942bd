//! Finding the active log sequence and replaying it (MS-VHDX 2.3.2, 2.3.3).

use blk_core::{HostFile, Result};

use crate::error::corrupt;
use crate::guid::Guid;
use crate::header::{HEADER_OFFSETS, MIB};
use crate::log_format::{parse_entry, plausible_header, Entry, Update, LOG_SECTOR};
use crate::metadata::MAX_DISK_SIZE;
use crate::region::Region;

/// The entries of the active sequence, tail first.
#[derive(Debug)]
pub struct ActiveSequence {
    /// The entries in replay order.
    pub entries: Vec<Entry>,
}

/// Reads `length` bytes of the log ring starting at `position`, wrapping at its end.
fn read_ring(file: &HostFile, log: Region, position: u64, length: u64) -> Result<Vec<u8>> {
    let mut out = vec![0u8; length as usize];
    let first = length.min(log.length - position);
    file.read_exact_at(log.offset + position, &mut out[..first as usize])?;
    if first < length {
        file.read_exact_at(log.offset, &mut out[first as usize..])?;
    }
    Ok(out)
}

/// The valid entry at `position`, if there is one.
fn entry_at(
    file: &HostFile,
    log: Region,
    guid: Guid,
    position: u64,
) -> Result<Option<(Entry, u64)>> {
    let mut sector = vec![0u8; LOG_SECTOR as usize];
    file.read_exact_at(log.offset + position, &mut sector)?;
    let Some(header) = plausible_header(&sector, guid, log.length) else {
        return Ok(None);
    };
    let length = u64::from(header.entry_length.get());
    let bytes = read_ring(file, log, position, length)?;
    Ok(parse_entry(&bytes, guid, log.length).map(|e| (e, length)))
}

/// Scans the log for the active sequence as 2.3.3 describes: sequences of valid entries whose sequence numbers
/// rise by one, complete when the head's tail lies inside them; the one with the highest head sequence number
/// wins. Each scan step advances through the ring and the scan stops after one lap, so a sequence that loops
/// (or any ring content) ends it in at most `log length / 4 KiB` steps.
pub fn find_active_sequence(
    file: &HostFile,
    log: Region,
    guid: Guid,
) -> Result<Option<ActiveSequence>> {
    let sectors = log.length / LOG_SECTOR;
    let mut candidate: Option<(u64, Vec<(u64, u64)>)> = None;
    let mut current_tail = 0u64;
    let mut old_tail = 0u64;
    for _ in 0..=sectors {
        let mut sequence: Vec<(u64, u64, u64)> = Vec::new(); // (position, sequence number, tail)
        let mut position = current_tail;
        while (sequence.len() as u64) < sectors {
            let Some((entry, length)) = entry_at(file, log, guid, position)? else {
                break;
            };
            let number = entry.header.sequence_number.get();
            if let Some(&(_, last, _)) = sequence.last() {
                if number != last.wrapping_add(1) {
                    break;
                }
            }
            sequence.push((position, number, u64::from(entry.header.tail.get())));
            position = (position + length) % log.length;
        }
        let valid = match sequence.last() {
            Some(&(_, _, tail)) => sequence.iter().any(|&(p, _, _)| p == tail),
            None => false,
        };
        if valid {
            let head_number = sequence.last().map_or(0, |s| s.1);
            if candidate.as_ref().is_none_or(|(n, _)| head_number > *n) {
                let tail = sequence.last().map_or(0, |s| s.2);
                let start = sequence.iter().position(|s| s.0 == tail).unwrap_or(0);
                let kept = sequence[start..].iter().map(|&(p, n, _)| (p, n)).collect();
                candidate = Some((head_number, kept));
            }
            current_tail = position;
        } else {
            current_tail = (current_tail + LOG_SECTOR) % log.length;
        }
        if current_tail <= old_tail {
            break;
        }
        old_tail = current_tail;
    }
    let Some((_, positions)) = candidate else {
        return Ok(None);
    };
    let mut entries = Vec::new();
    for (position, _) in positions {
        match entry_at(file, log, guid, position)? {
            Some((entry, _)) => entries.push(entry),
            None => {
                return Err(corrupt(
                    log.offset + position,
                    "a log entry changed while being replayed",
                ))
            }
        }
    }
    Ok(Some(ActiveSequence { entries }))
}

/// Replays the active sequence: every update in order, then grows the file to the head's last file offset.
///
/// Updates may not touch the file identifier and headers (the first 192 KiB) or the log itself, nor reach past
/// the larger of the file size and the head's last file offset (itself capped at 128 TiB).
pub fn replay(file: &HostFile, log: Region, sequence: &ActiveSequence) -> Result<()> {
    let Some(head) = sequence.entries.last() else {
        return Ok(());
    };
    let file_len = file.len()?;
    let flushed = head.header.flushed_file_offset.get();
    let last = head.header.last_file_offset.get();
    if flushed > file_len {
        return Err(corrupt(
            log.offset,
            format!("the log says the file was at least {flushed} bytes, but it is {file_len}: it was truncated"),
        ));
    }
    if last > 2 * MAX_DISK_SIZE {
        return Err(corrupt(
            log.offset,
            format!("the log's last file offset {last} is absurd"),
        ));
    }
    let limit = file_len.max(last);
    let protected_end = HEADER_OFFSETS[1] + (64 << 10);
    for entry in &sequence.entries {
        for update in &entry.updates {
            let (offset, length) = match update {
                Update::Data { file_offset, .. } => (*file_offset, LOG_SECTOR),
                Update::Zero {
                    file_offset,
                    length,
                } => (*file_offset, *length),
            };
            let target = Region { offset, length };
            let end = offset.checked_add(length);
            if offset < protected_end || target.overlaps(&log) || end.is_none_or(|e| e > limit) {
                return Err(corrupt(
                    log.offset,
                    format!("a log entry writes {offset:#x}..+{length}, outside the areas the log may update"),
                ));
            }
            match update {
                Update::Data {
                    file_offset,
                    sector,
                } => file.write_all_at(*file_offset, sector)?,
                Update::Zero {
                    file_offset,
                    length,
                } => file.zero_range(*file_offset, *length, true, false)?,
            }
        }
    }
    let new_len = last.div_ceil(MIB) * MIB;
    if file.len()? < new_len {
        file.set_len(new_len)?;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_format::build_entry;
    use blk_core::HostOpenOptions;

    const LOG: Region = Region {
        offset: 1 << 20,
        length: 1 << 20,
    };

    fn file() -> (tempfile::TempDir, HostFile) {
        let dir = tempfile::tempdir().unwrap();
        let file =
            HostFile::create(dir.path().join("log.vhdx"), HostOpenOptions::default()).unwrap();
        file.set_len(4 << 20).unwrap();
        (dir, file)
    }

    fn put(file: &HostFile, position: u64, bytes: &[u8]) {
        file.write_all_at(LOG.offset + position, bytes).unwrap();
    }

    fn sector(byte: u8) -> Vec<u8> {
        vec![byte; 4096]
    }

    #[test]
    fn the_newest_complete_sequence_wins_and_replays_in_order() {
        let (_dir, file) = file();
        let guid = Guid::random();
        put(
            &file,
            0,
            &build_entry(1, 0, guid, 0, 4 << 20, &[(2 << 20, sector(1))]),
        );
        put(
            &file,
            8192,
            &build_entry(
                2,
                0,
                guid,
                0,
                4 << 20,
                &[(2 << 20, sector(2)), (3 << 20, sector(3))],
            ),
        );
        // An older, complete sequence elsewhere, and an entry of another log.
        put(
            &file,
            64 << 10,
            &build_entry(1, 64 << 10, guid, 0, 4 << 20, &[(2 << 20, sector(9))]),
        );
        put(
            &file,
            128 << 10,
            &build_entry(50, 128 << 10, Guid::random(), 0, 4 << 20, &[]),
        );
        let active = find_active_sequence(&file, LOG, guid).unwrap().unwrap();
        assert_eq!(active.entries.len(), 2);
        replay(&file, LOG, &active).unwrap();
        let mut buf = vec![0u8; 4096];
        file.read_exact_at(2 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 2));
        file.read_exact_at(3 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 3));
    }

    #[test]
    fn looping_and_incomplete_sequences_end_the_scan() {
        let (_dir, file) = file();
        let guid = Guid::random();
        // An entry as long as the whole log: its successor is itself, with the same sequence number.
        let mut whole = build_entry(7, 0, guid, 0, 0, &[(2 << 20, sector(1))]);
        whole.resize(1 << 20, 0);
        whole[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
        crate::checksum::store_checksum(&mut whole, 4);
        put(&file, 0, &whole);
        // It is invalid (data sectors != descriptors), so nothing is found, and the scan ends.
        assert!(find_active_sequence(&file, LOG, guid).unwrap().is_none());
        // A head whose tail lies outside its sequence is incomplete.
        put(
            &file,
            0,
            &build_entry(3, 40960, guid, 0, 0, &[(2 << 20, sector(1))]),
        );
        assert!(find_active_sequence(&file, LOG, guid).unwrap().is_none());
        // An entry that wraps around the end of the log is read across the wrap.
        let wrapped = build_entry(4, (1 << 20) - 4096, guid, 0, 0, &[(2 << 20, sector(5))]);
        put(&file, (1 << 20) - 4096, &wrapped[..4096]);
        put(&file, 0, &wrapped[4096..]);
        let active = find_active_sequence(&file, LOG, guid).unwrap().unwrap();
        assert_eq!(active.entries.len(), 1);
    }

    #[test]
    fn updates_outside_the_allowed_areas_are_refused() {
        let (_dir, file) = file();
        let guid = Guid::random();
        put(
            &file,
            0,
            &build_entry(1, 0, guid, 0, 0, &[(64 << 10, sector(1))]),
        );
        let active = find_active_sequence(&file, LOG, guid).unwrap().unwrap();
        assert_eq!(
            replay(&file, LOG, &active).unwrap_err().kind(),
            blk_core::ErrorKind::CorruptImage
        );
        put(
            &file,
            0,
            &build_entry(1, 0, guid, 8 << 20, 0, &[(2 << 20, sector(1))]),
        );
        let active = find_active_sequence(&file, LOG, guid).unwrap().unwrap();
        let err = replay(&file, LOG, &active).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
