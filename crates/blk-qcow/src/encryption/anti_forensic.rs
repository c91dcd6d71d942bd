//! LUKS1's anti-forensic split: a key spread over `stripes` blocks so that wiping any part of the key material
//! destroys the key. Merge (unlock) and split (new key slots), as QEMU's `crypto/afsplit.c` and the LUKS1
//! specification define them.

use zeroize::Zeroizing;

use crate::encryption::algorithms::HashAlg;

/// LUKS's diffusion: each digest-sized piece of `block` replaced by the hash of its index (big-endian u32)
/// and the piece, the last piece truncated.
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let d = hash.digest_len();
    for (i, piece) in block.chunks_mut(d).enumerate() {
        let out = hash.digest(&[&(i as u32).to_be_bytes(), piece]);
        let n = piece.len();
        piece.copy_from_slice(&out[..n]);
    }
}

fn xor_into(acc: &mut [u8], with: &[u8]) {
    for (a, w) in acc.iter_mut().zip(with) {
        *a ^= w;
    }
}

/// The key of `key_len` bytes that `material` (`stripes` blocks of `key_len` bytes) holds.
pub fn merge(hash: HashAlg, material: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let mut block = Zeroizing::new(vec![0u8; key_len]);
    let stripes: Vec<&[u8]> = material.chunks_exact(key_len).collect();
    if let Some((last, rest)) = stripes.split_last() {
        for stripe in rest {
            xor_into(&mut block, stripe);
            diffuse(hash, &mut block);
        }
        xor_into(&mut block, last);
    }
    block
}

/// Spreads `key` over `stripes` blocks, the first `stripes - 1` of them from `random` (filled by the
/// caller with random bytes, `(stripes - 1) * key.len()` of them): the key material of a slot.
pub fn split(hash: HashAlg, key: &[u8], random: &[u8], stripes: usize) -> Zeroizing<Vec<u8>> {
    let len = key.len();
    let mut out = Zeroizing::new(vec![0u8; len * stripes]);
    let mut block = Zeroizing::new(vec![0u8; len]);
    for (i, stripe) in random.chunks_exact(len).take(stripes - 1).enumerate() {
        out[i * len..(i + 1) * len].copy_from_slice(stripe);
        xor_into(&mut block, stripe);
        diffuse(hash, &mut block);
    }
    xor_into(&mut block, key);
    out[(stripes - 1) * len..].copy_from_slice(&block);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key() {
        let key: Vec<u8> = (0..64).collect();
        let random: Vec<u8> = (0..64 * 9).map(|i| (i * 31 % 251) as u8).collect();
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let material = split(hash, &key, &random, 10);
            assert_eq!(*merge(hash, &material, 64), key);
        }
    }
}
