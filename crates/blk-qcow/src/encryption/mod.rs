//! LUKS1 encryption of guest data, as QEMU's qcow2 driver does it (`crypt_method` 2): a LUKS1 header inside
//! the image (header extension `0x0537be77`: its offset and length, in refcounted clusters), the master key
//! unlocked with the secret, and every guest data cluster encrypted per 512-byte sector with the IV of its
//! *host* sector (the data's offset in the image file / 512, QEMU's `crypt_physical_offset`). Compressed
//! clusters and zero clusters are not encrypted (as QEMU).
//!
//! | module | what it holds |
//! |---|---|
//! | `luks_header` | the LUKS1 header: parsing with caps, serializing |
//! | `algorithms` | cipher, mode, IV generator and hash names |
//! | `anti_forensic` | LUKS's anti-forensic split and merge of keys |
//! | `create_options` | the `encrypt.*` create options |
//! | `key_derivation` | PBKDF2-HMAC over the hashes' compression functions |
//! | `key_slots` | unlocking with a password; new headers with calibrated PBKDF2 |
//! | `key_slot_amend` | `qemu-img amend` of key slots: adding and erasing passwords |
//! | `sector_cipher` | the unlocked cipher over 512-byte sectors |
//!
//! Caps, checked before any work: PBKDF2 iterations at most [`luks_header::MAX_ITERATIONS`], the header area
//! at most [`luks_header::MAX_HEADER_LEN`], AES keys of 128/192/256 bits, 4000 stripes, key material inside
//! the header area.

pub(crate) mod algorithms;
pub(crate) mod anti_forensic;
pub(crate) mod create_options;
pub(crate) mod key_derivation;
pub(crate) mod key_slot_amend;
pub(crate) mod key_slots;
pub(crate) mod luks_header;
pub(crate) mod sector_cipher;

use blk_core::{Error, ErrorKind, HostFile, InfoValue, Result, Secret};

use crate::image::extensions::EXT_CRYPTO;
use crate::image::header::Header;
use crate::metadata::read_zero_filled;
use luks_header::{LuksHeader, HEADER_SIZE, MAX_HEADER_LEN};
use sector_cipher::SectorCipher;

/// `crypt_method` of LUKS encryption.
pub(crate) const CRYPT_LUKS: u32 = 2;
/// `crypt_method` of the legacy AES-CBC encryption.
pub(crate) const CRYPT_AES: u32 = 1;

/// QEMU's message when an encrypted image is opened for I/O without a secret.
pub(crate) const SECRET_REQUIRED: &str = "Parameter 'encrypt.key-secret' is required for cipher";

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidFormat, message)
}

/// The offset and length of the LUKS header area the crypto header extension records (`None`: no
/// extension), checked as QEMU checks it: 16 bytes, the offset cluster-aligned.
pub(crate) fn crypto_header_location(header: &Header) -> Result<Option<(u64, u64)>> {
    let Some((_, data)) = header
        .extensions
        .other
        .iter()
        .find(|(k, _)| *k == EXT_CRYPTO)
    else {
        return Ok(None);
    };
    if data.len() != 16 {
        return Err(invalid(format!(
            "CRYPTO header extension size {}, but expected size 16",
            data.len()
        )));
    }
    let be = |b: &[u8]| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let (offset, length) = (be(&data[..8]), be(&data[8..]));
    let cluster = 1u64 << header.cluster_bits;
    if offset % cluster != 0 {
        return Err(invalid(format!(
            "Encryption header offset '{offset}' is not a multiple of cluster size '{cluster}'"
        )));
    }
    Ok(Some((offset, length)))
}

/// An encrypted image's LUKS header and, once unlocked, its cipher.
pub(crate) struct Encryption {
    /// Where the LUKS header area lies in the image file.
    pub(crate) offset: u64,
    /// Its length.
    pub(crate) length: u64,
    /// The parsed header.
    pub(crate) luks: LuksHeader,
    /// The master key's cipher (`None`: opened without a secret, read-only; guest data I/O is refused).
    cipher: Option<SectorCipher>,
    /// The master key itself (`None` without a secret), for new key slots.
    master_key: Option<zeroize::Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("offset", &self.offset)
            .field("length", &self.length)
            .field("unlocked", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl Encryption {
    /// Reads the LUKS header of an image whose header says `crypt_method` 2 and unlocks it with `secret`.
    /// Without a secret, an `info_only` open gets a locked image (its `info`, no guest data); any other is
    /// refused with QEMU's message.
    pub(crate) fn open(
        file: &HostFile,
        file_len: u64,
        header: &Header,
        secret: Option<&Secret>,
        info_only: bool,
    ) -> Result<Encryption> {
        let (offset, length) = crypto_header_location(header)?
            .ok_or_else(|| invalid("Missing CRYPTO header for crypt method 2"))?;
        if length < HEADER_SIZE as u64 || length > MAX_HEADER_LEN {
            return Err(invalid(format!(
                "encryption header length {length} is outside {HEADER_SIZE}..={MAX_HEADER_LEN} (blk's cap)"
            )));
        }
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(invalid(format!(
                "encryption header at {offset:#x} ({length} bytes) lies past the end of the file"
            )));
        }
        let head = read_zero_filled(file, offset, HEADER_SIZE)?;
        let luks = LuksHeader::parse(&head, length)?;
        let mut master_key = None;
        let cipher = match secret {
            Some(secret) => {
                let key = key_slots::unlock(&luks, secret.bytes(), |at, buf| {
                    let got = file
                        .read_vectored_at(offset + at, &[blk_core::IoBufMut::from(&mut buf[..])])?;
                    buf[got..].fill(0);
                    Ok(())
                })?;
                let cipher = SectorCipher::new(luks.cipher, &key)?;
                master_key = Some(key);
                Some(cipher)
            }
            None if info_only => None,
            None => return Err(Error::new(ErrorKind::InvalidInput, SECRET_REQUIRED)),
        };
        Ok(Encryption {
            offset,
            length,
            luks,
            cipher,
            master_key,
        })
    }

    /// The unlocked master key, or QEMU's message for an image opened without a secret.
    pub(crate) fn master_key(&self) -> Result<&[u8]> {
        self.master_key
            .as_deref()
            .map(|k| &k[..])
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, SECRET_REQUIRED))
    }

    /// The unlocked cipher, or QEMU's message for an image opened without a secret.
    pub(crate) fn cipher(&self) -> Result<&SectorCipher> {
        self.cipher
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, SECRET_REQUIRED))
    }

    /// Decrypts `buf` (whole sectors) that was read at host offset `host`.
    pub(crate) fn decrypt(&self, host: u64, buf: &mut [u8]) -> Result<()> {
        self.cipher()?.decrypt(host / 512, buf)
    }

    /// Encrypts `buf` (whole sectors) to be written at host offset `host`.
    pub(crate) fn encrypt(&self, host: u64, buf: &mut [u8]) -> Result<()> {
        self.cipher()?.encrypt(host / 512, buf)
    }

    /// qemu-img info's `encrypt` object (QEMU's `QCryptoBlockInfoLUKS`), in its order.
    pub(crate) fn info(&self) -> InfoValue {
        let l = &self.luks;
        let slots = l
            .slots
            .iter()
            .map(|s| {
                let mut fields = vec![("active".to_string(), InfoValue::Bool(s.active))];
                if s.active {
                    fields.push(("iters".to_string(), InfoValue::U64(u64::from(s.iterations))));
                }
                fields.push((
                    "key-offset".to_string(),
                    InfoValue::U64(u64::from(s.key_offset_sectors) * 512),
                ));
                if s.active {
                    fields.push(("stripes".to_string(), InfoValue::U64(u64::from(s.stripes))));
                }
                InfoValue::Map(fields)
            })
            .collect();
        let mut fields = vec![(
            "ivgen-alg".to_string(),
            InfoValue::String(l.cipher.ivgen.map_or("plain64", |i| i.name()).to_string()),
        )];
        if let Some(algorithms::IvGen::Essiv(h)) = l.cipher.ivgen {
            fields.push((
                "ivgen-hash-alg".to_string(),
                InfoValue::String(h.name().to_string()),
            ));
        }
        fields.extend([
            ("detached-header".to_string(), InfoValue::Bool(false)),
            (
                "hash-alg".to_string(),
                InfoValue::String(l.hash.name().to_string()),
            ),
            (
                "cipher-alg".to_string(),
                InfoValue::String(l.cipher.cipher_alg_name()),
            ),
            ("uuid".to_string(), InfoValue::String(l.uuid.clone())),
            ("format".to_string(), InfoValue::String("luks".to_string())),
            (
                "cipher-mode".to_string(),
                InfoValue::String(l.cipher.mode.name().to_string()),
            ),
            ("slots".to_string(), InfoValue::List(slots)),
            (
                "payload-offset".to_string(),
                InfoValue::U64(u64::from(l.payload_offset_sectors) * 512),
            ),
            (
                "master-key-iters".to_string(),
                InfoValue::U64(u64::from(l.mk_digest_iterations)),
            ),
        ]);
        InfoValue::Map(fields)
    }
}

/// The encryption of the image `header` describes, unlocked with `options`' secret (`None`: not encrypted).
/// Encrypted images with an external data file are refused.
pub(crate) fn open_for(
    file: &HostFile,
    file_len: u64,
    header: &Header,
    options: &crate::image::options::Qcow2OpenOptions,
    read_only: bool,
) -> Result<Option<Box<Encryption>>> {
    if header.crypt_method != CRYPT_LUKS {
        return Ok(None);
    }
    if header.incompatible & crate::image::features::INCOMPAT_DATA_FILE != 0 {
        return Err(Error::new(
            ErrorKind::UnsupportedFeature,
            "encrypted qcow2 images with an external data file are not supported",
        ));
    }
    // Without a secret only `info`'s kind of open (read-only, without the backing file: QEMU's
    // `BDRV_O_NO_IO`) gets the image, locked.
    let info_only = read_only && options.opener.skips_backing();
    // Boxed: the AES key schedules are large, and opens recurse down backing chains.
    Encryption::open(
        file,
        file_len,
        header,
        options.key_secret.as_ref(),
        info_only,
    )
    .map(|e| Some(Box::new(e)))
}

/// Parses and checks a LUKS1 header area (`bytes`, read as zeros past their end up to `area_len`: the header
/// and its key slots' material, as an encrypted image's crypto header extension points to it) and tries to
/// unlock it with `password`, every PBKDF2 run bounded to `max_iterations` rounds (a harness's bound: opening
/// an image uses the header's own counts, capped at 2^25). Returns whether a key slot opened.
///
/// ```
/// // Not a LUKS header.
/// assert!(blk_qcow::try_unlock_luks_area(&[0u8; 600], 1 << 20, b"pw", 16).is_err());
/// ```
pub fn try_unlock_luks_area(
    bytes: &[u8],
    area_len: u64,
    password: &[u8],
    max_iterations: u32,
) -> Result<bool> {
    if area_len > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "encryption header length {area_len} is above {MAX_HEADER_LEN} (blk's cap)"
        )));
    }
    let mut luks = LuksHeader::parse(bytes, area_len)?;
    let bound = max_iterations.max(1);
    luks.mk_digest_iterations = luks.mk_digest_iterations.min(bound);
    for slot in luks.slots.iter_mut() {
        slot.iterations = slot.iterations.min(bound);
    }
    let read = |at: u64, buf: &mut [u8]| {
        buf.fill(0);
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
        let part = &bytes[start..];
        let n = part.len().min(buf.len());
        buf[..n].copy_from_slice(&part[..n]);
        Ok(())
    };
    match key_slots::unlock(&luks, password, read) {
        Ok(key) => SectorCipher::new(luks.cipher, &key).map(|_| true),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}
