//! `qemu-img amend` of LUKS key slots (QEMU's `qcrypto_block_luks_amend_options`): `encrypt.state=active`
//! adds a password (`encrypt.new-secret`) in a free slot or the one `encrypt.keyslot` names, its PBKDF2
//! calibrated to `encrypt.iter-time`; `encrypt.state=inactive` erases the slot `encrypt.keyslot` names or the
//! slots `encrypt.old-secret` opens. QEMU's rules and messages: an active slot is not overwritten and the
//! last active slot is not erased without `--force`.
//!
//! Write order, so that a crash never leaves a header pointing at half-written key material: a new slot's
//! material is written and synced before the header marks it active (a forced overwrite of an active slot
//! first marks it inactive); an erased slot's material is overwritten with random bytes and synced before
//! the header marks it inactive (the slot is being given up either way).

use blk_core::{Error, ErrorKind, HostFile, Result, Secret};
use zeroize::Zeroizing;

use crate::encryption::anti_forensic;
use crate::encryption::key_slots::{
    iterations_per_second, random_bytes, unlock_slot, MIN_SLOT_ITERATIONS,
};
use crate::encryption::luks_header::{LuksHeader, MAX_ITERATIONS, SALT_LEN, SLOTS, STRIPES};
use crate::encryption::sector_cipher::{SectorCipher, SECTOR_SIZE};
use crate::encryption::Encryption;

/// The `-o` keys of a key slot amendment.
pub(crate) const AMEND_KEYS: &[&str] = &[
    "encrypt.state",
    "encrypt.new-secret",
    "encrypt.old-secret",
    "encrypt.keyslot",
    "encrypt.iter-time",
];

/// QEMU's default PBKDF2 time of a new key slot, in milliseconds.
const DEFAULT_ITER_TIME_MS: u64 = 2000;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// A key slot amendment, parsed (QEMU's `QCryptoBlockAmendOptionsLUKS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySlotAmendment {
    /// `encrypt.state`: `true` adds a password, `false` erases.
    active: bool,
    /// `encrypt.new-secret`: the id of the password to add.
    new_secret: Option<String>,
    /// `encrypt.old-secret`: the id of the password whose slots are erased.
    old_secret: Option<String>,
    /// `encrypt.keyslot`, as QEMU's `int` holds it.
    keyslot: Option<i32>,
    /// `encrypt.iter-time` in milliseconds.
    iter_time_ms: Option<u64>,
}

/// A number as QEMU's option parser reads it (a leading `-` wraps around), or its message.
fn number(key: &str, value: &str) -> Result<u64> {
    let parsed = match value.strip_prefix('-') {
        Some(rest) => rest.parse::<u64>().ok().map(u64::wrapping_neg),
        None => value.parse::<u64>().ok(),
    };
    parsed.ok_or_else(|| invalid(format!("Parameter '{key}' expects a number")))
}

impl KeySlotAmendment {
    /// Parses the [`AMEND_KEYS`] options among `options` (`None`: there are none), with qemu-img's messages.
    pub(crate) fn parse(options: &[(String, String)]) -> Result<Option<KeySlotAmendment>> {
        let mut state = None;
        let mut a = KeySlotAmendment {
            active: false,
            new_secret: None,
            old_secret: None,
            keyslot: None,
            iter_time_ms: None,
        };
        let mut any = false;
        for (key, value) in options {
            any |= AMEND_KEYS.contains(&key.as_str());
            match key.as_str() {
                "encrypt.state" => state = Some(value.clone()),
                "encrypt.new-secret" => a.new_secret = Some(value.clone()),
                "encrypt.old-secret" => a.old_secret = Some(value.clone()),
                // QEMU keeps the number in an `int`.
                "encrypt.keyslot" => a.keyslot = Some(number(key, value)? as i32),
                "encrypt.iter-time" => a.iter_time_ms = Some(number(key, value)?),
                _ => {}
            }
        }
        if !any {
            return Ok(None);
        }
        a.active = match state.as_deref() {
            None => return Err(invalid("Parameter 'state' is missing")),
            Some("active") => true,
            Some("inactive") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "Parameter 'state' does not accept value '{other}'"
                )))
            }
        };
        Ok(Some(a))
    }

    /// Applies the amendment to the unlocked LUKS header area `encryption` describes in `file`.
    pub(crate) fn apply(
        &self,
        file: &HostFile,
        encryption: &Encryption,
        force: bool,
    ) -> Result<()> {
        let mut slots = SlotWriter {
            file,
            offset: encryption.offset,
            header: encryption.luks.clone(),
        };
        if self.active {
            self.add(&mut slots, encryption.master_key()?, force)
        } else {
            self.erase(&mut slots, force)
        }
    }

    /// The slot `encrypt.keyslot` names, checked against the slot count.
    fn checked_slot(keyslot: i32) -> Result<usize> {
        usize::try_from(keyslot)
            .ok()
            .filter(|&s| s < SLOTS)
            .ok_or_else(|| {
                invalid(format!(
                    "Invalid keyslot {} specified, must be between 0 and {}",
                    keyslot as u32,
                    SLOTS - 1
                ))
            })
    }

    fn add(&self, slots: &mut SlotWriter<'_>, master_key: &[u8], force: bool) -> Result<()> {
        let Some(new_id) = &self.new_secret else {
            return Err(invalid("'new-secret' is required to activate a keyslot"));
        };
        if self.old_secret.is_some() {
            return Err(invalid(
                "'old-secret' must not be given when activating keyslots",
            ));
        }
        let slot = match self.keyslot {
            Some(k) => Self::checked_slot(k)?,
            None => slots
                .header
                .slots
                .iter()
                .position(|s| !s.active)
                .ok_or_else(|| invalid("Can't add a keyslot - all keyslots are in use"))?,
        };
        if !force && slots.header.slots[slot].active {
            return Err(invalid(format!(
                "Refusing to overwrite active keyslot {slot} - please erase it first"
            )));
        }
        let password = secret(new_id)?;
        let iter_time = self.iter_time_ms.unwrap_or(DEFAULT_ITER_TIME_MS);
        slots.store_key(slot, password.bytes(), master_key, iter_time)
    }

    fn erase(&self, slots: &mut SlotWriter<'_>, force: bool) -> Result<()> {
        if self.new_secret.is_some() {
            return Err(invalid(
                "'new-secret' must not be given when erasing keyslots",
            ));
        }
        if self.iter_time_ms.is_some() {
            return Err(invalid(
                "'iter-time' must not be given when erasing keyslots",
            ));
        }
        let old_password = self.old_secret.as_deref().map(secret).transpose()?;
        let active = slots.header.slots.iter().filter(|s| s.active).count();
        if let Some(k) = self.keyslot {
            let slot = Self::checked_slot(k)?;
            if let Some(password) = &old_password {
                if !slots.opens(slot, password.bytes())? {
                    return Err(invalid(format!(
                        "Given keyslot {slot} doesn't contain the given old password for erase operation"
                    )));
                }
            }
            if !force && !slots.header.slots[slot].active {
                return Err(invalid(format!(
                    "Given keyslot {slot} is already erased (inactive) "
                )));
            }
            if !force && active == 1 {
                return Err(invalid(format!(
                    "Attempt to erase the only active keyslot {slot} which will erase all the data in the image irreversibly - refusing operation"
                )));
            }
            return slots.erase_key(slot);
        }
        let Some(password) = old_password else {
            return Err(invalid(
                "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given",
            ));
        };
        let mut matching = Vec::new();
        for slot in 0..SLOTS {
            if slots.opens(slot, password.bytes())? {
                matching.push(slot);
            }
        }
        if matching.is_empty() {
            return Err(invalid(
                "No keyslots match given (old) password for erase operation",
            ));
        }
        if !force && matching.len() == active {
            return Err(invalid(
                "All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation",
            ));
        }
        matching
            .into_iter()
            .try_for_each(|slot| slots.erase_key(slot))
    }
}

/// The secret defined with the id `id`, or QEMU's message.
fn secret(id: &str) -> Result<Secret> {
    Secret::lookup(id).ok_or_else(|| invalid(format!("No secret with id '{id}'")))
}

/// The LUKS header area in the image file, with the header as last written.
struct SlotWriter<'a> {
    file: &'a HostFile,
    offset: u64,
    header: LuksHeader,
}

impl SlotWriter<'_> {
    /// Where slot `slot`'s key material starts in the file.
    fn material_at(&self, slot: usize) -> u64 {
        self.offset + u64::from(self.header.slots[slot].key_offset_sectors) * SECTOR_SIZE as u64
    }

    /// Whether `password` opens slot `slot`.
    fn opens(&self, slot: usize, password: &[u8]) -> Result<bool> {
        let read = |at: u64, buf: &mut [u8]| {
            let got = self
                .file
                .read_vectored_at(self.offset + at, &[blk_core::IoBufMut::from(&mut buf[..])])?;
            buf[got..].fill(0);
            Ok(())
        };
        Ok(unlock_slot(&self.header, slot, password, read)?.is_some())
    }

    /// Writes the header (592 bytes at the area's start) and syncs it.
    fn write_header(&self) -> Result<()> {
        self.file
            .write_all_at(self.offset, &self.header.serialize())?;
        self.file.sync_data()
    }

    /// Makes slot `slot` hold `master_key` for `password`, PBKDF2 calibrated to `iter_time_ms` (as `create`:
    /// at least 1000 iterations, at most blk's cap).
    fn store_key(
        &mut self,
        slot: usize,
        password: &[u8],
        master_key: &[u8],
        iter_time_ms: u64,
    ) -> Result<()> {
        let hash = self.header.hash;
        let key_len = self.header.key_bytes as usize;
        let per_second = iterations_per_second(hash, key_len);
        let iterations = (per_second.saturating_mul(iter_time_ms) / 1000)
            .clamp(MIN_SLOT_ITERATIONS, u64::from(MAX_ITERATIONS)) as u32;
        let salt = random_bytes(SALT_LEN)?;
        let random = random_bytes(key_len * (STRIPES as usize - 1))?;
        let mut material = anti_forensic::split(hash, master_key, &random, STRIPES as usize);
        let mut slot_key = Zeroizing::new(vec![0u8; key_len]);
        hash.pbkdf2(password, &salt, iterations, &mut slot_key);
        SectorCipher::new(self.header.cipher, &slot_key)?.encrypt(0, &mut material)?;
        if self.header.slots[slot].active {
            // A forced overwrite: the header stops pointing at the material before it changes.
            self.header.slots[slot].active = false;
            self.write_header()?;
        }
        self.file.write_all_at(self.material_at(slot), &material)?;
        self.file.sync_data()?;
        let s = &mut self.header.slots[slot];
        s.active = true;
        s.iterations = iterations;
        s.salt.copy_from_slice(&salt);
        s.stripes = STRIPES;
        self.write_header()
    }

    /// Overwrites slot `slot`'s key material with random bytes, then marks it inactive (no iterations, a
    /// zero salt, as QEMU leaves an erased slot).
    fn erase_key(&mut self, slot: usize) -> Result<()> {
        let garbage = random_bytes(self.header.material_len())?;
        self.file.write_all_at(self.material_at(slot), &garbage)?;
        self.file.sync_data()?;
        let s = &mut self.header.slots[slot];
        s.active = false;
        s.iterations = 0;
        s.salt = [0; SALT_LEN];
        self.write_header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parsing_follows_qemu() {
        assert_eq!(
            KeySlotAmendment::parse(&opts(&[("compat", "1.1")])).unwrap(),
            None
        );
        let e = KeySlotAmendment::parse(&opts(&[("encrypt.keyslot", "2")])).unwrap_err();
        assert_eq!(e.message(), "Parameter 'state' is missing");
        let e = KeySlotAmendment::parse(&opts(&[("encrypt.state", "on")])).unwrap_err();
        assert_eq!(e.message(), "Parameter 'state' does not accept value 'on'");
        let e = KeySlotAmendment::parse(&opts(&[("encrypt.keyslot", "x")])).unwrap_err();
        assert_eq!(e.message(), "Parameter 'encrypt.keyslot' expects a number");
        let a = KeySlotAmendment::parse(&opts(&[
            ("encrypt.state", "active"),
            ("encrypt.keyslot", "-1"),
        ]))
        .unwrap()
        .unwrap();
        assert!(a.active);
        let e = KeySlotAmendment::checked_slot(a.keyslot.unwrap()).unwrap_err();
        assert_eq!(
            e.message(),
            "Invalid keyslot 4294967295 specified, must be between 0 and 7"
        );
        assert_eq!(KeySlotAmendment::checked_slot(7).unwrap(), 7);
    }
}
