//! Sizes as qemu-img spells them: `16M`, `1.5G`, `512`, `4k`.

use crate::error::{Error, ErrorKind, Result};

/// Parses a size in qemu-img's syntax: a number (decimal fractions allowed with a suffix) optionally followed
/// by `b`/`B` (bytes), `k`/`K`, `M`, `G`, `T`, `P` or `E` (powers of 1024).
///
/// ```
/// assert_eq!(blk_core::parse_size("16M").unwrap(), 16 << 20);
/// assert_eq!(blk_core::parse_size("1.5k").unwrap(), 1536);
/// assert_eq!(blk_core::parse_size("4096").unwrap(), 4096);
/// assert!(blk_core::parse_size("12Q").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid size '{text}': expected a number with an optional k, M, G, T, P or E suffix"),
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(bad()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    // A fraction: qemu accepts it with a unit and truncates to whole bytes.
    let value: f64 = number.parse().map_err(|_| bad())?;
    if shift == 0 || !value.is_finite() {
        return Err(bad());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("99999999999E").is_err());
    }
}
