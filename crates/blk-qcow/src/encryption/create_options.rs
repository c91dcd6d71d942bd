//! `encrypt.*` create options (qemu-img's names, defaults and messages): [`LuksCreateOptions`].

use blk_core::{Error, ErrorKind, Result, Secret};

use crate::encryption::algorithms::{BlockCipher, CipherMode, CipherSpec, HashAlg, IvGen};

/// How to encrypt a new image (`encrypt.format=luks` and the other `encrypt.*` options): the secret, the
/// cipher (default `aes-256` `xts` `plain64`), the hash (default `sha256`) and the PBKDF2 time (default
/// 2000 ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksCreateOptions {
    pub(crate) secret: Secret,
    pub(crate) cipher: CipherSpec,
    pub(crate) hash: HashAlg,
    pub(crate) iter_time_ms: u64,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsupportedFeature, message)
}

impl LuksCreateOptions {
    /// Parses the `encrypt.*` options (`encrypt.format` among them), the secret looked up by id
    /// ([`Secret::lookup`]). `None` without `encrypt.format` and `encryption`.
    pub(crate) fn parse(options: &[(&str, &str)]) -> Result<Option<LuksCreateOptions>> {
        let get = |k: &str| {
            options
                .iter()
                .rev()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| *v)
        };
        let format = match (get("encrypt.format"), get("encryption")) {
            (None, Some("on" | "true" | "yes")) | (Some("aes"), _) => {
                return Err(unsupported(
                    "AES-CBC encrypted qcow2 images (encrypt.format=aes) are not supported",
                ))
            }
            (Some("luks"), _) => "luks",
            (Some(other), _) => {
                return Err(invalid(format!(
                    "Parameter 'encrypt.format' does not accept value '{other}'"
                )))
            }
            (None, _) => {
                if options.iter().any(|(k, _)| k.starts_with("encrypt.")) {
                    return Err(invalid("Parameter 'encrypt.format' is missing"));
                }
                return Ok(None);
            }
        };
        debug_assert_eq!(format, "luks");
        let id = get("encrypt.key-secret")
            .ok_or_else(|| invalid("Parameter 'encrypt.key-secret' is required for cipher"))?;
        let secret =
            Secret::lookup(id).ok_or_else(|| invalid(format!("No secret with id '{id}'")))?;
        let cipher_alg = get("encrypt.cipher-alg").unwrap_or("aes-256");
        let (block_cipher, key_bits) = BlockCipher::by_qemu_name(cipher_alg).ok_or_else(|| {
            unsupported(format!(
                "Cipher algorithm '{cipher_alg}' is not supported (blk encrypts with AES, Twofish or \
                 Serpent)"
            ))
        })?;
        let mode_name = get("encrypt.cipher-mode").unwrap_or("xts");
        let mode = CipherMode::by_name(mode_name).ok_or_else(|| {
            invalid(format!(
                "Parameter 'encrypt.cipher-mode' does not accept value '{mode_name}'"
            ))
        })?;
        let hash_of = |key: &str| -> Result<HashAlg> {
            let name = get(key).unwrap_or("sha256");
            HashAlg::by_name(name)
                .ok_or_else(|| unsupported(format!("Hash algorithm '{name}' is not supported")))
        };
        let ivgen = match get("encrypt.ivgen-alg").unwrap_or("plain64") {
            _ if mode == CipherMode::Ecb => None,
            "plain" => Some(IvGen::Plain),
            "plain64" => Some(IvGen::Plain64),
            "essiv" => Some(IvGen::Essiv(hash_of("encrypt.ivgen-hash-alg")?)),
            other => {
                return Err(invalid(format!(
                    "Parameter 'encrypt.ivgen-alg' does not accept value '{other}'"
                )))
            }
        };
        let hash = hash_of("encrypt.hash-alg")?;
        let iter_time_ms = match get("encrypt.iter-time") {
            None => 2000,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid("Parameter 'encrypt.iter-time' expects a number"))?,
        };
        if iter_time_ms == 0 {
            return Err(invalid(
                "Parameter 'encrypt.iter-time' must be greater than 0",
            ));
        }
        let cipher = CipherSpec {
            cipher: block_cipher,
            key_bits,
            mode,
            ivgen,
        };
        cipher.essiv_key_bits()?;
        Ok(Some(LuksCreateOptions {
            secret,
            cipher,
            hash,
            iter_time_ms,
        }))
    }
}
