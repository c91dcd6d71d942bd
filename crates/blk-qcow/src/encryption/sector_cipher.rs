//! The unlocked cipher: AES, Twofish or Serpent in XTS, CBC or ECB mode over 512-byte sectors, each with the IV its sector number
//! gives (`plain`, `plain64` or ESSIV), as QEMU's `qcrypto_block_encrypt`/`decrypt` do. Keys are zeroed when
//! the cipher is dropped (the `aes` crate's `zeroize` feature) and never printed.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256, Block};
use blk_core::{Error, ErrorKind, Result};
use serpent::Serpent;
use twofish::Twofish;

use crate::encryption::algorithms::{BlockCipher, CipherMode, CipherSpec, IvGen};

/// The sector size of LUKS encryption: every IV covers 512 bytes.
pub const SECTOR_SIZE: usize = 512;
/// AES blocks in a sector.
const BLOCKS: usize = SECTOR_SIZE / 16;

/// A keyed 128-bit block cipher: AES with one of its key lengths, Twofish or Serpent (any of theirs).
enum AnyCipher {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
    Twofish(Box<Twofish>),
    Serpent(Box<Serpent>),
}

impl AnyCipher {
    /// `cipher` keyed with `key` (16, 24 or 32 bytes).
    fn new(cipher: BlockCipher, key: &[u8]) -> Result<AnyCipher> {
        let bad = || Error::new(ErrorKind::InvalidInput, "bad cipher key length");
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(bad());
        }
        Ok(match (cipher, key.len()) {
            (BlockCipher::Aes, 16) => {
                AnyCipher::A128(Aes128::new_from_slice(key).map_err(|_| bad())?)
            }
            (BlockCipher::Aes, 24) => {
                AnyCipher::A192(Aes192::new_from_slice(key).map_err(|_| bad())?)
            }
            (BlockCipher::Aes, _) => {
                AnyCipher::A256(Aes256::new_from_slice(key).map_err(|_| bad())?)
            }
            (BlockCipher::Twofish, _) => {
                AnyCipher::Twofish(Box::new(Twofish::new_from_slice(key).map_err(|_| bad())?))
            }
            (BlockCipher::Serpent, _) => {
                AnyCipher::Serpent(Box::new(Serpent::new_from_slice(key).map_err(|_| bad())?))
            }
        })
    }

    fn encrypt(&self, blocks: &mut [Block]) {
        match self {
            AnyCipher::A128(c) => c.encrypt_blocks(blocks),
            AnyCipher::A192(c) => c.encrypt_blocks(blocks),
            AnyCipher::A256(c) => c.encrypt_blocks(blocks),
            AnyCipher::Twofish(c) => c.encrypt_blocks(blocks),
            AnyCipher::Serpent(c) => c.encrypt_blocks(blocks),
        }
    }

    fn decrypt(&self, blocks: &mut [Block]) {
        match self {
            AnyCipher::A128(c) => c.decrypt_blocks(blocks),
            AnyCipher::A192(c) => c.decrypt_blocks(blocks),
            AnyCipher::A256(c) => c.decrypt_blocks(blocks),
            AnyCipher::Twofish(c) => c.decrypt_blocks(blocks),
            AnyCipher::Serpent(c) => c.decrypt_blocks(blocks),
        }
    }
}

/// A cipher over 512-byte sectors, keyed (a key slot's derived key, or the master key).
pub struct SectorCipher {
    spec: CipherSpec,
    /// The data key (XTS: the first half of the key).
    data: AnyCipher,
    /// XTS: the tweak key (the second half).
    tweak: Option<AnyCipher>,
    /// ESSIV: AES keyed by the hash of the key.
    essiv: Option<AnyCipher>,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// XTS's multiplication of the tweak by x in GF(2^128), the tweak's 16 bytes read as a little-endian number.
fn next_tweak(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// `block ^= t`, the tweak as XTS lays it out (little-endian).
fn xor_tweak(block: &mut Block, t: u128) {
    let bytes: [u8; 16] = (*block).into();
    block.copy_from_slice(&(u128::from_le_bytes(bytes) ^ t).to_le_bytes());
}

fn xor(block: &mut Block, with: &[u8; 16]) {
    for (b, w) in block.iter_mut().zip(with) {
        *b ^= w;
    }
}

fn misaligned(len: usize) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("encrypted I/O of {len} bytes is not a multiple of {SECTOR_SIZE}-byte sectors"),
    )
}

impl SectorCipher {
    /// The cipher `spec` keyed with `key` ([`CipherSpec::key_bytes`] bytes).
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher> {
        if key.len() != spec.key_bytes() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a key of {} bytes for {spec:?}", key.len()),
            ));
        }
        let (data, tweak) = if spec.mode == CipherMode::Xts {
            let (a, b) = key.split_at(key.len() / 2);
            (
                AnyCipher::new(spec.cipher, a)?,
                Some(AnyCipher::new(spec.cipher, b)?),
            )
        } else {
            (AnyCipher::new(spec.cipher, key)?, None)
        };
        let essiv = match spec.ivgen {
            Some(IvGen::Essiv(hash)) => Some(AnyCipher::new(spec.cipher, &hash.digest(&[key]))?),
            _ => None,
        };
        Ok(SectorCipher {
            spec,
            data,
            tweak,
            essiv,
        })
    }

    /// The IV of sector `sector`.
    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.spec.ivgen {
            None => {}
            Some(IvGen::Plain) => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            Some(IvGen::Plain64) => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            Some(IvGen::Essiv(_)) => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                if let Some(essiv) = &self.essiv {
                    let mut block = [Block::from(iv)];
                    essiv.encrypt(&mut block);
                    iv.copy_from_slice(&block[0]);
                }
            }
        }
        iv
    }

    /// Encrypts `buf` (whole sectors) in place, its first sector numbered `sector`.
    pub fn encrypt(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.run(sector, buf, true)
    }

    /// Decrypts `buf` (whole sectors) in place, its first sector numbered `sector`.
    pub fn decrypt(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.run(sector, buf, false)
    }

    fn run(&self, sector: u64, buf: &mut [u8], encrypt: bool) -> Result<()> {
        // Whole sectors; only key material (`key_bytes * 4000` bytes) may end in a part of one, in whole
        // blocks (QEMU's helper encrypts the rest as a short sector).
        if buf.len() % 16 != 0 {
            return Err(misaligned(buf.len()));
        }
        let mut blocks = [Block::default(); BLOCKS];
        for (i, chunk) in buf.chunks_mut(SECTOR_SIZE).enumerate() {
            let n = chunk.len() / 16;
            for (b, c) in blocks.iter_mut().zip(chunk.chunks_exact(16)) {
                b.copy_from_slice(c);
            }
            let iv = self.iv(sector.wrapping_add(i as u64));
            self.sector(&mut blocks[..n], iv, encrypt);
            for (b, c) in blocks.iter().zip(chunk.chunks_exact_mut(16)) {
                c.copy_from_slice(b);
            }
        }
        blocks.iter_mut().for_each(|b| b.fill(0));
        Ok(())
    }

    /// One sector's blocks with its IV.
    fn sector(&self, blocks: &mut [Block], iv: [u8; 16], encrypt: bool) {
        match self.spec.mode {
            CipherMode::Xts => {
                let mut t = [Block::from(iv)];
                if let Some(tweak) = &self.tweak {
                    tweak.encrypt(&mut t);
                }
                let first: [u8; 16] = t[0].into();
                let mut cur = u128::from_le_bytes(first);
                let mut tweaks = [0u128; BLOCKS];
                for (b, slot) in blocks.iter_mut().zip(tweaks.iter_mut()) {
                    *slot = cur;
                    xor_tweak(b, cur);
                    cur = next_tweak(cur);
                }
                if encrypt {
                    self.data.encrypt(blocks);
                } else {
                    self.data.decrypt(blocks);
                }
                for (b, t) in blocks.iter_mut().zip(&tweaks) {
                    xor_tweak(b, *t);
                }
                tweaks.fill(0);
            }
            CipherMode::Cbc if encrypt => {
                let mut prev = iv;
                for b in blocks.iter_mut() {
                    xor(b, &prev);
                    self.data.encrypt(std::slice::from_mut(b));
                    prev = (*b).into();
                }
            }
            CipherMode::Cbc => {
                let mut chain = [[0u8; 16]; BLOCKS];
                chain[0] = iv;
                for i in 1..blocks.len() {
                    chain[i] = blocks[i - 1].into();
                }
                self.data.decrypt(blocks);
                for (b, c) in blocks.iter_mut().zip(&chain) {
                    xor(b, c);
                }
            }
            CipherMode::Ecb if encrypt => self.data.encrypt(blocks),
            CipherMode::Ecb => self.data.decrypt(blocks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IEEE 1619 XTS-AES-128 vector 4 (sector 0, 512 bytes of 0..=255 twice): the first and last 16 bytes.
    #[test]
    fn xts_matches_ieee_1619_vector_4() {
        let spec = CipherSpec::from_luks("aes", "xts-plain64", 32).unwrap();
        let key: Vec<u8> = ["2718281828459045235360287471352631415926535897932384626433832795"]
            .iter()
            .flat_map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            })
            .collect();
        let cipher = SectorCipher::new(spec, &key).unwrap();
        let mut buf: Vec<u8> = (0..512).map(|i| i as u8).collect();
        cipher.encrypt(0, &mut buf).unwrap();
        assert_eq!(
            &buf[..16],
            &[
                0x27, 0xa7, 0x47, 0x9b, 0xef, 0xa1, 0xd4, 0x76, 0x48, 0x9f, 0x30, 0x8c, 0xd4, 0xcf,
                0xa6, 0xe2
            ]
        );
        cipher.decrypt(0, &mut buf).unwrap();
        assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn every_mode_round_trips() {
        for (mode, key) in [
            ("cbc-essiv:sha256", 32),
            ("cbc-plain64", 16),
            ("cbc-plain", 24),
            ("ecb", 32),
            ("xts-plain", 64),
        ] {
            let spec = CipherSpec::from_luks("aes", mode, key).unwrap();
            let cipher = SectorCipher::new(spec, &vec![7u8; key as usize]).unwrap();
            let plain: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
            let mut buf = plain.clone();
            cipher.encrypt(9, &mut buf).unwrap();
            assert_ne!(buf, plain);
            cipher.decrypt(9, &mut buf).unwrap();
            assert_eq!(buf, plain, "{mode}");
        }
        let spec = CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap();
        let cipher = SectorCipher::new(spec, &[1u8; 64]).unwrap();
        assert!(cipher.decrypt(0, &mut [0u8; 100]).is_err());
        assert!(cipher.decrypt(0, &mut [0u8; 96]).is_ok());
    }
}
