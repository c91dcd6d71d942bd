//! The internal snapshot table, read as QEMU's `qcow2_read_snapshots` reads it: each entry's fixed header, its
//! extra data (large VM state size, disk size, instruction count), its ID and its name. Used by `info` (the
//! snapshot list), by `check` (each snapshot's L1 table and the table's own extent), and rewritten whole by
//! the snapshot operations (QEMU's `qcow2_write_snapshots`).
//!
//! Entries start 8-byte aligned; bytes past the end of the file read as zeros (as QEMU's file driver returns
//! them). Caps as QEMU's: at most [`MAX_SNAPSHOTS`] entries (also enforced at open), at most
//! [`MAX_EXTRA_DATA`] bytes of extra data per entry, and the whole table at most [`MAX_TABLE_BYTES`] (checked
//! after every entry, so no more than that plus one entry is ever read).

use blk_core::{Error, ErrorKind, HostFile, Result, SnapshotInfo};
use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::metadata::overlap::IGNORE_NONE;
use crate::metadata::{read_zero_filled, Metadata};
use crate::snapshots::op_error;
use crate::FORMAT_NAME;

/// QEMU's cap on the number of snapshots (`QCOW_MAX_SNAPSHOTS`).
pub(crate) const MAX_SNAPSHOTS: u64 = 65536;
/// QEMU's cap on the snapshot table's size (`QCOW_MAX_SNAPSHOTS_SIZE`, 64 MiB).
pub(crate) const MAX_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS;
/// QEMU's cap on one entry's extra data (`QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
pub(crate) const MAX_EXTRA_DATA: u64 = 1024;
/// The longest ID QEMU's generic snapshot list keeps (`QEMUSnapshotInfo.id_str` holds 128 bytes with the NUL).
const MAX_LISTED_ID: usize = 127;
/// The longest name QEMU's generic snapshot list keeps (`QEMUSnapshotInfo.name` holds 256 bytes with the NUL).
const MAX_LISTED_NAME: usize = 255;

/// The fixed part of a snapshot table entry (`QCowSnapshotHeader`), as stored.
#[derive(FromBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct RawSnapshotHeader {
    l1_table_offset: U64<BigEndian>,
    l1_size: U32<BigEndian>,
    id_str_size: U16<BigEndian>,
    name_size: U16<BigEndian>,
    date_sec: U32<BigEndian>,
    date_nsec: U32<BigEndian>,
    vm_clock_nsec: U64<BigEndian>,
    vm_state_size: U32<BigEndian>,
    extra_data_size: U32<BigEndian>,
}

/// Size of [`RawSnapshotHeader`].
const HEADER_SIZE: u64 = 40;
/// Offset of `extra_data_size` inside an entry.
const EXTRA_DATA_SIZE_FIELD: u64 = 36;

/// The extra data QEMU knows (`QCowSnapshotExtraData`); an entry may store less (missing fields are absent)
/// or more (unknown fields, skipped).
#[derive(FromBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct RawExtraData {
    vm_state_size_large: U64<BigEndian>,
    disk_size: U64<BigEndian>,
    icount: U64<BigEndian>,
}

/// Size of [`RawExtraData`].
const KNOWN_EXTRA_DATA: usize = 24;

/// One snapshot table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The ID string, raw bytes as stored.
    pub(crate) id: Vec<u8>,
    /// The name, raw bytes as stored.
    pub(crate) name: Vec<u8>,
    /// Where the snapshot's L1 table starts.
    pub(crate) l1_table_offset: u64,
    /// The snapshot's L1 table entries.
    pub(crate) l1_size: u64,
    /// Saved VM state bytes (the 64-bit extra-data field when present, else the 32-bit header field).
    pub(crate) vm_state_size: u64,
    /// Seconds since the Unix epoch.
    pub(crate) date_sec: u32,
    /// Nanoseconds part of the date.
    pub(crate) date_nsec: u32,
    /// The guest clock, in nanoseconds.
    pub(crate) vm_clock_nsec: u64,
    /// The virtual disk size when the snapshot was taken, when recorded.
    pub(crate) disk_size: Option<u64>,
    /// The instruction count, when recorded (QEMU's `-1` stands for none).
    pub(crate) icount: Option<u64>,
    /// Extra data past the fields QEMU knows, kept byte for byte when the table is rewritten.
    pub(crate) unknown_extra: Vec<u8>,
}

/// The snapshot `selector` names among `entries`, as QEMU looks one up to load or apply it: by ID first, then
/// (for a plain ID-or-name) by name.
pub(crate) fn find_by_id_then_name<'a>(
    entries: &'a [Snapshot],
    selector: &blk_core::SnapshotSelector,
) -> Option<&'a Snapshot> {
    [false, true].iter().find_map(|&by_name| {
        entries
            .iter()
            .find(|s| selector.matches(&s.id_string(), &s.name_string(), by_name))
    })
}

/// The parsed snapshot table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SnapshotTable {
    /// The snapshots, in table order.
    pub(crate) entries: Vec<Snapshot>,
    /// The table's size in bytes, from its start to the end of the last name (QEMU's `snapshots_size`).
    pub(crate) size: u64,
}

fn corrupt(message: String, offset: u64) -> Error {
    Error::new(ErrorKind::CorruptImage, message)
        .with_format(FORMAT_NAME)
        .with_offset(offset)
}

/// A C string as QEMU keeps it: up to the first NUL, at most `max` bytes (truncated bytes may split a UTF-8
/// sequence; invalid UTF-8 becomes U+FFFD).
fn c_string(bytes: &[u8], max: usize) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let kept = bytes.get(..end.min(max)).unwrap_or_default();
    String::from_utf8_lossy(kept).into_owned()
}

impl Snapshot {
    /// The ID as a string (up to its first NUL, lossy UTF-8).
    pub(crate) fn id_string(&self) -> String {
        c_string(&self.id, usize::MAX)
    }

    /// The name as a string (up to its first NUL, lossy UTF-8).
    pub(crate) fn name_string(&self) -> String {
        c_string(&self.name, usize::MAX)
    }

    /// The snapshot as `qemu-img info` lists it: ID and name cut to the 127 and 255 bytes QEMU's generic
    /// snapshot list keeps.
    pub(crate) fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: c_string(&self.id, MAX_LISTED_ID),
            name: c_string(&self.name, MAX_LISTED_NAME),
            vm_state_size: self.vm_state_size,
            date_sec: u64::from(self.date_sec),
            date_nsec: u64::from(self.date_nsec),
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount,
        }
    }
}

/// What `check -r all` repairs while reading the table (QEMU's `qcow2_do_read_snapshots` with `repair`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableRepairs {
    /// Entries whose extra data over [`MAX_EXTRA_DATA`] was cut to it.
    pub(crate) extra_data_dropped: u64,
    /// Entries dropped from the end because the table grew past [`MAX_TABLE_BYTES`].
    pub(crate) overhanging: u64,
    /// QEMU's lines for each (it prints them on stderr).
    pub(crate) messages: Vec<String>,
}

impl SnapshotTable {
    /// Reads the `count` entries of the table at `table_offset` in `file` (`file_len` bytes long: past it,
    /// bytes read as zeros). `CorruptImage`, naming the offending entry's offset, when the table breaks
    /// QEMU's caps or is not cluster-aligned.
    pub(crate) fn read(
        file: &HostFile,
        file_len: u64,
        count: u64,
        table_offset: u64,
        cluster_size: u64,
    ) -> Result<SnapshotTable> {
        SnapshotTable::read_inner(file, file_len, count, table_offset, cluster_size, None)
    }

    /// As [`read`](SnapshotTable::read), repairing as QEMU's `check -r all` does: an entry's extra data over
    /// 1 KiB is cut to 1 KiB (its size still skipped), and the entries from the first one that takes the
    /// table past 64 MiB (or 2^31 bytes from its start) are dropped; `repairs` counts both.
    pub(crate) fn read_repairing(
        file: &HostFile,
        file_len: u64,
        count: u64,
        table_offset: u64,
        cluster_size: u64,
        repairs: &mut TableRepairs,
    ) -> Result<SnapshotTable> {
        SnapshotTable::read_inner(
            file,
            file_len,
            count,
            table_offset,
            cluster_size,
            Some(repairs),
        )
    }

    fn read_inner(
        file: &HostFile,
        file_len: u64,
        count: u64,
        table_offset: u64,
        cluster_size: u64,
        mut repairs: Option<&mut TableRepairs>,
    ) -> Result<SnapshotTable> {
        if count == 0 {
            return Ok(SnapshotTable::default());
        }
        if count > MAX_SNAPSHOTS {
            return Err(corrupt(
                format!("snapshot table too large ({count} snapshots, at most {MAX_SNAPSHOTS})"),
                60,
            ));
        }
        if cluster_size == 0 || table_offset % cluster_size != 0 {
            return Err(corrupt(
                format!("snapshot table offset {table_offset:#x} is not cluster aligned"),
                64,
            ));
        }
        let mut offset = table_offset;
        // QEMU's `table_length`: the entries' sizes with extra data as kept (cut when repairing).
        let mut table_length = 0u64;
        // Where the previous entry's name ended (before the padding to 8 bytes).
        let mut previous_end = table_offset;
        let mut entries = Vec::new();
        for index in 0..count {
            let entry_offset = offset;
            table_length = table_length.next_multiple_of(8);
            let raw = read_bytes(file, file_len, offset, HEADER_SIZE as usize)?;
            let header = RawSnapshotHeader::read_from_bytes(&raw)
                .map_err(|_| corrupt(format!("snapshot {index}: short entry header"), offset))?;
            let stored_extra_size = u64::from(header.extra_data_size.get());
            let mut extra_size = stored_extra_size;
            if let Some(repairs) = repairs
                .as_deref_mut()
                .filter(|_| extra_size > MAX_EXTRA_DATA)
            {
                repairs.messages.push(format!(
                    "Discarding too much extra metadata in snapshot table entry {index} \
                     ({extra_size} > {MAX_EXTRA_DATA})"
                ));
                repairs.extra_data_dropped += 1;
                extra_size = MAX_EXTRA_DATA;
            }
            if extra_size > MAX_EXTRA_DATA {
                return Err(corrupt(
                    format!(
                        "too much extra metadata in snapshot table entry {index} \
                         ({extra_size} bytes, at most {MAX_EXTRA_DATA})"
                    ),
                    entry_offset.saturating_add(EXTRA_DATA_SIZE_FIELD),
                ));
            }
            offset = offset.saturating_add(HEADER_SIZE);
            // Only the known fields are kept; `extra_size` <= 1024 bounds this read.
            let mut extra_bytes = read_bytes(file, file_len, offset, extra_size as usize)?;
            let stored_extra = extra_bytes.len();
            extra_bytes.resize(KNOWN_EXTRA_DATA.max(stored_extra), 0);
            let extra = RawExtraData::read_from_prefix(&extra_bytes)
                .map(|(extra, _)| extra)
                .map_err(|_| corrupt(format!("snapshot {index}: short extra data"), offset))?;
            offset = offset.saturating_add(stored_extra_size);
            let id_size = usize::from(header.id_str_size.get());
            let name_size = usize::from(header.name_size.get());
            let id = read_bytes(file, file_len, offset, id_size)?;
            offset = offset.saturating_add(id_size as u64);
            let name = read_bytes(file, file_len, offset, name_size)?;
            offset = offset.saturating_add(name_size as u64);
            table_length += HEADER_SIZE + extra_size + id_size as u64 + name_size as u64;
            if let Some(repairs) = repairs.as_deref_mut().filter(|_| {
                table_length > MAX_TABLE_BYTES || offset - table_offset > i32::MAX as u64
            }) {
                let dropped = count - index;
                repairs.messages.push(format!(
                    "Discarding {dropped} overhanging snapshots (snapshot table is too big)"
                ));
                repairs.overhanging += dropped;
                offset = previous_end;
                break;
            }
            if offset - table_offset > MAX_TABLE_BYTES {
                return Err(corrupt(
                    format!(
                        "snapshot table too large (entry {index} ends {} bytes after the table \
                         start, at most {MAX_TABLE_BYTES})",
                        offset - table_offset
                    ),
                    entry_offset,
                ));
            }
            entries.push(Snapshot {
                id,
                name,
                l1_table_offset: header.l1_table_offset.get(),
                l1_size: u64::from(header.l1_size.get()),
                vm_state_size: if stored_extra >= 8 {
                    extra.vm_state_size_large.get()
                } else {
                    u64::from(header.vm_state_size.get())
                },
                date_sec: header.date_sec.get(),
                date_nsec: header.date_nsec.get(),
                vm_clock_nsec: header.vm_clock_nsec.get(),
                disk_size: (stored_extra >= 16).then(|| extra.disk_size.get()),
                icount: (stored_extra >= KNOWN_EXTRA_DATA)
                    .then(|| extra.icount.get())
                    .filter(|&n| n != u64::MAX),
                unknown_extra: extra_bytes
                    .get(KNOWN_EXTRA_DATA..stored_extra)
                    .unwrap_or_default()
                    .to_vec(),
            });
            previous_end = offset;
            if index + 1 < count {
                offset = offset.next_multiple_of(8);
            }
        }
        Ok(SnapshotTable {
            entries,
            size: offset - table_offset,
        })
    }
}

/// The bytes of a stored string up to its first NUL (QEMU keeps IDs and names as C strings).
pub(crate) fn c_bytes(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or_default()
}

/// The table `entries` as QEMU's `qcow2_write_snapshots` writes it: each entry 8-byte aligned, at least the
/// 24 bytes of extra data QEMU knows (a missing disk size becomes `disk_size`, a missing instruction count
/// -1), unknown extra data kept, IDs and names up to their first NUL. `None` when the table would exceed
/// [`MAX_TABLE_BYTES`] (QEMU's `EFBIG`).
pub(crate) fn serialize(entries: &[Snapshot], disk_size: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for s in entries {
        out.resize(out.len().next_multiple_of(8), 0);
        let id = c_bytes(&s.id);
        let name = c_bytes(&s.name);
        let extra_size = KNOWN_EXTRA_DATA + s.unknown_extra.len();
        let end = out.len() + HEADER_SIZE as usize + extra_size + id.len() + name.len();
        if end as u64 > MAX_TABLE_BYTES {
            return None;
        }
        out.extend_from_slice(&s.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&(s.l1_size as u32).to_be_bytes());
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(&s.date_sec.to_be_bytes());
        out.extend_from_slice(&s.date_nsec.to_be_bytes());
        out.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
        // A VM state too large for 32 bits reads as a disk-only snapshot to older implementations.
        let small_vm_state = u32::try_from(s.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small_vm_state.to_be_bytes());
        out.extend_from_slice(&(extra_size as u32).to_be_bytes());
        out.extend_from_slice(&s.vm_state_size.to_be_bytes());
        out.extend_from_slice(&s.disk_size.unwrap_or(disk_size).to_be_bytes());
        out.extend_from_slice(&s.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&s.unknown_extra);
        out.extend_from_slice(id);
        out.extend_from_slice(name);
    }
    Some(out)
}

/// `len` bytes at `offset` (`len` is bounded by the caller: at most 64 KiB), zeros past the end of the file.
fn read_bytes(file: &HostFile, file_len: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
    if offset >= file_len {
        return Ok(vec![0u8; len]);
    }
    read_zero_filled(file, offset, len)
}

/// Byte offset of the header's `nb_snapshots` field (followed by `snapshots_offset`).
const NB_SNAPSHOTS_FIELD: u64 = 60;

/// The snapshot table, its own location checked (inside the used area, not over the header or the L1 /
/// refcount tables), since rewriting it frees its clusters.
pub(crate) fn read_checked(meta: &Metadata, file: &HostFile) -> Result<SnapshotTable> {
    let h = &meta.header;
    let table = SnapshotTable::read(
        file,
        file.len()?,
        u64::from(h.nb_snapshots),
        h.snapshots_offset,
        meta.g.cluster_size,
    )?;
    if table.size > 0 {
        let offset = h.snapshots_offset;
        if offset == 0
            || offset.saturating_add(table.size) > meta.file_end
            || meta.check_metadata_write(offset, table.size).is_err()
        {
            return Err(corrupt(
                format!(
                    "snapshot table at {offset:#x} ({} bytes) lies outside the image or over other metadata",
                    table.size
                ),
                64,
            ));
        }
    }
    Ok(table)
}

/// QEMU's `qcow2_write_snapshots`: writes `entries` as the new snapshot table in new clusters, flushes
/// (refcounts included), points the header at it (synced), then frees the old table (`old_size` bytes at
/// the header's current offset). With no entries the header gets offset 0 and nothing is allocated.
pub(crate) fn write(
    meta: &mut Metadata,
    file: &HostFile,
    entries: &[Snapshot],
    old_size: u64,
) -> Result<()> {
    let bytes = serialize(entries, meta.g.size).ok_or_else(|| {
        op_error(
            ErrorKind::InvalidInput,
            format!("File too large: the snapshot table would exceed {MAX_TABLE_BYTES} bytes"),
        )
    })?;
    let count = u32::try_from(entries.len()).map_err(|_| {
        op_error(
            ErrorKind::InvalidInput,
            "File too large: too many snapshots",
        )
    })?;
    let cs = meta.g.cluster_size;
    let new_offset = if bytes.is_empty() {
        0
    } else {
        let offset = meta.allocate_clusters(file, (bytes.len() as u64).div_ceil(cs))?;
        meta.flush(file)?;
        meta.guard_write(file, IGNORE_NONE, offset, bytes.len() as u64)?;
        file.write_all_at(offset, &bytes)?;
        file.sync_data()?;
        offset
    };
    let mut field = [0u8; 12];
    field[..4].copy_from_slice(&count.to_be_bytes());
    field[4..].copy_from_slice(&new_offset.to_be_bytes());
    file.write_all_at(NB_SNAPSHOTS_FIELD, &field)?;
    file.sync_data()?;
    let old_offset = meta.header.snapshots_offset;
    meta.header.nb_snapshots = count;
    meta.header.snapshots_offset = new_offset;
    meta.set_snapshot_extents(
        bytes.len() as u64,
        entries
            .iter()
            .map(|s| (s.l1_table_offset, s.l1_size))
            .collect(),
    );
    if old_size > 0 {
        meta.change_refcount_range(file, old_offset, old_size, -1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk_core::HostOpenOptions;

    /// One entry as QEMU writes it (24 bytes of extra data), padded to 8 bytes.
    fn entry(id: &[u8], name: &[u8], extra: &[u8], vm_state: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&0x3_0000u64.to_be_bytes());
        e.extend_from_slice(&8u32.to_be_bytes());
        e.extend_from_slice(&(id.len() as u16).to_be_bytes());
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        e.extend_from_slice(&123_000u32.to_be_bytes());
        e.extend_from_slice(&5_500_000_000u64.to_be_bytes());
        e.extend_from_slice(&vm_state.to_be_bytes());
        e.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        e.extend_from_slice(extra);
        e.extend_from_slice(id);
        e.extend_from_slice(name);
        e
    }

    fn padded(mut e: Vec<u8>) -> Vec<u8> {
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    fn extra(vm_state: u64, disk: u64, icount: u64) -> Vec<u8> {
        [vm_state, disk, icount]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    /// A file with `table` at 64 KiB; the table read with `count` entries.
    fn read_table(table: &[u8], count: u64) -> Result<SnapshotTable> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut bytes = vec![0u8; 65536];
        bytes.extend_from_slice(table);
        std::fs::write(&path, &bytes).unwrap();
        let file = HostFile::open(&path, HostOpenOptions::default())?;
        SnapshotTable::read(&file, bytes.len() as u64, count, 65536, 65536)
    }

    #[test]
    fn reads_entries_as_qemu_writes_them() {
        let mut table = padded(entry(b"1", b"snap1", &extra(7, 4 << 20, 42), 0));
        table.extend(entry(b"2", b"two", &extra(1 << 33, 4 << 20, u64::MAX), 0));
        let t = read_table(&table, 2).unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.size, table.len() as u64);
        let a = &t.entries[0];
        assert_eq!(
            (a.id_string(), a.name_string()),
            ("1".into(), "snap1".into())
        );
        assert_eq!(
            (a.vm_state_size, a.icount, a.disk_size),
            (7, Some(42), Some(4 << 20))
        );
        assert_eq!((a.l1_table_offset, a.l1_size), (0x3_0000, 8));
        let info = a.info();
        assert_eq!((info.date_sec, info.date_nsec), (1_700_000_000, 123_000));
        assert_eq!(info.vm_clock_nsec, 5_500_000_000);
        let b = &t.entries[1];
        assert_eq!((b.vm_state_size, b.icount), (1 << 33, None));
    }

    #[test]
    fn short_extra_data_leaves_fields_absent() {
        let t = read_table(&entry(b"1", b"old", &[], 512), 1).unwrap();
        let s = &t.entries[0];
        assert_eq!((s.vm_state_size, s.disk_size, s.icount), (512, None, None));
        let t = read_table(&entry(b"1", b"mid", &extra(9, 1, 0)[..16], 512), 1).unwrap();
        let s = &t.entries[0];
        assert_eq!((s.vm_state_size, s.disk_size, s.icount), (9, Some(1), None));
    }

    #[test]
    fn unknown_extra_data_is_skipped() {
        let mut more = extra(0, 0, 3);
        more.extend_from_slice(&[0xee; 16]);
        let t = read_table(&entry(b"7", b"x", &more, 0), 1).unwrap();
        assert_eq!(
            (t.entries[0].name_string(), t.entries[0].icount),
            ("x".into(), Some(3))
        );
    }

    #[test]
    fn refuses_too_much_extra_data() {
        let mut e = entry(b"1", b"a", &[], 0);
        e[36..40].copy_from_slice(&1025u32.to_be_bytes());
        let err = read_table(&e, 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptImage);
        assert!(err.to_string().contains("extra metadata"), "{err}");
    }

    /// As QEMU's `check -r all` reads it: extra data over 1 KiB cut to 1 KiB (its full size still skipped),
    /// and an entry taking the table past 2^31 bytes dropped with the ones after it.
    #[test]
    fn repairing_read_cuts_extra_data_and_drops_overhanging_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let first = padded(entry(b"1", b"a", &extra(0, 1 << 20, 7), 0));
        let mut second = entry(b"2", b"b", &[], 0);
        second[36..40].copy_from_slice(&2000u32.to_be_bytes());
        let mut bytes = vec![0u8; 65536];
        bytes.extend_from_slice(&first);
        bytes.extend_from_slice(&second);
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let file = HostFile::open(&path, HostOpenOptions::default()).unwrap();
        let len = bytes.len() as u64;
        let mut repairs = TableRepairs::default();
        let table =
            SnapshotTable::read_repairing(&file, len, 2, 65536, 65536, &mut repairs).unwrap();
        assert_eq!(table.entries.len(), 2);
        assert_eq!(repairs.extra_data_dropped, 1);
        assert_eq!(repairs.overhanging, 0);
        assert_eq!(table.entries[1].unknown_extra.len(), 1000);
        assert!(SnapshotTable::read(&file, len, 2, 65536, 65536).is_err());
        // 0xffffffff bytes of extra data take the table past 2^31 bytes: the entry goes.
        second[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        bytes.truncate(65536 + first.len());
        bytes.extend_from_slice(&second);
        std::fs::write(&path, &bytes).unwrap();
        let mut repairs = TableRepairs::default();
        let table =
            SnapshotTable::read_repairing(&file, bytes.len() as u64, 2, 65536, 65536, &mut repairs)
                .unwrap();
        assert_eq!(table.entries.len(), 1);
        assert_eq!((repairs.extra_data_dropped, repairs.overhanging), (1, 1));
        assert_eq!(table.size, 40 + 24 + 2);
        assert_eq!(repairs.messages.len(), 2);
    }

    #[test]
    fn refuses_bad_counts_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let file = HostFile::open(&path, HostOpenOptions::default()).unwrap();
        let err = SnapshotTable::read(&file, 512, MAX_SNAPSHOTS + 1, 0, 512).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptImage);
        let err = SnapshotTable::read(&file, 512, 1, 100, 512).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptImage);
    }

    #[test]
    fn table_past_end_of_file_reads_zeros_and_table_size_is_capped() {
        // Entries past the end of the file are all-zero entries (empty ID and name).
        let t = read_table(&[], 3).unwrap();
        assert_eq!(t.entries.len(), 3);
        assert!(t
            .entries
            .iter()
            .all(|s| s.id.is_empty() && s.vm_state_size == 0));
        // Maximal entries (40 + 1024 + 2 * 65535 bytes) overflow 64 MiB at the 508th: a sparse file holding
        // only their headers.
        let mut e = entry(b"", b"", &[], 0);
        e[12..16].copy_from_slice(&[0xff; 4]);
        e[36..40].copy_from_slice(&1024u32.to_be_bytes());
        let stride = (40 + 1024 + 2 * 65535u64).next_multiple_of(8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = HostFile::create(&path, HostOpenOptions::default()).unwrap();
        for i in 0..600u64 {
            file.write_all_at(65536 + i * stride, &e).unwrap();
        }
        let len = file.len().unwrap();
        let err = SnapshotTable::read(&file, len, 600, 65536, 65536).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptImage);
        assert!(err.to_string().contains("too large"), "{err}");
        assert_eq!(err.offset(), Some(65536 + 507 * stride));
    }

    #[test]
    fn serialized_tables_read_back() {
        let mut more = extra(5, 7 << 20, 9);
        more.extend_from_slice(&[0xee; 16]);
        let mut table = padded(entry(b"1", b"a", &more, 5));
        table.extend(entry(b"22", b"bb", &[], 512));
        let read = read_table(&table, 2).unwrap();
        let bytes = serialize(&read.entries, 3 << 20).unwrap();
        let again = read_table(&bytes, 2).unwrap();
        assert_eq!(again.entries[0], read.entries[0]);
        assert_eq!(again.entries[0].unknown_extra, vec![0xee; 16]);
        // The second entry gains the extra data QEMU knows: the disk size given, no instruction count.
        let b = &again.entries[1];
        assert_eq!(
            (b.vm_state_size, b.disk_size, b.icount),
            (512, Some(3 << 20), None)
        );
        assert_eq!(again.size, bytes.len() as u64);
        // IDs and names are cut at their first NUL.
        let cut = read_table(&entry(b"3\0x", b"n\0y", &[], 0), 1).unwrap();
        let bytes = serialize(&cut.entries, 0).unwrap();
        assert_eq!(&bytes[bytes.len() - 2..], b"3n");
    }

    #[test]
    fn serializing_refuses_tables_over_64_mib() {
        let big = Snapshot {
            id: b"1".to_vec(),
            name: vec![b'n'; 65535],
            l1_table_offset: 0,
            l1_size: 0,
            vm_state_size: 0,
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            disk_size: None,
            icount: None,
            unknown_extra: Vec::new(),
        };
        // 65600 bytes an entry: 1023 fit in 64 MiB, 1024 do not.
        let entries = vec![big; 1024];
        assert!(serialize(&entries[..1023], 0).is_some());
        assert!(serialize(&entries, 0).is_none());
    }

    #[test]
    fn listed_strings_are_cut_as_qemu_cuts_them() {
        let long = vec![b'n'; 300];
        let t = read_table(&entry(b"1\0junk", &long, &[], 0), 1).unwrap();
        let info = t.entries[0].info();
        assert_eq!(info.id, "1");
        assert_eq!(info.name.len(), 255);
        assert_eq!(t.entries[0].name_string().len(), 300);
    }
}
