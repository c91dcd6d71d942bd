//! One bitmap's bits in memory: one bit per granule of guest data, bit `i` of the bitmap at bit `i % 8` of
//! byte `i / 8` (QEMU's little-endian serialization), held as 64-bit words so that bit `i` is bit `i % 64` of
//! word `i / 64` and a word's little-endian bytes are the stored bytes.

/// The bits of one bitmap over a disk of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirtyBits {
    granularity_bits: u8,
    size: u64,
    words: Vec<u64>,
}

impl DirtyBits {
    /// All clear, for a disk of `size` bytes at 2^`granularity_bits` bytes per bit. The caller bounds the
    /// memory (`size >> granularity_bits` bits).
    pub(crate) fn new(size: u64, granularity_bits: u8) -> DirtyBits {
        let bits = size.div_ceil(1u64 << granularity_bits);
        DirtyBits {
            granularity_bits,
            size,
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    /// Bytes of memory the bits of a `size`-byte disk at this granularity take.
    pub(crate) fn memory_for(size: u64, granularity_bits: u8) -> u64 {
        size.div_ceil(1u64 << granularity_bits).div_ceil(64) * 8
    }

    /// Bytes of guest data per bit.
    pub(crate) fn granularity(&self) -> u64 {
        1u64 << self.granularity_bits
    }

    /// The disk size the bits cover.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the serialized bitmap (whole 64-bit words).
    pub(crate) fn byte_len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// Sets the bits of the granules `offset..offset + len` touches (clipped to the disk); returns whether a
    /// bit changed. A word whose bits are all set already is only read.
    pub(crate) fn set_range(&mut self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return false;
        }
        let first = offset >> self.granularity_bits;
        let last = (end - 1) >> self.granularity_bits;
        let mut changed = false;
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        for w in fw..=lw {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if let Some(word) = self.words.get_mut(w) {
                if *word & mask != mask {
                    *word |= mask;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Clears every bit.
    pub(crate) fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Whether the bit of granule `index` is set.
    #[cfg(test)]
    pub(crate) fn get(&self, index: u64) -> bool {
        self.words
            .get((index / 64) as usize)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Changes the disk size: bits past a new end are dropped, new granules are clear (QEMU's
    /// `hbitmap_truncate`).
    pub(crate) fn resize(&mut self, size: u64) {
        let bits = size.div_ceil(self.granularity());
        self.words.resize(bits.div_ceil(64) as usize, 0);
        if bits % 64 != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= u64::MAX >> (64 - bits % 64);
            }
        }
        self.size = size;
    }

    /// The serialized bytes `start..start + out.len()` (zeros past the end).
    pub(crate) fn read_bytes(&self, start: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let at = start + i as u64;
            *b = self
                .words
                .get((at / 8) as usize)
                .map_or(0, |w| w.to_le_bytes()[(at % 8) as usize]);
        }
    }

    /// Sets the serialized bytes from `start` to `bytes` (bits past the disk's end dropped).
    pub(crate) fn write_bytes(&mut self, start: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = start + i as u64;
            if let Some(w) = self.words.get_mut((at / 8) as usize) {
                let shift = (at % 8) * 8;
                *w = (*w & !(0xff << shift)) | (u64::from(b) << shift);
            }
        }
        self.resize(self.size);
    }

    /// Whether serialized bytes `start..start + len` are all zero.
    pub(crate) fn bytes_are_zero(&self, start: u64, len: u64) -> bool {
        // Whole words: `start` and `len` are multiples of 8 for cluster-sized pieces.
        let first = (start / 8) as usize;
        let last = (start + len).div_ceil(8) as usize;
        self.words
            .get(first..last.min(self.words.len()))
            .is_none_or(|ws| ws.iter().all(|&w| w == 0))
    }

    /// The dirty ranges `(offset, len)` in guest bytes, in order, merged, clipped to the disk.
    pub(crate) fn extents(&self) -> DirtyExtents<'_> {
        DirtyExtents {
            bits: self,
            next: 0,
        }
    }

    /// The first granule at or after `from` whose bit is `value`, or the number of granules.
    fn find(&self, from: u64, value: bool) -> u64 {
        let total = self.size.div_ceil(self.granularity());
        let mut index = from;
        while index < total {
            let w = (index / 64) as usize;
            let word = self.words.get(w).copied().unwrap_or(0);
            let word = if value { word } else { !word };
            let rest = word & (u64::MAX << (index % 64));
            if rest != 0 {
                return (w as u64 * 64 + u64::from(rest.trailing_zeros())).min(total);
            }
            index = (w as u64 + 1) * 64;
        }
        total
    }
}

/// Iterator over the dirty ranges of a [`DirtyBits`].
#[derive(Debug)]
pub(crate) struct DirtyExtents<'a> {
    bits: &'a DirtyBits,
    next: u64,
}

impl Iterator for DirtyExtents<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let start = self.bits.find(self.next, true);
        let end = self.bits.find(start, false);
        if start >= end {
            return None;
        }
        self.next = end;
        let g = self.bits.granularity_bits;
        let offset = start << g;
        Some((offset, (end << g).min(self.bits.size) - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bits_are_little_endian_in_bytes() {
        let mut b = DirtyBits::new(1 << 20, 16);
        assert!(b.set_range(0, 1));
        assert!(!b.set_range(100, 1));
        assert!(b.set_range(9 << 16, 1 << 16));
        let mut bytes = [0u8; 3];
        b.read_bytes(0, &mut bytes);
        assert_eq!(bytes, [0b1, 0b10, 0]);
        let mut c = DirtyBits::new(1 << 20, 16);
        c.write_bytes(0, &bytes);
        assert_eq!(b, c);
        assert_eq!(
            b.extents().collect::<Vec<_>>(),
            vec![(0, 1 << 16), (9 << 16, 1 << 16)]
        );
    }

    #[test]
    fn the_last_granule_is_clipped_to_the_disk() {
        let mut b = DirtyBits::new(100_000, 16);
        b.set_range(99_999, 10);
        assert_eq!(
            b.extents().collect::<Vec<_>>(),
            vec![(65536, 100_000 - 65536)]
        );
        b.resize(65536);
        assert_eq!(b.extents().count(), 0);
        // Bytes past the disk's end are dropped.
        b.write_bytes(0, &[0xff; 8]);
        assert_eq!(b.extents().collect::<Vec<_>>(), vec![(0, 65536)]);
    }

    proptest! {
        /// Against a plain model: one bool per granule.
        #[test]
        fn matches_a_model(
            writes in proptest::collection::vec((0u64..(1 << 22), 0u64..(1 << 18)), 0..20),
            bits in 9u8..18,
        ) {
            let size = (1u64 << 22) - 1234;
            let mut b = DirtyBits::new(size, bits);
            let g = 1u64 << bits;
            let mut model = vec![false; size.div_ceil(g) as usize];
            for (offset, len) in writes {
                let end = (offset + len).min(size);
                let mut changed = false;
                if offset < end {
                    for i in offset / g..=(end - 1) / g {
                        changed |= !model[i as usize];
                        model[i as usize] = true;
                    }
                }
                prop_assert_eq!(b.set_range(offset, len), changed);
            }
            for (i, &m) in model.iter().enumerate() {
                prop_assert_eq!(b.get(i as u64), m);
            }
            let mut from_extents = vec![false; model.len()];
            for (offset, len) in b.extents() {
                for i in offset / g..(offset + len).div_ceil(g) {
                    from_extents[i as usize] = true;
                }
            }
            prop_assert_eq!(from_extents, model);
        }
    }
}
