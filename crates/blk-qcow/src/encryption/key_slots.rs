//! Unlocking (PBKDF2 of the password per active key slot, the slot's key material decrypted and merged, the
//! candidate checked against the master key digest) and making new LUKS headers (random master key, QEMU's
//! layout, PBKDF2 iterations calibrated to an iteration time as QEMU's `qcrypto_pbkdf2_count_iters` does).

use std::io::Read;
use std::time::Instant;

use blk_core::{Error, ErrorKind, Result};
use zeroize::Zeroizing;

use crate::encryption::algorithms::{CipherSpec, HashAlg};
use crate::encryption::anti_forensic;
use crate::encryption::luks_header::{
    KeySlot, LuksHeader, DIGEST_LEN, MAX_ITERATIONS, SALT_LEN, SLOTS, STRIPES,
};
use crate::encryption::sector_cipher::{SectorCipher, SECTOR_SIZE};

/// QEMU's floor on the master key digest iterations.
pub const MIN_MASTER_KEY_ITERATIONS: u64 = 1000;
/// QEMU's floor on a key slot's iterations.
pub const MIN_SLOT_ITERATIONS: u64 = 1000;
/// Where the first key slot's material starts (QEMU: 4096 bytes after the header's start).
const KEY_SLOT_OFFSET: u64 = 4096;

/// QEMU's message when no slot opens with the password.
pub const WRONG_PASSWORD: &str = "Invalid password, cannot unlock any keyslot";

/// The master key of `header` that `password` unlocks; `read` reads key material at a byte offset from the
/// header's start. The slots are tried in order; none opening is [`WRONG_PASSWORD`] (`PermissionDenied`).
pub fn unlock(
    header: &LuksHeader,
    password: &[u8],
    mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Zeroizing<Vec<u8>>> {
    for slot in 0..header.slots.len() {
        if let Some(key) = unlock_slot(header, slot, password, &mut read)? {
            return Ok(key);
        }
    }
    Err(Error::new(ErrorKind::PermissionDenied, WRONG_PASSWORD))
}

/// The master key that `password` unlocks from key slot `slot` of `header` (`None`: the slot is inactive or
/// the password does not open it); `read` as for [`unlock`].
pub fn unlock_slot(
    header: &LuksHeader,
    slot: usize,
    password: &[u8],
    mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(slot) = header.slots.get(slot).filter(|s| s.active) else {
        return Ok(None);
    };
    let key_len = header.key_bytes as usize;
    let mut material = Zeroizing::new(vec![0u8; header.material_len()]);
    let mut slot_key = Zeroizing::new(vec![0u8; key_len]);
    header
        .hash
        .pbkdf2(password, &slot.salt, slot.iterations, &mut slot_key);
    read(
        u64::from(slot.key_offset_sectors) * SECTOR_SIZE as u64,
        &mut material,
    )?;
    SectorCipher::new(header.cipher, &slot_key)?.decrypt(0, &mut material)?;
    let candidate = anti_forensic::merge(header.hash, &material, key_len);
    Ok(digest_matches(header, &candidate).then_some(candidate))
}

fn master_key_digest(header: &LuksHeader, key: &[u8]) -> [u8; DIGEST_LEN] {
    let mut digest = [0u8; DIGEST_LEN];
    header.hash.pbkdf2(
        key,
        &header.mk_digest_salt,
        header.mk_digest_iterations,
        &mut digest,
    );
    digest
}

fn digest_matches(header: &LuksHeader, key: &[u8]) -> bool {
    let digest = master_key_digest(header, key);
    // Compared without an early exit.
    digest
        .iter()
        .zip(&header.mk_digest)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// `len` random bytes from the kernel.
pub fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| {
            Error::new(ErrorKind::Io, "cannot read random bytes from /dev/urandom").with_source(e)
        })?;
    Ok(out)
}

/// PBKDF2 iterations with `hash` per second on this machine (QEMU's `qcrypto_pbkdf2_count_iters`: runs
/// growing until one takes long enough to time).
pub fn iterations_per_second(hash: HashAlg, key_len: usize) -> u64 {
    let mut iterations: u32 = 1 << 12;
    let mut out = vec![0u8; key_len];
    loop {
        let start = Instant::now();
        hash.pbkdf2(b"calibration", &[0u8; SALT_LEN], iterations, &mut out);
        let ms = start.elapsed().as_millis() as u64;
        if ms >= 100 || iterations >= 1 << 28 {
            return u64::from(iterations) * 1000 / ms.max(1);
        }
        iterations = iterations.saturating_mul(2);
    }
}

/// The sectors of one slot's key material in QEMU's layout (`key_bytes * 4000` rounded up to 4 KiB).
fn slot_sectors(key_bytes: usize) -> u64 {
    (key_bytes as u64 * u64::from(STRIPES)).div_ceil(KEY_SLOT_OFFSET) * KEY_SLOT_OFFSET / 512
}

/// The bytes of a LUKS header area QEMU lays out for keys of `key_bytes` (the header, 8 slots of key
/// material): the payload offset, and the length the crypto header extension records.
pub fn header_area_len(key_bytes: usize) -> u64 {
    KEY_SLOT_OFFSET + SLOTS as u64 * slot_sectors(key_bytes) * 512
}

/// A new LUKS header for `cipher` and `hash` whose slot 0 opens with `password`, PBKDF2 calibrated to
/// `iter_time_ms` (as QEMU: the slot gets that time's iterations, the master key digest an eighth, each at
/// least 1000; blk also keeps them at most [`MAX_ITERATIONS`], so it opens what it makes): the header area's
/// bytes (the header, then 8 slots of key material in QEMU's layout; slot 0 written, the others zero).
pub fn new_header(
    cipher: CipherSpec,
    hash: HashAlg,
    password: &[u8],
    iter_time_ms: u64,
) -> Result<Zeroizing<Vec<u8>>> {
    let key_len = cipher.key_bytes();
    let master = random_bytes(key_len)?;
    let per_second = iterations_per_second(hash, key_len);
    let slot_iterations = (per_second.saturating_mul(iter_time_ms) / 1000)
        .clamp(MIN_SLOT_ITERATIONS, u64::from(MAX_ITERATIONS)) as u32;
    let mk_iterations = (per_second.saturating_mul(iter_time_ms) / 1000 / 8)
        .clamp(MIN_MASTER_KEY_ITERATIONS, u64::from(MAX_ITERATIONS)) as u32;
    let material_len = key_len * STRIPES as usize;
    let slot_sectors = slot_sectors(key_len);
    let first = KEY_SLOT_OFFSET / 512;
    let salts = random_bytes(SALT_LEN * (SLOTS + 1))?;
    let mut slots = [KeySlot {
        active: false,
        iterations: 0,
        salt: [0; SALT_LEN],
        key_offset_sectors: 0,
        stripes: STRIPES,
    }; SLOTS];
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.key_offset_sectors = (first + i as u64 * slot_sectors) as u32;
    }
    slots[0].active = true;
    slots[0].iterations = slot_iterations;
    slots[0].salt.copy_from_slice(&salts[..SALT_LEN]);
    let mut mk_digest_salt = [0u8; SALT_LEN];
    mk_digest_salt.copy_from_slice(&salts[SALT_LEN..2 * SALT_LEN]);
    let uuid_bytes = random_bytes(16)?;
    let mut u = [0u8; 16];
    u.copy_from_slice(&uuid_bytes);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    let payload_sectors = first + SLOTS as u64 * slot_sectors;
    let mut header = LuksHeader {
        cipher,
        hash,
        payload_offset_sectors: payload_sectors as u32,
        key_bytes: key_len as u32,
        mk_digest: [0; DIGEST_LEN],
        mk_digest_salt,
        mk_digest_iterations: mk_iterations,
        uuid,
        slots,
    };
    header.mk_digest = master_key_digest(&header, &master);
    // Slot 0's key material: the master key split, encrypted with the password's key.
    let random = random_bytes(key_len * (STRIPES as usize - 1))?;
    let mut material = anti_forensic::split(hash, &master, &random, STRIPES as usize);
    let mut slot_key = Zeroizing::new(vec![0u8; key_len]);
    hash.pbkdf2(
        password,
        &header.slots[0].salt,
        slot_iterations,
        &mut slot_key,
    );
    SectorCipher::new(cipher, &slot_key)?.encrypt(0, &mut material)?;
    let mut area = Zeroizing::new(vec![0u8; payload_sectors as usize * 512]);
    area[..super::luks_header::HEADER_SIZE].copy_from_slice(&header.serialize());
    let at = (first * 512) as usize;
    area[at..at + material_len].copy_from_slice(&material);
    Ok(area)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::luks_header::HEADER_SIZE;

    #[test]
    fn a_new_header_unlocks_with_its_password_only() {
        let cipher = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 16).unwrap();
        let area = new_header(cipher, HashAlg::Sha1, b"pw", 1).unwrap();
        assert_eq!(area.len() as u64, header_area_len(16));
        let header = LuksHeader::parse(&area[..HEADER_SIZE], area.len() as u64).unwrap();
        assert_eq!(header.serialize()[..], area[..HEADER_SIZE]);
        assert!(header.slots[0].active && !header.slots[1].active);
        let read = |at: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&area[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        assert_eq!(unlock(&header, b"pw", read).unwrap().len(), 16);
        let e = unlock(&header, b"pW", read).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(e.message(), WRONG_PASSWORD);
    }
}
