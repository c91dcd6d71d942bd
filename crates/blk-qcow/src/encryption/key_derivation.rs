//! PBKDF2-HMAC (RFC 8018) over the hashes' raw compression functions: the HMAC keys' inner and outer states
//! are computed once, and each of the (up to millions of) iterations is exactly two compressions of one
//! padded block. The compression functions come optimized from the `sha1`/`sha2` crates whatever the build
//! profile, so unlocking takes the same time in test builds as in release builds.

use aes::cipher::generic_array::GenericArray;
use zeroize::Zeroize;

use crate::encryption::algorithms::HashAlg;

/// A hash's chaining state and its compression function.
trait Compress: Copy + Zeroize {
    /// The block size in bytes.
    const BLOCK: usize;
    /// The length field's size in the last block.
    const LENGTH_BYTES: usize;
    /// Compresses one block (`BLOCK` bytes).
    fn compress(&mut self, block: &[u8]);
    /// The digest (big-endian words), truncated to `out.len()`.
    fn output(&self, out: &mut [u8]);
}

#[derive(Clone, Copy)]
struct Sha1State([u32; 5]);
#[derive(Clone, Copy)]
struct Sha256State([u32; 8]);
#[derive(Clone, Copy)]
struct Sha512State([u64; 8]);

impl Zeroize for Sha1State {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Zeroize for Sha256State {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Zeroize for Sha512State {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// Writes `words` big-endian into `out`, truncated to its length.
fn output_u32(words: &[u32], out: &mut [u8]) {
    for (chunk, w) in out.chunks_mut(4).zip(words) {
        let n = chunk.len();
        chunk.copy_from_slice(&w.to_be_bytes()[..n]);
    }
}

/// Writes `words` big-endian into `out`, truncated to its length.
fn output_u64(words: &[u64], out: &mut [u8]) {
    for (chunk, w) in out.chunks_mut(8).zip(words) {
        let n = chunk.len();
        chunk.copy_from_slice(&w.to_be_bytes()[..n]);
    }
}

impl Compress for Sha1State {
    const BLOCK: usize = 64;
    const LENGTH_BYTES: usize = 8;
    fn compress(&mut self, block: &[u8]) {
        sha1::compress(
            &mut self.0,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    fn output(&self, out: &mut [u8]) {
        output_u32(&self.0, out);
    }
}

impl Compress for Sha256State {
    const BLOCK: usize = 64;
    const LENGTH_BYTES: usize = 8;
    fn compress(&mut self, block: &[u8]) {
        sha2::compress256(
            &mut self.0,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    fn output(&self, out: &mut [u8]) {
        output_u32(&self.0, out);
    }
}

impl Compress for Sha512State {
    const BLOCK: usize = 128;
    const LENGTH_BYTES: usize = 16;
    fn compress(&mut self, block: &[u8]) {
        sha2::compress512(
            &mut self.0,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    fn output(&self, out: &mut [u8]) {
        output_u64(&self.0, out);
    }
}

/// Hashes `data` on from `state`, which has already absorbed `prefix` bytes (whole blocks), with the final
/// padding; writes the digest (`out.len()` bytes).
fn finish<S: Compress>(mut state: S, prefix: usize, data: &[u8], out: &mut [u8]) {
    let total_bits = ((prefix + data.len()) as u128) * 8;
    let mut blocks = data.chunks_exact(S::BLOCK);
    for block in blocks.by_ref() {
        state.compress(block);
    }
    let rest = blocks.remainder();
    let mut last = [0u8; 256];
    last[..rest.len()].copy_from_slice(rest);
    last[rest.len()] = 0x80;
    let len = if rest.len() + 1 + S::LENGTH_BYTES <= S::BLOCK {
        S::BLOCK
    } else {
        2 * S::BLOCK
    };
    let length = total_bits.to_be_bytes();
    last[len - S::LENGTH_BYTES..len].copy_from_slice(&length[16 - S::LENGTH_BYTES..]);
    for block in last[..len].chunks_exact(S::BLOCK) {
        state.compress(block);
    }
    state.output(out);
    last.zeroize();
    state.zeroize();
}

fn pbkdf2_with<S: Compress>(
    iv: S,
    hash: HashAlg,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    out: &mut [u8],
) {
    let d = hash.digest_len();
    // The HMAC key block: the password, hashed when longer than a block.
    let mut key = [0u8; 128];
    if password.len() > S::BLOCK {
        key[..d].copy_from_slice(&hash.digest(&[password]));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let (mut inner, mut outer) = (iv, iv);
    let mut pad = [0u8; 128];
    for (p, k) in pad.iter_mut().zip(&key).take(S::BLOCK) {
        *p = k ^ 0x36;
    }
    inner.compress(&pad[..S::BLOCK]);
    for (p, k) in pad.iter_mut().zip(&key).take(S::BLOCK) {
        *p = k ^ 0x5c;
    }
    outer.compress(&pad[..S::BLOCK]);
    let hmac = |data: &[u8], out: &mut [u8]| {
        let mut inner_digest = [0u8; 64];
        finish(inner, S::BLOCK, data, &mut inner_digest[..d]);
        finish(outer, S::BLOCK, &inner_digest[..d], out);
        inner_digest.zeroize();
    };
    let mut u = [0u8; 64];
    let mut t = [0u8; 64];
    let mut first = Vec::with_capacity(salt.len() + 4);
    for (i, chunk) in out.chunks_mut(d).enumerate() {
        first.clear();
        first.extend_from_slice(salt);
        first.extend_from_slice(&(i as u32 + 1).to_be_bytes());
        hmac(&first, &mut u[..d]);
        t[..d].copy_from_slice(&u[..d]);
        // Every later message is one digest: one padded block, the same for the inner and the outer hash.
        let mut block = [0u8; 128];
        block[d] = 0x80;
        let bits = (((S::BLOCK + d) as u128) * 8).to_be_bytes();
        block[S::BLOCK - S::LENGTH_BYTES..S::BLOCK].copy_from_slice(&bits[16 - S::LENGTH_BYTES..]);
        let block = &mut block[..S::BLOCK];
        for _ in 1..iterations {
            block[..d].copy_from_slice(&u[..d]);
            let mut state = inner;
            state.compress(block);
            state.output(&mut block[..d]);
            let mut state = outer;
            state.compress(block);
            state.output(&mut u[..d]);
            for (a, b) in t[..d].iter_mut().zip(&u[..d]) {
                *a ^= b;
            }
        }
        block.zeroize();
        let n = chunk.len();
        chunk.copy_from_slice(&t[..n]);
    }
    key.zeroize();
    pad.zeroize();
    u.zeroize();
    t.zeroize();
    inner.zeroize();
    outer.zeroize();
}

/// PBKDF2-HMAC with `hash`: `out.len()` bytes from `password`, `salt` and `iterations` (at least 1) rounds.
pub fn pbkdf2(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    let iterations = iterations.max(1);
    match hash {
        HashAlg::Sha1 => pbkdf2_with(
            Sha1State([
                0x6745_2301,
                0xefcd_ab89,
                0x98ba_dcfe,
                0x1032_5476,
                0xc3d2_e1f0,
            ]),
            hash,
            password,
            salt,
            iterations,
            out,
        ),
        HashAlg::Sha224 => pbkdf2_with(
            Sha256State([
                0xc105_9ed8,
                0x367c_d507,
                0x3070_dd17,
                0xf70e_5939,
                0xffc0_0b31,
                0x6858_1511,
                0x64f9_8fa7,
                0xbefa_4fa4,
            ]),
            hash,
            password,
            salt,
            iterations,
            out,
        ),
        HashAlg::Sha256 => pbkdf2_with(
            Sha256State([
                0x6a09_e667,
                0xbb67_ae85,
                0x3c6e_f372,
                0xa54f_f53a,
                0x510e_527f,
                0x9b05_688c,
                0x1f83_d9ab,
                0x5be0_cd19,
            ]),
            hash,
            password,
            salt,
            iterations,
            out,
        ),
        HashAlg::Sha384 => pbkdf2_with(
            Sha512State([
                0xcbbb_9d5d_c105_9ed8,
                0x629a_292a_367c_d507,
                0x9159_015a_3070_dd17,
                0x152f_ecd8_f70e_5939,
                0x6733_2667_ffc0_0b31,
                0x8eb4_4a87_6858_1511,
                0xdb0c_2e0d_64f9_8fa7,
                0x47b5_481d_befa_4fa4,
            ]),
            hash,
            password,
            salt,
            iterations,
            out,
        ),
        HashAlg::Sha512 => pbkdf2_with(
            Sha512State([
                0x6a09_e667_f3bc_c908,
                0xbb67_ae85_84ca_a73b,
                0x3c6e_f372_fe94_f82b,
                0xa54f_f53a_5f1d_36f1,
                0x510e_527f_ade6_82d1,
                0x9b05_688c_2b3e_6c1f,
                0x1f83_d9ab_fb41_bd6b,
                0x5be0_cd19_137e_2179,
            ]),
            hash,
            password,
            salt,
            iterations,
            out,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use ::pbkdf2::pbkdf2_hmac;
        match hash {
            HashAlg::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
    }

    /// Matches the `pbkdf2` crate's RFC 8018 implementation, for every hash, short and long passwords and
    /// outputs longer than a digest.
    #[test]
    fn matches_the_reference_implementation() {
        let long = [7u8; 200];
        for hash in [
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            for password in [&b"password"[..], &long[..], &[][..]] {
                for (iterations, len) in [(1, 20), (2, 64), (37, 100)] {
                    let mut ours = vec![0u8; len];
                    let mut theirs = vec![0u8; len];
                    pbkdf2(hash, password, b"NaCl salt", iterations, &mut ours);
                    reference(hash, password, b"NaCl salt", iterations, &mut theirs);
                    assert_eq!(ours, theirs, "{hash:?} {iterations} {len}");
                }
            }
        }
        // RFC 6070: PBKDF2-HMAC-SHA1("password", "salt", 2, 20).
        let mut out = [0u8; 20];
        pbkdf2(HashAlg::Sha1, b"password", b"salt", 2, &mut out);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }
}
