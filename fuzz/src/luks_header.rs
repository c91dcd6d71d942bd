//! The `luks_header` harness: any bytes as a LUKS1 header area (its first 8 bytes the area length the crypto
//! header extension would record, big-endian; the rest the area, zeros past its end), parsed, checked and
//! unlocked with a fixed password, PBKDF2 bounded to 1000 rounds. It must never panic and never allocate
//! beyond the header's caps.

/// The password the corpus's sample headers open with.
const PASSWORD: &[u8] = b"fuzz";
/// PBKDF2 rounds at most per run (QEMU's minimum, so the corpus's samples made with it unlock).
const MAX_ITERATIONS: u32 = 1000;

/// Treats `data` as an area length and a LUKS header area.
pub fn luks_header(data: &[u8]) {
    let Some((length, area)) = data.split_first_chunk::<8>() else {
        return;
    };
    let area_len = u64::from_be_bytes(*length);
    let _ = blk_qcow::try_unlock_luks_area(area, area_len, PASSWORD, MAX_ITERATIONS);
}
