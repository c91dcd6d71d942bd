//! Where each request of a bench run goes: qemu-img bench's stepped sequence, or blk's seeded random offsets.

/// The offsets one queue's requests use, in submission order.
#[derive(Debug, Clone)]
pub enum OffsetSequence {
    /// qemu-img bench's sequence: the first request at the start offset, then `offset = (offset + step) %
    /// image_size` after each request (QEMU 10.0 wraps modulo the whole image size, so a wrapped offset may
    /// leave a request crossing the end, which then fails as it does in QEMU), and 0 for an empty image.
    Stepped {
        /// The offset of the next request.
        next: u64,
        /// How far each request moves the offset.
        step: u64,
        /// The image's size in bytes.
        image_size: u64,
    },
    /// `--random SEED`: offsets drawn from a seeded generator, multiples of the buffer size, with the whole
    /// request inside the image.
    Random {
        /// The generator.
        generator: SplitMix64,
        /// How many whole buffers fit in the image.
        slots: u64,
        /// The buffer size (the alignment of every offset).
        buffer_size: u64,
    },
}

impl OffsetSequence {
    /// The stepped sequence of queue `queue` of `queues`: request `j` of the whole run goes to queue
    /// `j % queues`, so together the queues cover exactly qemu-img bench's offsets.
    pub fn stepped(
        start: u64,
        step: u64,
        image_size: u64,
        queue: u64,
        queues: u64,
    ) -> OffsetSequence {
        let first = if queue == 0 {
            start
        } else {
            wrap(
                u128::from(start) + u128::from(step) * u128::from(queue),
                image_size,
            )
        };
        OffsetSequence::Stepped {
            next: first,
            // At most 2^31 * 2^31: fits; wrapped by `next` anyway.
            step: wrap(u128::from(step) * u128::from(queues), image_size),
            image_size,
        }
    }

    /// The random sequence of queue `queue` for `seed` (each queue draws from its own stream).
    pub fn random(seed: u64, image_size: u64, buffer_size: u64, queue: u64) -> OffsetSequence {
        OffsetSequence::Random {
            generator: SplitMix64::new(seed ^ queue.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            slots: image_size / buffer_size.max(1),
            buffer_size,
        }
    }

    /// The offset of the next request.
    pub fn next_offset(&mut self) -> u64 {
        match self {
            OffsetSequence::Stepped {
                next,
                step,
                image_size,
            } => {
                let offset = *next;
                *next = wrap(u128::from(offset) + u128::from(*step), *image_size);
                offset
            }
            OffsetSequence::Random {
                generator,
                slots,
                buffer_size,
            } => match *slots {
                0 => 0,
                n => (generator.next_u64() % n) * *buffer_size,
            },
        }
    }
}

/// `value % image_size`, or 0 for an empty image (as qemu-img bench wraps).
fn wrap(value: u128, image_size: u64) -> u64 {
    match image_size {
        0 => 0,
        // Less than image_size, so it fits in u64.
        size => (value % u128::from(size)) as u64,
    }
}

/// SplitMix64: a tiny, fast, seedable generator, good enough to scatter benchmark offsets reproducibly.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(mut seq: OffsetSequence, n: usize) -> Vec<u64> {
        (0..n).map(|_| seq.next_offset()).collect()
    }

    #[test]
    fn stepped_wraps_modulo_the_image_size() {
        // What `qemu-img bench -c 5 -S 12288` visits on a 20 KiB image: 0, 12K, 4K, 16K, 8K.
        let seq = OffsetSequence::stepped(0, 12288, 20480, 0, 1);
        assert_eq!(take(seq, 5), [0, 12288, 4096, 16384, 8192]);
        // The start offset is used as given, even past the end (the request then fails, as in QEMU).
        let seq = OffsetSequence::stepped(30000, 4096, 20480, 0, 1);
        assert_eq!(take(seq, 2), [30000, 34096 % 20480]);
        assert_eq!(
            take(OffsetSequence::stepped(0, 4096, 0, 0, 1), 3),
            [0, 0, 0]
        );
    }

    #[test]
    fn queues_split_the_same_sequence() {
        let whole = take(OffsetSequence::stepped(512, 12288, 1 << 20, 0, 1), 12);
        let mut split = vec![0; 12];
        for queue in 0..3u64 {
            let mut seq = OffsetSequence::stepped(512, 12288, 1 << 20, queue, 3);
            for j in (queue as usize..12).step_by(3) {
                split[j] = seq.next_offset();
            }
        }
        assert_eq!(split, whole);
    }

    #[test]
    fn random_offsets_are_aligned_inside_and_reproducible() {
        let a = take(OffsetSequence::random(1, 1 << 20, 4096, 0), 1000);
        assert_eq!(a, take(OffsetSequence::random(1, 1 << 20, 4096, 0), 1000));
        assert_ne!(a, take(OffsetSequence::random(1, 1 << 20, 4096, 1), 1000));
        assert!(a.iter().all(|o| o % 4096 == 0 && o + 4096 <= 1 << 20));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 200, "scattered: {}", distinct.len());
        assert_eq!(take(OffsetSequence::random(1, 100, 4096, 0), 2), [0, 0]);
    }
}
