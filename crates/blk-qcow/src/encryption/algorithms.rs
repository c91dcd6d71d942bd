//! The algorithms a LUKS1 header names, by LUKS's spelling (`aes`, `xts-plain64`, `cbc-essiv:sha256`,
//! `sha256`) and by QEMU's (`aes-256`, `xts`, `essiv`, `sha256`): the block cipher and its key length, the
//! cipher mode, the IV generator and the hash. What QEMU's LUKS driver writes with a 128-bit block cipher is
//! understood: AES, Twofish or Serpent with 128, 192 or 256-bit keys, in XTS, CBC or ECB mode; IVs `plain`,
//! `plain64`, `essiv:HASH`; hashes SHA-1 and SHA-2. (QEMU's 64-bit-block CAST5 and its SM4, which this QEMU
//! build refuses, are not.)

use blk_core::{Error, ErrorKind, Result};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

/// A hash (LUKS's `hash_spec`, QEMU's `hash-alg`; also the ESSIV hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (20-byte digests).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256 (QEMU's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The hash named `name` (QEMU's and LUKS's spelling are the same).
    pub fn by_name(name: &str) -> Option<HashAlg> {
        Some(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            _ => return None,
        })
    }

    /// The name, as both LUKS and QEMU spell it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts` (zeroed when dropped: it may be key material).
    pub fn digest(self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            Zeroizing::new(d.finalize().to_vec())
        }
        match self {
            HashAlg::Sha1 => run::<Sha1>(parts),
            HashAlg::Sha224 => run::<Sha224>(parts),
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash: `out.len()` bytes from `password`, `salt` and `iterations` rounds.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        crate::encryption::key_derivation::pbkdf2(self, password, salt, iterations, out);
    }
}

/// A cipher mode (the part of LUKS's `cipher_mode` before the `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherMode {
    /// XTS (two keys; QEMU's default).
    Xts,
    /// CBC.
    Cbc,
    /// ECB (no IV).
    Ecb,
}

impl CipherMode {
    /// The mode named `name`.
    pub fn by_name(name: &str) -> Option<CipherMode> {
        Some(match name {
            "xts" => CipherMode::Xts,
            "cbc" => CipherMode::Cbc,
            "ecb" => CipherMode::Ecb,
            _ => return None,
        })
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Xts => "xts",
            CipherMode::Cbc => "cbc",
            CipherMode::Ecb => "ecb",
        }
    }
}

/// An IV generator (the part of LUKS's `cipher_mode` after the `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGen {
    /// The low 32 bits of the sector number, little-endian.
    Plain,
    /// The 64-bit sector number, little-endian (QEMU's default).
    Plain64,
    /// The sector number encrypted with AES keyed by the hash of the key.
    Essiv(HashAlg),
}

impl IvGen {
    /// QEMU's name of the generator (`plain`, `plain64`, `essiv`).
    pub fn name(self) -> &'static str {
        match self {
            IvGen::Plain => "plain",
            IvGen::Plain64 => "plain64",
            IvGen::Essiv(_) => "essiv",
        }
    }
}

/// A block cipher with 128-bit blocks (LUKS's `cipher_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCipher {
    /// AES (QEMU's default).
    Aes,
    /// Twofish.
    Twofish,
    /// Serpent.
    Serpent,
}

impl BlockCipher {
    /// The cipher named `name` (LUKS's spelling: `aes`, `twofish`, `serpent`).
    pub fn by_name(name: &str) -> Option<BlockCipher> {
        Some(match name {
            "aes" => BlockCipher::Aes,
            "twofish" => BlockCipher::Twofish,
            "serpent" => BlockCipher::Serpent,
            _ => return None,
        })
    }

    /// The name, as LUKS spells it (QEMU adds the key length: `aes-256`).
    pub fn name(self) -> &'static str {
        match self {
            BlockCipher::Aes => "aes",
            BlockCipher::Twofish => "twofish",
            BlockCipher::Serpent => "serpent",
        }
    }

    /// The cipher and key length QEMU's `encrypt.cipher-alg` names (`aes-256`, `twofish-128`).
    pub fn by_qemu_name(name: &str) -> Option<(BlockCipher, u32)> {
        let (cipher, bits) = name.rsplit_once('-')?;
        let bits = match bits {
            "128" => 128,
            "192" => 192,
            "256" => 256,
            _ => return None,
        };
        Some((BlockCipher::by_name(cipher)?, bits))
    }
}

/// The cipher of a LUKS header: a block cipher with `key_bits`, a mode and an IV generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher (the ESSIV cipher is the same one).
    pub cipher: BlockCipher,
    /// 128, 192 or 256: the cipher's key length (XTS takes two such keys).
    pub key_bits: u32,
    /// The mode.
    pub mode: CipherMode,
    /// The IV generator (`None` for ECB).
    pub ivgen: Option<IvGen>,
}

fn unsupported(message: String) -> Error {
    Error::new(ErrorKind::UnsupportedFeature, message)
}

impl CipherSpec {
    /// The cipher a LUKS header names: `cipher_name` (`aes`), `cipher_mode` (`xts-plain64`,
    /// `cbc-essiv:sha256`, `ecb`) and its master key length in bytes.
    pub fn from_luks(cipher_name: &str, cipher_mode: &str, key_bytes: u32) -> Result<CipherSpec> {
        let cipher = BlockCipher::by_name(cipher_name)
            .ok_or_else(|| unsupported(format!("Cipher name '{cipher_name}' is not supported")))?;
        let (mode_name, ivgen_name) = match cipher_mode.split_once('-') {
            Some((m, iv)) => (m, Some(iv)),
            None => (cipher_mode, None),
        };
        let mode = CipherMode::by_name(mode_name)
            .ok_or_else(|| unsupported(format!("Cipher mode '{mode_name}' is not supported")))?;
        let ivgen = match ivgen_name {
            None if mode == CipherMode::Ecb => None,
            None => {
                return Err(unsupported(format!(
                    "Missing IV generator in '{cipher_mode}'"
                )))
            }
            Some("plain") => Some(IvGen::Plain),
            Some("plain64") => Some(IvGen::Plain64),
            Some(other) => match other.strip_prefix("essiv:") {
                Some(hash) => Some(IvGen::Essiv(HashAlg::by_name(hash).ok_or_else(|| {
                    unsupported(format!("Hash algorithm '{hash}' is not supported"))
                })?)),
                None => {
                    return Err(unsupported(format!(
                        "IV generator '{other}' is not supported"
                    )))
                }
            },
        };
        let aes_bytes = if mode == CipherMode::Xts {
            key_bytes / 2
        } else {
            key_bytes
        };
        let key_bits = match (aes_bytes, mode == CipherMode::Xts && key_bytes % 2 != 0) {
            (16, false) => 128,
            (24, false) => 192,
            (32, false) => 256,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidFormat,
                    format!(
                        "Cipher key length {key_bytes} does not suit {cipher_name}-{mode_name}"
                    ),
                ))
            }
        };
        let spec = CipherSpec {
            cipher,
            key_bits,
            mode,
            ivgen,
        };
        spec.essiv_key_bits()?;
        Ok(spec)
    }

    /// The master key length in bytes (twice the AES key for XTS).
    pub fn key_bytes(&self) -> usize {
        let one = self.key_bits as usize / 8;
        if self.mode == CipherMode::Xts {
            2 * one
        } else {
            one
        }
    }

    /// QEMU's name of the cipher (`aes-256`).
    pub fn cipher_alg_name(&self) -> String {
        format!("{}-{}", self.cipher.name(), self.key_bits)
    }

    /// LUKS's `cipher_mode` string (`xts-plain64`, `cbc-essiv:sha256`).
    pub fn luks_mode_name(&self) -> String {
        match self.ivgen {
            None => self.mode.name().to_string(),
            Some(IvGen::Essiv(h)) => format!("{}-essiv:{}", self.mode.name(), h.name()),
            Some(iv) => format!("{}-{}", self.mode.name(), iv.name()),
        }
    }

    /// The key length of the ESSIV cipher (the same block cipher): the ESSIV hash's digest length (QEMU picks
    /// the variant whose key is as long as the digest).
    pub fn essiv_key_bits(&self) -> Result<Option<u32>> {
        match self.ivgen {
            Some(IvGen::Essiv(h)) => match h.digest_len() {
                16 => Ok(Some(128)),
                24 => Ok(Some(192)),
                32 => Ok(Some(256)),
                n => Err(unsupported(format!(
                    "Cipher key length {n} of the essiv hash '{}' does not suit {}",
                    h.name(),
                    self.cipher.name()
                ))),
            },
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luks_names_round_trip() {
        let spec = CipherSpec::from_luks("aes", "xts-plain64", 64).unwrap();
        assert_eq!(spec.key_bits, 256);
        assert_eq!(spec.luks_mode_name(), "xts-plain64");
        let spec = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 16).unwrap();
        assert_eq!(spec.ivgen, Some(IvGen::Essiv(HashAlg::Sha256)));
        assert_eq!(spec.luks_mode_name(), "cbc-essiv:sha256");
        assert!(CipherSpec::from_luks("aes", "cbc-essiv:sha1", 16).is_err());
        let spec = CipherSpec::from_luks("serpent", "xts-plain64", 64).unwrap();
        assert_eq!(spec.cipher_alg_name(), "serpent-256");
        assert!(CipherSpec::from_luks("cast5", "cbc-plain64", 16).is_err());
        assert_eq!(
            BlockCipher::by_qemu_name("twofish-128"),
            Some((BlockCipher::Twofish, 128))
        );
        assert!(CipherSpec::from_luks("aes", "xts-plain64", 63).is_err());
        assert!(CipherSpec::from_luks("aes", "xts-plain64", u32::MAX).is_err());
        assert!(CipherSpec::from_luks("aes", "cbc", 32).is_err());
    }
}
