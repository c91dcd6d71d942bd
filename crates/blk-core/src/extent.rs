//! Where a guest range lives: the mapping a format answers for `map`, `convert` and sparse copies.

/// What a guest range reads as, and whether some layer of the image allocates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Guest data stored in the image (or, at `depth > 0`, in a backing file).
    Data,
    /// Reads as zeros and is known to be zero (a hole, a zero cluster, a discarded range).
    Zero,
    /// Allocated nowhere in the chain; reads as zeros (qemu-img map: `present: false`).
    Unallocated,
    /// Storage is allocated for the run (at `host_offset`), but it is known to read as zeros: a hole in the
    /// host file under a fixed VHD or a preallocated cluster (qemu-img map: `data: true, zero: true`).
    AllocatedZero,
}

/// One contiguous run of guest bytes with the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Guest offset of the run.
    pub offset: u64,
    /// Length of the run in bytes (at least 1 for a non-empty query).
    pub length: u64,
    /// What the run reads as.
    pub kind: ExtentKind,
    /// How many backing layers down the run is answered (0: this image).
    pub depth: u32,
    /// Where the run starts in the host file that stores it, when it maps to one contiguous host range.
    pub host_offset: Option<u64>,
    /// Whether the run is stored compressed.
    pub compressed: bool,
}

impl Extent {
    /// A run of plain data at depth 0 stored at `host_offset`.
    pub fn data(offset: u64, length: u64, host_offset: Option<u64>) -> Extent {
        Extent {
            offset,
            length,
            kind: ExtentKind::Data,
            depth: 0,
            host_offset,
            compressed: false,
        }
    }

    /// A run of known zeros at depth 0.
    pub fn zero(offset: u64, length: u64, host_offset: Option<u64>) -> Extent {
        Extent {
            offset,
            length,
            kind: ExtentKind::Zero,
            depth: 0,
            host_offset,
            compressed: false,
        }
    }

    /// A run of allocated storage at depth 0, stored at `host_offset`, known to read as zeros.
    pub fn allocated_zero(offset: u64, length: u64, host_offset: Option<u64>) -> Extent {
        Extent {
            offset,
            length,
            kind: ExtentKind::AllocatedZero,
            depth: 0,
            host_offset,
            compressed: false,
        }
    }

    /// Whether reading the run is known to give zeros without reading anything.
    pub fn reads_as_zero(&self) -> bool {
        self.kind != ExtentKind::Data
    }

    /// Whether the run has storage allocated for it (qemu-img map's `data`).
    pub fn is_allocated_data(&self) -> bool {
        matches!(self.kind, ExtentKind::Data | ExtentKind::AllocatedZero)
    }
}
