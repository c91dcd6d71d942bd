//! The CRC-32C checksums of headers, region tables and log entries (MS-VHDX 2.2.2, 2.2.3.1, 2.3.1.1): computed
//! over the whole structure with its 4-byte checksum field taken as zero.

/// CRC-32C of `data` with the four bytes at `field` read as zeros.
pub(crate) fn crc32c_without_field(data: &[u8], field: usize) -> u32 {
    let Some(after) = field.checked_add(4).filter(|&end| end <= data.len()) else {
        return crc32c::crc32c(data);
    };
    let crc = crc32c::crc32c(&data[..field]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &data[after..])
}

/// Stores the checksum of `data` (with the field zeroed) into the field, little-endian.
pub(crate) fn store_checksum(data: &mut [u8], field: usize) {
    let crc = crc32c_without_field(data, field);
    if let Some(slot) = data.get_mut(field..field + 4) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Whether the checksum stored at `field` matches the data.
pub(crate) fn checksum_matches(data: &[u8], field: usize) -> bool {
    let Some(stored) = data.get(field..field + 4) else {
        return false;
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    stored == crc32c_without_field(data, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_round_trips_and_ignores_its_field() {
        let mut data = vec![7u8; 4096];
        store_checksum(&mut data, 4);
        assert!(checksum_matches(&data, 4));
        data[100] ^= 1;
        assert!(!checksum_matches(&data, 4));
        // The standard CRC-32C check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
