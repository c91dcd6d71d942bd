//! What `blk info` and `blk check` report about an image, in qemu-img's terms.

use std::path::PathBuf;

/// A value in an image's format-specific information (a JSON-like tree, rendered by the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoValue {
    /// A boolean.
    Bool(bool),
    /// An unsigned number.
    U64(u64),
    /// A string.
    String(String),
    /// A list of values.
    List(Vec<InfoValue>),
    /// Named values, in the order qemu-img prints them.
    Map(Vec<(String, InfoValue)>),
}

/// An image's description, with the fields of `qemu-img info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format name as qemu-img spells it: `raw`, `qcow2`, `vpc`, `vhdx`.
    pub format: &'static str,
    /// The image file.
    pub filename: PathBuf,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// Host bytes allocated to the file (`st_blocks * 512`).
    pub actual_size: u64,
    /// The cluster or block size, for formats that have one.
    pub cluster_size: Option<u64>,
    /// Whether the image is marked dirty (needs a consistency repair before use).
    pub dirty: bool,
    /// The backing file as recorded in the image.
    pub backing_filename: Option<String>,
    /// The backing file resolved against the image's directory.
    pub full_backing_filename: Option<PathBuf>,
    /// The backing file's format as recorded in the image.
    pub backing_format: Option<String>,
    /// Internal snapshots, in the image's table order (qemu-img's `snapshots`; empty: none, and qemu-img
    /// prints no `snapshots` key nor `Snapshot list:`).
    pub snapshots: Vec<SnapshotInfo>,
    /// Format-specific data: qemu-img's `format-specific` `{type, data}`.
    pub format_specific: Option<(String, Vec<(String, InfoValue)>)>,
}

/// One internal snapshot, with the fields of qemu-img's `SnapshotInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's unique ID string (`"1"`, `"2"`, ...).
    pub id: String,
    /// The snapshot's name (tag).
    pub name: String,
    /// Bytes of saved VM state (0 for a disk-only snapshot).
    pub vm_state_size: u64,
    /// When the snapshot was taken: seconds since the Unix epoch.
    pub date_sec: u64,
    /// The nanoseconds part of the date.
    pub date_nsec: u64,
    /// The guest clock when the snapshot was taken, in nanoseconds (qemu-img splits it into `vm-clock-sec`
    /// and `vm-clock-nsec`).
    pub vm_clock_nsec: u64,
    /// The instruction count (record/replay), when the image records one.
    pub icount: Option<u64>,
}

/// Which internal snapshot to open (read-only) instead of the current disk: qemu-img's `-l` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SnapshotSelector {
    /// `ID_OR_NAME`: the snapshot with this ID, else the one with this name (QEMU's order).
    IdOrName(String),
    /// `snapshot.id=ID`.
    Id(String),
    /// `snapshot.name=NAME`.
    Name(String),
    /// `snapshot.id=ID,snapshot.name=NAME`: both must match.
    IdAndName(String, String),
}

impl SnapshotSelector {
    /// Parses qemu-img's `-l` syntax: `snapshot.id=ID`, `snapshot.name=NAME`, both separated by a comma, or a
    /// plain ID or name.
    ///
    /// ```
    /// use blk_core::SnapshotSelector;
    /// assert_eq!(SnapshotSelector::parse("snap1"), SnapshotSelector::IdOrName("snap1".into()));
    /// assert_eq!(
    ///     SnapshotSelector::parse("snapshot.id=2,snapshot.name=b"),
    ///     SnapshotSelector::IdAndName("2".into(), "b".into())
    /// );
    /// ```
    pub fn parse(text: &str) -> SnapshotSelector {
        if !text.starts_with("snapshot.") {
            return SnapshotSelector::IdOrName(text.to_string());
        }
        let (mut id, mut name) = (None, None);
        for part in text.split(',') {
            if let Some(v) = part.strip_prefix("snapshot.id=") {
                id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("snapshot.name=") {
                name = Some(v.to_string());
            }
        }
        match (id, name) {
            (Some(id), Some(name)) => SnapshotSelector::IdAndName(id, name),
            (Some(id), None) => SnapshotSelector::Id(id),
            (None, Some(name)) => SnapshotSelector::Name(name),
            (None, None) => SnapshotSelector::IdOrName(text.to_string()),
        }
    }

    /// Whether a snapshot with `id` and `name` is the one asked for, on the first pass (IDs) or the second
    /// (names, for [`SnapshotSelector::IdOrName`]).
    pub fn matches(&self, id: &str, name: &str, by_name: bool) -> bool {
        match self {
            SnapshotSelector::IdOrName(x) => (if by_name { name } else { id }) == x,
            SnapshotSelector::Id(x) => !by_name && id == x,
            SnapshotSelector::Name(x) => !by_name && name == x,
            SnapshotSelector::IdAndName(i, n) => !by_name && id == i && name == n,
        }
    }
}

impl std::fmt::Display for SnapshotSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotSelector::IdOrName(x) => write!(f, "{x}"),
            SnapshotSelector::Id(x) => write!(f, "snapshot.id={x}"),
            SnapshotSelector::Name(x) => write!(f, "snapshot.name={x}"),
            SnapshotSelector::IdAndName(i, n) => write!(f, "snapshot.id={i},snapshot.name={n}"),
        }
    }
}

/// How far `check` may go in repairing an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepairMode {
    /// Only report.
    #[default]
    None,
    /// Repair leaks (qemu-img `-r leaks`).
    Leaks,
    /// Repair leaks and corruptions (qemu-img `-r all`).
    All,
}

/// The result of a consistency check, with the counters of `qemu-img check --output=json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions found and left.
    pub corruptions: u64,
    /// Leaked clusters found and left.
    pub leaks: u64,
    /// Errors that stopped parts of the check.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Where the image's used area ends.
    pub image_end_offset: Option<u64>,
    /// Clusters in the guest-visible range.
    pub total_clusters: Option<u64>,
    /// Clusters allocated.
    pub allocated_clusters: Option<u64>,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters.
    pub compressed_clusters: Option<u64>,
    /// One line per problem, for the human-readable output.
    pub messages: Vec<String>,
    /// The check stopped before it finished (QEMU's check returning an error, e.g. refcounts that need a
    /// rebuild `-r leaks` may not do): only `messages` say what was found, and qemu-img prints no report.
    pub stopped: bool,
}
