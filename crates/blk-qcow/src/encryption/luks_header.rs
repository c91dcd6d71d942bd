//! The LUKS1 header (592 bytes, big-endian), as QEMU's `crypto/block-luks.c` lays it out inside a QCOW2 file
//! (the "full disk encryption header" extension points to it): magic, version 1, cipher name and mode, hash,
//! payload offset, master key length and digest, UUID, and 8 key slots, each with its PBKDF2 iterations, salt,
//! key material offset (in 512-byte sectors from the header's start) and anti-forensic stripes.
//!
//! Parsing checks everything the unlock will rely on before any work, against caps: the version, the
//! algorithms (see `algorithms`), the key length, stripes (4000, as QEMU requires), PBKDF2 iterations at most
//! [`MAX_ITERATIONS`], key material inside the header area ([`MAX_HEADER_LEN`] at most) and slots not
//! overlapping each other or the header.

use blk_core::{Error, ErrorKind, Result};

use crate::encryption::algorithms::{CipherSpec, HashAlg};
use crate::encryption::sector_cipher::SECTOR_SIZE;

/// `LUKS\xba\xbe`.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// The size of the header proper.
pub const HEADER_SIZE: usize = 592;
/// Key slots in a LUKS1 header.
pub const SLOTS: usize = 8;
/// The anti-forensic stripes QEMU writes and requires.
pub const STRIPES: u32 = 4000;
/// A key slot in use.
pub const SLOT_ACTIVE: u32 = 0x00ac_71f3;
/// A key slot not in use.
pub const SLOT_INACTIVE: u32 = 0x0000_dead;
/// Salt and master key digest lengths.
pub const SALT_LEN: usize = 32;
/// Length of the master key digest.
pub const DIGEST_LEN: usize = 20;
/// Cap on PBKDF2 iterations of a key slot or the master key digest: 2^25 (QEMU's default `iter-time` of 2 s
/// gives a few million on current machines; the cap keeps one unlock attempt of a hostile header to about ten
/// seconds).
pub const MAX_ITERATIONS: u32 = 1 << 25;
/// Cap on the LUKS header area inside the image (QEMU's default layout needs about 2 MiB).
pub const MAX_HEADER_LEN: u64 = 16 << 20;

/// One key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlot {
    /// Whether the slot holds a key.
    pub active: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Key material offset in 512-byte sectors from the start of the header.
    pub key_offset_sectors: u32,
    /// Anti-forensic stripes.
    pub stripes: u32,
}

/// A parsed LUKS1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// The cipher.
    pub cipher: CipherSpec,
    /// The hash of PBKDF2 and the anti-forensic split.
    pub hash: HashAlg,
    /// Payload offset in 512-byte sectors (not used inside QCOW2: data lives in clusters).
    pub payload_offset_sectors: u32,
    /// The master key length in bytes.
    pub key_bytes: u32,
    /// PBKDF2 of the master key.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Its salt.
    pub mk_digest_salt: [u8; SALT_LEN],
    /// Its iterations.
    pub mk_digest_iterations: u32,
    /// The UUID, as text.
    pub uuid: String,
    /// The key slots.
    pub slots: [KeySlot; SLOTS],
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidFormat, message)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-terminated string field.
fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn put_text(out: &mut [u8], value: &str) {
    let n = value.len().min(out.len() - 1);
    out[..n].copy_from_slice(&value.as_bytes()[..n]);
}

impl LuksHeader {
    /// Parses and checks the header at the start of `bytes`, for a header area of `area_len` bytes.
    pub fn parse(bytes: &[u8], area_len: u64) -> Result<LuksHeader> {
        let b = bytes
            .get(..HEADER_SIZE)
            .ok_or_else(|| invalid("LUKS header is truncated"))?;
        if b[..6] != MAGIC {
            return Err(invalid(
                "Volume is not in LUKS format (bad magic in the encryption header)",
            ));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::new(
                ErrorKind::UnsupportedFeature,
                format!("LUKS version {version} is not supported"),
            ));
        }
        let cipher_name = text(&b[8..40]);
        let cipher_mode = text(&b[40..72]);
        let hash_name = text(&b[72..104]);
        let payload_offset_sectors = be32(b, 104);
        let key_bytes = be32(b, 108);
        let hash = HashAlg::by_name(&hash_name).ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedFeature,
                format!("Hash algorithm '{hash_name}' is not supported"),
            )
        })?;
        let cipher = CipherSpec::from_luks(&cipher_name, &cipher_mode, key_bytes)?;
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(&b[112..132]);
        let mut mk_digest_salt = [0u8; SALT_LEN];
        mk_digest_salt.copy_from_slice(&b[132..164]);
        let mk_digest_iterations = be32(b, 164);
        check_iterations(mk_digest_iterations, "the master key digest")?;
        let uuid = text(&b[168..208]);
        let mut slots = [KeySlot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_offset_sectors: 0,
            stripes: 0,
        }; SLOTS];
        let material = u64::from(key_bytes) * u64::from(STRIPES);
        for (i, slot) in slots.iter_mut().enumerate() {
            let s = &b[208 + i * 48..208 + (i + 1) * 48];
            let state = be32(s, 0);
            slot.active = match state {
                SLOT_ACTIVE => true,
                SLOT_INACTIVE => false,
                _ => {
                    return Err(invalid(format!(
                        "Keyslot {i} state (active/disable) is corrupted"
                    )))
                }
            };
            slot.iterations = be32(s, 4);
            slot.salt.copy_from_slice(&s[8..40]);
            slot.key_offset_sectors = be32(s, 40);
            slot.stripes = be32(s, 44);
            if slot.stripes != STRIPES {
                return Err(invalid(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    slot.stripes
                )));
            }
            if slot.active {
                check_iterations(slot.iterations, &format!("keyslot {i}"))?;
            }
            let start = u64::from(slot.key_offset_sectors) * SECTOR_SIZE as u64;
            if start < HEADER_SIZE as u64 {
                return Err(invalid(format!(
                    "Keyslot {i} is overlapping with the LUKS header"
                )));
            }
            if start + material > area_len {
                return Err(invalid(format!(
                    "Keyslot {i} key material lies outside the encryption header area ({area_len} bytes)"
                )));
            }
        }
        for i in 0..SLOTS {
            for j in i + 1..SLOTS {
                let (a, b) = (
                    u64::from(slots[i].key_offset_sectors) * SECTOR_SIZE as u64,
                    u64::from(slots[j].key_offset_sectors) * SECTOR_SIZE as u64,
                );
                if a < b + material && b < a + material {
                    return Err(invalid(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    )));
                }
            }
        }
        Ok(LuksHeader {
            cipher,
            hash,
            payload_offset_sectors,
            key_bytes,
            mk_digest,
            mk_digest_salt,
            mk_digest_iterations,
            uuid,
            slots,
        })
    }

    /// The bytes of a slot's key material (`key_bytes * stripes`).
    pub fn material_len(&self) -> usize {
        self.key_bytes as usize * STRIPES as usize
    }

    /// The header's 592 bytes.
    pub fn serialize(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..6].copy_from_slice(&MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b[8..40], self.cipher.cipher.name());
        put_text(&mut b[40..72], &self.cipher.luks_mode_name());
        put_text(&mut b[72..104], self.hash.name());
        b[104..108].copy_from_slice(&self.payload_offset_sectors.to_be_bytes());
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_digest_salt);
        b[164..168].copy_from_slice(&self.mk_digest_iterations.to_be_bytes());
        put_text(&mut b[168..208], &self.uuid);
        for (i, slot) in self.slots.iter().enumerate() {
            let s = &mut b[208 + i * 48..208 + (i + 1) * 48];
            let state = if slot.active {
                SLOT_ACTIVE
            } else {
                SLOT_INACTIVE
            };
            s[0..4].copy_from_slice(&state.to_be_bytes());
            s[4..8].copy_from_slice(&slot.iterations.to_be_bytes());
            s[8..40].copy_from_slice(&slot.salt);
            s[40..44].copy_from_slice(&slot.key_offset_sectors.to_be_bytes());
            s[44..48].copy_from_slice(&slot.stripes.to_be_bytes());
        }
        b
    }
}

fn check_iterations(iterations: u32, what: &str) -> Result<()> {
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(Error::new(
            ErrorKind::InvalidFormat,
            format!(
                "PBKDF2 iterations {iterations} of {what} are outside 1..={MAX_ITERATIONS} (blk's cap)"
            ),
        ));
    }
    Ok(())
}
