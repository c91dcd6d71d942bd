//! Feature bits of the header: incompatible, compatible and autoclear, and naming unknown ones.

use crate::image::extensions::FeatureName;

/// Incompatible bit 0: the refcounts may be inconsistent (lazy refcounts, or a crash while open).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: metadata corruption was detected; only read-only opens are allowed.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible bit 2: guest data lives in an external data file.
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible bit 3: the compression type field is not zlib.
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible bit 4: extended L2 entries (subclusters).
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// The incompatible bits this crate implements.
pub(crate) const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Autoclear bit 1: the external data file is raw (guest offset == data file offset).
pub(crate) const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Compatible bit 0: lazy refcounts.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// The feature name table qemu-img writes into new v3 images (type, bit, name).
pub(crate) const QEMU_FEATURE_TABLE: &[(u8, u8, &str)] = &[
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

/// Describes the unknown incompatible bits of `bits`, named from `table` when it has them, as QEMU does
/// ("Unsupported IMGFMT feature(s): name, Unknown incompatible feature: 40").
pub(crate) fn describe_unknown(bits: u64, table: &[FeatureName]) -> String {
    let mut names = Vec::new();
    for bit in 0..64u8 {
        if bits & (1u64 << bit) == 0 {
            continue;
        }
        match table.iter().find(|f| f.kind == 0 && f.bit == bit) {
            Some(f) => names.push(f.name.clone()),
            None => names.push(format!("Unknown incompatible feature: {:x}", 1u64 << bit)),
        }
    }
    format!("Unsupported qcow2 feature(s): {}", names.join(", "))
}
