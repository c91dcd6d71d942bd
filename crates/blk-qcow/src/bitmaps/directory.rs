//! The bitmaps header extension (type 0x23852875) and the bitmap directory it points to, validated as QEMU's
//! `qcow2_read_extensions` and `bitmap_list_load` do, and serialized back as `bitmap_list_store` writes it.
//!
//! QEMU reads the extension only in v3 images whose autoclear bit 0 (bitmaps) is set: a program without bitmap
//! support clears the bit when it writes, and the bitmaps are then stale and ignored. Bitmap data (the bitmap
//! tables and their clusters) is read by `table`.
//!
//! Caps (QEMU's): at most [`MAX_BITMAPS`] bitmaps, a directory of at most [`MAX_DIRECTORY_BYTES`] (read whole,
//! as QEMU does), names of at most [`MAX_NAME_BYTES`]; every directory entry must satisfy QEMU's constraints
//! (table cluster-aligned and non-empty, at most 2^27 entries and 512 MiB of bitmap data, granularity 2^9 to
//! 2^31, known flags and type, no extra data, a table large enough for the disk unless the bitmap is in use).

use blk_core::{Error, ErrorKind, HostFile, Result};
use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::image::header::Header;
use crate::metadata::read_zero_filled;
use crate::FORMAT_NAME;

/// The bitmaps header extension's type.
pub(crate) const EXT_BITMAPS: u32 = 0x2385_2875;
/// The autoclear bit that makes the bitmaps extension valid.
pub(crate) const AUTOCLEAR_BITMAPS: u64 = 1;
/// QEMU's cap on the number of bitmaps (`QCOW2_MAX_BITMAPS`).
pub(crate) const MAX_BITMAPS: u32 = 65535;
/// QEMU's cap on the bitmap directory (`QCOW2_MAX_BITMAP_DIRECTORY_SIZE`, just under 64 MiB).
pub(crate) const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// QEMU's cap on a bitmap name (`BME_MAX_NAME_SIZE`).
pub(crate) const MAX_NAME_BYTES: u16 = 1023;
/// QEMU's cap on a bitmap table's entries (`BME_MAX_TABLE_SIZE`).
pub(crate) const MAX_TABLE_ENTRIES: u32 = 0x800_0000;
/// QEMU's cap on a bitmap's data (`BME_MAX_PHYS_SIZE`, 512 MiB).
pub(crate) const MAX_PHYS_BYTES: u64 = 0x2000_0000;
/// Granularity bounds, as log2 (`BME_MIN_GRANULARITY_BITS`, `BME_MAX_GRANULARITY_BITS`).
pub(crate) const GRANULARITY_BITS: std::ops::RangeInclusive<u8> = 9..=31;
/// The bitmap is being modified (its data is inconsistent).
pub(crate) const FLAG_IN_USE: u32 = 1;
/// The bitmap tracks guest writes automatically.
pub(crate) const FLAG_AUTO: u32 = 2;
/// Flags QEMU accepts (`~BME_RESERVED_FLAGS`).
const KNOWN_FLAGS: u32 = 0b111;
/// The only bitmap type (`BT_DIRTY_TRACKING_BITMAP`).
const TYPE_DIRTY_TRACKING: u8 = 1;

/// The bitmaps extension's payload, as stored.
#[derive(FromBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct RawExtension {
    nb_bitmaps: U32<BigEndian>,
    reserved: U32<BigEndian>,
    directory_size: U64<BigEndian>,
    directory_offset: U64<BigEndian>,
}

/// Size of [`RawExtension`].
const EXTENSION_SIZE: usize = 24;

/// A bitmap directory entry's fixed part, as stored.
#[derive(FromBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct RawDirectoryEntry {
    table_offset: U64<BigEndian>,
    table_size: U32<BigEndian>,
    flags: U32<BigEndian>,
    kind: u8,
    granularity_bits: u8,
    name_size: U16<BigEndian>,
    extra_data_size: U32<BigEndian>,
}

/// Size of [`RawDirectoryEntry`].
const ENTRY_SIZE: u64 = 24;

/// Where the bitmap directory is (the validated extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BitmapDirectory {
    /// Bitmaps in the directory.
    pub(crate) count: u32,
    /// The directory's size in bytes.
    pub(crate) size: u64,
    /// Where it starts (cluster-aligned).
    pub(crate) offset: u64,
}

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    /// The bitmap's name (up to its first NUL, lossy UTF-8).
    pub(crate) name: String,
    /// The name as stored.
    pub(crate) raw_name: Vec<u8>,
    /// Bytes of guest data per bit.
    pub(crate) granularity: u64,
    /// The flags: `in-use` (bit 0), `auto` (bit 1), `extra_data_compatible` (bit 2).
    pub(crate) flags: u32,
    /// Where the bitmap table is (cluster-aligned).
    pub(crate) table_offset: u64,
    /// Entries of the bitmap table.
    pub(crate) table_size: u32,
}

impl Bitmap {
    /// log2 of the granularity.
    pub(crate) fn granularity_bits(&self) -> u8 {
        self.granularity.trailing_zeros() as u8
    }

    /// Whether the bitmap is marked in use (inconsistent when found so on open).
    pub(crate) fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    /// Whether the bitmap tracks guest writes (enabled).
    pub(crate) fn auto(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }
}

/// The directory `bitmaps` as stored: each entry's fixed part, its name, padding to 8 bytes.
pub(crate) fn serialize(bitmaps: &[Bitmap]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bitmaps {
        out.extend_from_slice(&b.table_offset.to_be_bytes());
        out.extend_from_slice(&b.table_size.to_be_bytes());
        out.extend_from_slice(&b.flags.to_be_bytes());
        out.push(TYPE_DIRTY_TRACKING);
        out.push(b.granularity_bits());
        out.extend_from_slice(&(b.raw_name.len() as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&b.raw_name);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

/// The bitmaps extension's payload for a directory of `count` entries, `size` bytes at `offset`.
pub(crate) fn extension_payload(count: u32, size: u64, offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(EXTENSION_SIZE);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

fn corrupt(message: String, offset: u64) -> Error {
    Error::new(ErrorKind::CorruptImage, message)
        .with_format(FORMAT_NAME)
        .with_offset(offset)
}

/// Where the bitmaps extension's payload is in the file: walks the extension area (after the header, up to
/// the backing file name or the end of cluster 0) as the header parser does.
fn extension_offset(file: &HostFile, file_len: u64, header: &Header) -> Result<Option<u64>> {
    let cluster_size = 1u64 << header.cluster_bits;
    let start = u64::from(header.header_length);
    let end = if header.backing_file_offset != 0 && header.backing_file_offset < cluster_size {
        header.backing_file_offset
    } else {
        cluster_size
    }
    .min(file_len);
    if end <= start {
        return Ok(None);
    }
    // At most one cluster (2 MiB), already read once by the header parser.
    let area = read_zero_filled(file, start, (end - start) as usize)?;
    let mut pos = 0usize;
    while let Some(head) = area.get(pos..pos + 8) {
        let kind = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if kind == 0 {
            break;
        }
        if kind == EXT_BITMAPS {
            return Ok(Some(start + pos as u64 + 8));
        }
        pos = pos.saturating_add(8).saturating_add(len.div_ceil(8) * 8);
    }
    Ok(None)
}

impl BitmapDirectory {
    /// The directory the header's bitmaps extension names, validated as QEMU does when it opens the image;
    /// `None` when QEMU reads no bitmaps (v2, autoclear bit clear, no extension).
    pub(crate) fn from_header(
        file: &HostFile,
        file_len: u64,
        header: &Header,
    ) -> Result<Option<BitmapDirectory>> {
        if header.version < 3 || header.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return Ok(None);
        }
        let Some((_, data)) = header
            .extensions
            .other
            .iter()
            .find(|(kind, _)| *kind == EXT_BITMAPS)
        else {
            return Ok(None);
        };
        let at = extension_offset(file, file_len, header)?.unwrap_or(0);
        if data.len() != EXTENSION_SIZE {
            return Err(corrupt(
                format!(
                    "bitmaps extension: invalid length {} (expected {EXTENSION_SIZE})",
                    data.len()
                ),
                at.saturating_sub(4),
            ));
        }
        let raw = RawExtension::read_from_bytes(data)
            .map_err(|_| corrupt("bitmaps extension: invalid length".to_string(), at))?;
        let count = raw.nb_bitmaps.get();
        let size = raw.directory_size.get();
        let offset = raw.directory_offset.get();
        let cluster_size = 1u64 << header.cluster_bits;
        if raw.reserved.get() != 0 {
            return Err(corrupt(
                "bitmaps extension: reserved field is not zero".to_string(),
                at + 4,
            ));
        }
        if count > MAX_BITMAPS {
            return Err(corrupt(
                format!(
                    "bitmaps extension: {count} bitmaps, more than the maximum of {MAX_BITMAPS}"
                ),
                at,
            ));
        }
        if count == 0 {
            return Err(corrupt(
                "bitmaps extension with zero bitmaps".to_string(),
                at,
            ));
        }
        if offset % cluster_size != 0 {
            return Err(corrupt(
                format!(
                    "bitmaps extension: bitmap directory offset {offset:#x} is not cluster aligned"
                ),
                at + 16,
            ));
        }
        if size > MAX_DIRECTORY_BYTES {
            return Err(corrupt(
                format!(
                    "bitmaps extension: bitmap directory size {size} exceeds the maximum of \
                     {MAX_DIRECTORY_BYTES}"
                ),
                at + 8,
            ));
        }
        if size == 0 {
            return Err(corrupt(
                "bitmaps extension: the bitmap directory size is zero".to_string(),
                at + 8,
            ));
        }
        Ok(Some(BitmapDirectory {
            count,
            size,
            offset,
        }))
    }

    /// Reads the directory (bytes past the end of the file read as zeros) and checks every entry as QEMU's
    /// `bitmap_list_load` does, for an image of `virtual_size` bytes with `cluster_size`-byte clusters.
    pub(crate) fn read(
        &self,
        file: &HostFile,
        cluster_size: u64,
        virtual_size: u64,
    ) -> Result<Vec<Bitmap>> {
        // `size` <= MAX_DIRECTORY_BYTES (checked in `from_header`).
        let dir = read_zero_filled(file, self.offset, self.size as usize)?;
        let dir_len = dir.len() as u64;
        let mut pos = 0u64;
        let mut bitmaps = Vec::new();
        while pos < dir_len {
            let at = self.offset.saturating_add(pos);
            let broken = || corrupt("broken bitmap directory".to_string(), at);
            let fixed = dir
                .get(pos as usize..(pos + ENTRY_SIZE) as usize)
                .ok_or_else(broken)?;
            if bitmaps.len() >= self.count as usize {
                return Err(corrupt(
                    format!(
                        "more bitmaps found than the {} the header extension names",
                        self.count
                    ),
                    at,
                ));
            }
            let e = RawDirectoryEntry::read_from_bytes(fixed).map_err(|_| broken())?;
            let name_size = e.name_size.get();
            let extra = u64::from(e.extra_data_size.get());
            let next = (pos + ENTRY_SIZE + u64::from(name_size) + extra).next_multiple_of(8);
            if next > dir_len {
                return Err(broken());
            }
            if extra != 0 {
                return Err(corrupt(
                    "bitmap extra data is not supported".to_string(),
                    at + 20,
                ));
            }
            let name_at = (pos + ENTRY_SIZE) as usize;
            let name_bytes = dir
                .get(name_at..name_at + usize::from(name_size))
                .ok_or_else(broken)?;
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(name_bytes.get(..end).unwrap_or_default());
            if let Some(problem) = entry_problem(&e, cluster_size, virtual_size) {
                return Err(corrupt(
                    format!("bitmap '{name}' doesn't satisfy the constraints: {problem}"),
                    at,
                ));
            }
            bitmaps.push(Bitmap {
                name: name.into_owned(),
                raw_name: name_bytes.to_vec(),
                granularity: 1u64 << e.granularity_bits,
                flags: e.flags.get(),
                table_offset: e.table_offset.get(),
                table_size: e.table_size.get(),
            });
            pos = next;
        }
        if bitmaps.len() != self.count as usize {
            return Err(corrupt(
                format!(
                    "less bitmaps found ({}) than the {} the header extension names",
                    bitmaps.len(),
                    self.count
                ),
                self.offset,
            ));
        }
        Ok(bitmaps)
    }
}

/// What makes a directory entry unacceptable to QEMU (`check_dir_entry`), if anything.
fn entry_problem(
    e: &RawDirectoryEntry,
    cluster_size: u64,
    virtual_size: u64,
) -> Option<&'static str> {
    let table_size = e.table_size.get();
    let table_offset = e.table_offset.get();
    let flags = e.flags.get();
    if table_size == 0 || table_offset == 0 || table_offset % cluster_size != 0 {
        return Some("bad bitmap table offset or size");
    }
    if table_size > MAX_TABLE_ENTRIES {
        return Some("bitmap table too large");
    }
    if !GRANULARITY_BITS.contains(&e.granularity_bits) {
        return Some("granularity out of range");
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Some("reserved flags set");
    }
    if e.name_size.get() > MAX_NAME_BYTES {
        return Some("name too long");
    }
    if e.kind != TYPE_DIRTY_TRACKING {
        return Some("unknown bitmap type");
    }
    let phys_bytes = u64::from(table_size) * cluster_size;
    if phys_bytes > MAX_PHYS_BYTES {
        return Some("bitmap data too large");
    }
    // phys_bytes <= 2^29, so the coverage is at most 2^32 << 31 = 2^63.
    if flags & FLAG_IN_USE == 0 && virtual_size > (phys_bytes * 8) << e.granularity_bits {
        return Some("bitmap table too small for the disk");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk_core::{HostOpenOptions, InfoValue};
    use std::process::Command;

    const CLUSTER: u64 = 65536;

    fn dir_entry(name: &[u8], flags: u32, granularity_bits: u8, table_size: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&(3 * CLUSTER).to_be_bytes());
        e.extend_from_slice(&table_size.to_be_bytes());
        e.extend_from_slice(&flags.to_be_bytes());
        e.push(TYPE_DIRTY_TRACKING);
        e.push(granularity_bits);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&0u32.to_be_bytes());
        e.extend_from_slice(name);
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    /// Reads `dir` as a directory of `count` bitmaps at 64 KiB in a file, for a 4 MiB disk.
    fn read_dir(dir: &[u8], count: u32, size: u64) -> Result<Vec<Bitmap>> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d");
        let mut bytes = vec![0u8; CLUSTER as usize];
        bytes.extend_from_slice(dir);
        std::fs::write(&path, &bytes).unwrap();
        let file = HostFile::open(&path, HostOpenOptions::default())?;
        let d = BitmapDirectory {
            count,
            size,
            offset: CLUSTER,
        };
        d.read(&file, CLUSTER, 4 << 20)
    }

    #[test]
    fn reads_directory_entries() {
        let mut dir = dir_entry(b"b0", FLAG_AUTO, 16, 1);
        dir.extend(dir_entry(b"b1", FLAG_IN_USE | 4, 17, 1));
        let got = read_dir(&dir, 2, dir.len() as u64).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].name.as_str(), got[0].granularity), ("b0", 65536));
        let value = crate::bitmaps::info::info_value(&got);
        let InfoValue::List(items) = value else {
            panic!("a list")
        };
        let InfoValue::Map(second) = &items[1] else {
            panic!("a map")
        };
        assert_eq!(
            second[2].1,
            InfoValue::List(vec![InfoValue::String("in-use".into())])
        );
    }

    #[test]
    fn serialized_directories_read_back() {
        let bitmaps: Vec<Bitmap> = [("a", 16u8, FLAG_AUTO), ("longer name", 19, 0)]
            .iter()
            .map(|&(name, bits, flags)| Bitmap {
                name: name.to_string(),
                raw_name: name.as_bytes().to_vec(),
                granularity: 1 << bits,
                flags,
                table_offset: 3 * CLUSTER,
                table_size: 1,
            })
            .collect();
        let dir = serialize(&bitmaps);
        assert_eq!(dir.len() % 8, 0);
        assert_eq!(read_dir(&dir, 2, dir.len() as u64).unwrap(), bitmaps);
        let payload = extension_payload(2, dir.len() as u64, CLUSTER);
        let raw = RawExtension::read_from_bytes(&payload[..]).unwrap();
        assert_eq!(
            (
                raw.nb_bitmaps.get(),
                raw.directory_size.get(),
                raw.directory_offset.get()
            ),
            (2, dir.len() as u64, CLUSTER)
        );
    }

    #[test]
    fn refuses_bad_directories() {
        let good = dir_entry(b"b0", 0, 16, 1);
        let size = good.len() as u64;
        // Count mismatch both ways, a truncated directory, trailing bytes.
        assert!(read_dir(&good, 2, size).is_err());
        let mut two = good.clone();
        two.extend(dir_entry(b"b1", 0, 16, 1));
        assert!(read_dir(&two, 1, two.len() as u64).is_err());
        assert!(read_dir(&good, 1, size - 8).is_err());
        assert!(read_dir(&good, 1, size + 4).is_err());
        // Each constraint of QEMU's check_dir_entry.
        let patched = |at: usize, bytes: &[u8]| {
            let mut e = good.clone();
            e[at..at + bytes.len()].copy_from_slice(bytes);
            e
        };
        for (what, e) in [
            ("table offset 0", patched(0, &0u64.to_be_bytes())),
            ("unaligned table", patched(0, &(CLUSTER + 8).to_be_bytes())),
            ("empty table", patched(8, &0u32.to_be_bytes())),
            (
                "huge table",
                patched(8, &(MAX_TABLE_ENTRIES + 1).to_be_bytes()),
            ),
            ("data above 512 MiB", patched(8, &8193u32.to_be_bytes())),
            ("reserved flag", patched(12, &8u32.to_be_bytes())),
            ("type", patched(16, &[2])),
            ("granularity 8", patched(17, &[8])),
            ("granularity 32", patched(17, &[32])),
            ("extra data", patched(20, &8u32.to_be_bytes())),
        ] {
            let err = read_dir(&e, 1, e.len().max(good.len()) as u64).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::CorruptImage, "{what}");
        }
        // A name longer than 1023 bytes.
        let long = dir_entry(&[b'x'; 1024], 0, 16, 1);
        assert!(read_dir(&long, 1, long.len() as u64).is_err());
    }

    #[test]
    fn table_too_small_is_refused_unless_in_use() {
        let e = RawDirectoryEntry::read_from_bytes(&dir_entry(b"", 0, 9, 1)[..24]).unwrap();
        // One 512-byte cluster of bits at 512-byte granularity covers 2 MiB.
        assert!(entry_problem(&e, 512, 2 << 20).is_none());
        assert!(entry_problem(&e, 512, (2 << 20) + 1).is_some());
        let e =
            RawDirectoryEntry::read_from_bytes(&dir_entry(b"", FLAG_IN_USE, 9, 1)[..24]).unwrap();
        assert!(entry_problem(&e, 512, 1 << 40).is_none());
    }

    /// A qemu-img-made image with one bitmap; its cluster 0 with the extension payload patched by `patch`.
    fn extension_with(patch: impl Fn(&mut [u8])) -> Option<Result<Option<BitmapDirectory>>> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("b.qcow2");
        let run = |args: &[&str]| Command::new("qemu-img").args(args).output().ok();
        run(&["create", "-q", "-f", "qcow2", path.to_str()?, "4M"])?;
        run(&["bitmap", "--add", path.to_str()?, "b0"])?;
        let mut bytes = std::fs::read(&path).ok()?;
        let magic = EXT_BITMAPS.to_be_bytes();
        let at = bytes.windows(4).position(|w| w == magic)? + 8;
        patch(&mut bytes[at..at + EXTENSION_SIZE]);
        std::fs::write(&path, &bytes).ok()?;
        let header = Header::parse(&bytes[..CLUSTER as usize], bytes.len() as u64).ok()?;
        let file = HostFile::open(&path, HostOpenOptions::default()).ok()?;
        Some(BitmapDirectory::from_header(
            &file,
            bytes.len() as u64,
            &header,
        ))
    }

    #[test]
    fn validates_the_extension_as_qemu() {
        let Some(good) = extension_with(|_| {}) else {
            eprintln!("qemu-img not available: skipped");
            return;
        };
        let dir = good.unwrap().unwrap();
        assert_eq!(dir.count, 1);
        for (what, patch) in [
            ("zero bitmaps", (0usize, 0u64, 4usize)),
            ("too many bitmaps", (0, 65536, 4)),
            ("reserved", (4, 1, 4)),
            ("unaligned directory", (16, 0x10008, 8)),
            ("huge directory", (8, MAX_DIRECTORY_BYTES + 1, 8)),
            ("empty directory", (8, 0, 8)),
        ] {
            let (at, value, width) = patch;
            let result = extension_with(|ext| {
                let b = value.to_be_bytes();
                ext[at..at + width].copy_from_slice(&b[8 - width..]);
            })
            .unwrap();
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::CorruptImage, "{what}");
            assert!(err.offset().is_some_and(|o| o >= 112), "{what}: {err}");
        }
    }
}
