//! What the guest does to the disk: pattern writes (each at a multiple of its length, so `dd` can seek to it)
//! and discards, laid out for a 64 MiB image whose lower part has backing-file and image data underneath.

/// One pattern write: `len` bytes of `pattern` at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternWrite {
    /// Byte offset (a multiple of `len`).
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// The byte repeated.
    pub pattern: u8,
}

/// A byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// The guest's writes and discards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPlan {
    /// Written in order.
    pub writes: Vec<PatternWrite>,
    /// Discarded after the writes (their contents are unspecified afterwards).
    pub discards: Vec<ByteRange>,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl GuestPlan {
    /// The plan for a disk of `size` bytes (at least 48 MiB).
    pub fn for_size(size: u64) -> GuestPlan {
        let last = (size / (64 * KIB)) * (64 * KIB) - 64 * KIB;
        GuestPlan {
            writes: vec![
                // Over data the image has (and, for QCOW2, over its backing file's).
                PatternWrite {
                    offset: MIB,
                    len: 256 * KIB,
                    pattern: 0xa5,
                },
                // A partial cluster over backing data: copy-on-write.
                PatternWrite {
                    offset: 3 * MIB + 4 * KIB,
                    len: 4 * KIB,
                    pattern: 0x77,
                },
                // Into unallocated space.
                PatternWrite {
                    offset: 40 * MIB + 8 * KIB,
                    len: 8 * KIB,
                    pattern: 0x5a,
                },
                // The disk's last 64 KiB.
                PatternWrite {
                    offset: last,
                    len: 64 * KIB,
                    pattern: 0x3c,
                },
            ],
            discards: vec![
                ByteRange {
                    offset: 8 * MIB,
                    len: 4 * MIB,
                },
                ByteRange {
                    offset: 20 * MIB,
                    len: MIB,
                },
            ],
        }
    }

    /// Whether byte `offset` lies in a discarded range.
    pub fn discarded(&self, offset: u64) -> bool {
        self.discards
            .iter()
            .any(|d| offset >= d.offset && offset - d.offset < d.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_aligned_to_their_length() {
        let plan = GuestPlan::for_size(64 * MIB + 4096);
        for w in &plan.writes {
            assert_eq!(w.offset % w.len, 0, "{w:?}");
            assert!(w.offset + w.len <= 64 * MIB + 4096);
            assert!(!plan.discarded(w.offset));
        }
        assert!(plan.discarded(8 * MIB));
        assert!(!plan.discarded(12 * MIB));
    }
}
