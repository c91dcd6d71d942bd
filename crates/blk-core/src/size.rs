//! qemu's size syntax, as `qemu-img create` and `-o size=` accept it (`qemu_strtosz`).
//!
//! A decimal number with an optional binary suffix (`b`, `k`, `M`, `G`, `T`, `P`, `E`, either case), a decimal
//! fraction when a suffix other than `b` scales it (`1.5G`), or a hexadecimal number without fraction or suffix
//! (`0x1000`). Leading whitespace and a `+` are accepted, like `strtoull`.

use crate::error::{Error, ErrorKind, Result};

/// Why a size did not parse.
enum SizeError {
    /// Negative or at least 2^64.
    Range,
    /// Not a size at all.
    Invalid,
}

/// Parses a size in qemu-img's syntax.
///
/// ```
/// assert_eq!(blk_core::parse_size("16M").unwrap(), 16 << 20);
/// assert_eq!(blk_core::parse_size("1.5k").unwrap(), 1536);
/// assert_eq!(blk_core::parse_size("4096").unwrap(), 4096);
/// assert!(blk_core::parse_size("12Q").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    parse(text).map_err(|e| {
        let why = match e {
            SizeError::Range => "out of range",
            SizeError::Invalid => "expected a number with an optional k, M, G, T, P or E suffix",
        };
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid size '{text}': {why}"),
        )
    })
}

/// Parses `value`, the value of option `name`, as a size in bytes, with qemu's error messages.
///
/// ```
/// use blk_core::size::parse_size_param;
/// assert_eq!(parse_size_param("size", "16M").unwrap(), 16 << 20);
/// assert_eq!(parse_size_param("size", "0x200").unwrap(), 512);
/// assert_eq!(
///     parse_size_param("size", "-1").unwrap_err().to_string(),
///     "Value '-1' is out of range for parameter 'size'"
/// );
/// ```
pub fn parse_size_param(name: &str, value: &str) -> Result<u64> {
    parse(value).map_err(|e| match e {
        SizeError::Range => Error::new(
            ErrorKind::InvalidInput,
            format!("Value '{value}' is out of range for parameter '{name}'"),
        ),
        SizeError::Invalid => Error::new(
            ErrorKind::InvalidInput,
            format!(
                "Parameter '{name}' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively."
            ),
        ),
    })
}

/// The largest size qemu-img accepts on its command line (`INT64_MAX`): image sizes, rate limits, offsets.
pub const MAX_CLI_SIZE: u64 = i64::MAX as u64;

/// Parses a size given on qemu-img's command line (`name` says what it is: `image size`, `rate limit`) and
/// checks it is in `min..=max`, with qemu-img's messages (its `cvtnum_full`): `Invalid image size specified:
/// 'x'.` when it is no size, `Invalid image size specified. Must be between 0 and 9223372036854775807.` when it
/// is out of range (negative, at least 2^64, or outside the bounds).
///
/// ```
/// use blk_core::size::{parse_size_in_range, MAX_CLI_SIZE};
/// assert_eq!(parse_size_in_range("image size", "1M", 0, MAX_CLI_SIZE).unwrap(), 1 << 20);
/// assert_eq!(
///     parse_size_in_range("image size", "8E", 0, MAX_CLI_SIZE).unwrap_err().to_string(),
///     "Invalid image size specified. Must be between 0 and 9223372036854775807."
/// );
/// assert_eq!(
///     parse_size_in_range("rate limit", "1X", 0, MAX_CLI_SIZE).unwrap_err().to_string(),
///     "Invalid rate limit specified: '1X'."
/// );
/// ```
pub fn parse_size_in_range(name: &str, value: &str, min: u64, max: u64) -> Result<u64> {
    let range = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("Invalid {name} specified. Must be between {min} and {max}."),
        )
    };
    match parse(value) {
        Ok(size) if (min..=max).contains(&size) => Ok(size),
        Ok(_) | Err(SizeError::Range) => Err(range()),
        Err(SizeError::Invalid) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("Invalid {name} specified: '{value}'."),
        )),
    }
}

/// The multiplier of a size suffix, or `None` when `c` is not one.
fn suffix_multiplier(c: u8) -> Option<u64> {
    let shift = match c.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        b'P' => 50,
        b'E' => 60,
        _ => return None,
    };
    Some(1u64 << shift)
}

/// Accumulates the digits of `radix` at the start of `text`: (value, digits consumed). `Err(Range)` on
/// overflow.
fn digits(text: &[u8], radix: u32) -> Result<(u64, usize), SizeError> {
    let mut value = 0u64;
    let mut count = 0;
    for &c in text {
        let Some(d) = char::from(c).to_digit(radix) else {
            break;
        };
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(SizeError::Range)?;
        count += 1;
    }
    Ok((value, count))
}

fn parse(value: &str) -> Result<u64, SizeError> {
    // C's isspace, as strtoull skips it.
    let text = value.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let bytes = text.as_bytes();
    let bytes = match bytes.first() {
        Some(b'-') => return Err(SizeError::Range),
        Some(b'+') => &bytes[1..],
        _ => bytes,
    };
    let (int, n) = digits(bytes, 10)?;
    let mut rest = &bytes[n..];
    // Hexadecimal: no fraction, no suffix.
    if n > 0 && int == 0 && matches!(rest.first(), Some(b'x' | b'X')) {
        let (hex, m) = digits(&rest[1..], 16)?;
        if m == 0 || rest.len() != m + 1 {
            return Err(SizeError::Invalid);
        }
        return Ok(hex);
    }
    let mut fraction = 0f64;
    if rest.first() == Some(&b'.') {
        let m = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 && m == 0 {
            return Err(SizeError::Invalid);
        }
        // "0." followed by ASCII digits always parses as an f64.
        fraction = std::str::from_utf8(&rest[1..=m])
            .ok()
            .and_then(|digits| format!("0.{digits}").parse::<f64>().ok())
            .unwrap_or(0.0);
        rest = &rest[m + 1..];
    } else if n == 0 {
        return Err(SizeError::Invalid);
    }
    let multiplier = match rest.first().and_then(|&c| suffix_multiplier(c)) {
        Some(multiplier) => {
            rest = &rest[1..];
            multiplier
        }
        None => 1,
    };
    if !rest.is_empty() || (multiplier == 1 && fraction != 0.0) {
        return Err(SizeError::Invalid);
    }
    // As qemu: the fraction's bytes are truncated, and a fraction rounding up to 1.0 counts whole.
    let fraction_bytes = (fraction * multiplier as f64) as u64;
    int.checked_mul(multiplier)
        .and_then(|v| v.checked_add(fraction_bytes))
        .ok_or(SizeError::Range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> u64 {
        match parse(text) {
            Ok(v) => v,
            Err(_) => panic!("{text:?} should parse"),
        }
    }

    fn range(text: &str) -> bool {
        matches!(parse(text), Err(SizeError::Range))
    }

    fn invalid(text: &str) -> bool {
        matches!(parse(text), Err(SizeError::Invalid))
    }

    // Every case was checked against qemu-img 10.0 `create -f raw -o size=...`.
    #[test]
    fn accepts_what_qemu_accepts() {
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("17"), 17);
        assert_eq!(ok("00017"), 17);
        assert_eq!(ok("+5"), 5);
        assert_eq!(ok(" 5"), 5);
        assert_eq!(ok("1b"), 1);
        assert_eq!(ok("1B"), 1);
        assert_eq!(ok("1k"), 1024);
        assert_eq!(ok("1K"), 1024);
        assert_eq!(ok("1m"), 1 << 20);
        assert_eq!(ok("16M"), 16 << 20);
        assert_eq!(ok("2G"), 2 << 30);
        assert_eq!(ok("1T"), 1 << 40);
        assert_eq!(ok("1P"), 1 << 50);
        assert_eq!(ok("1e"), 1 << 60);
        assert_eq!(ok("1E"), 1 << 60);
        assert_eq!(ok("1.5k"), 1536);
        assert_eq!(ok("1.5e"), 1_729_382_256_910_270_464);
        assert_eq!(ok("1.k"), 1024);
        assert_eq!(ok(".5k"), 512);
        assert_eq!(ok("1."), 1);
        assert_eq!(ok("15.99999999999999999999999k"), 16384);
        assert_eq!(ok("0x10"), 16);
        assert_eq!(ok("0XfF"), 255);
        assert_eq!(ok("18446744073709551615"), u64::MAX);
    }

    #[test]
    fn rejects_what_qemu_rejects() {
        for text in [
            "", " ", "abc", "1.5", "1.5b", "0x10k", "0x1.8k", "0x", "1k5", "1 k", "1kB", "1e3",
            "5 ", ".", ".k", "k",
        ] {
            assert!(invalid(text), "{text:?} should be invalid");
        }
        for text in [
            "-1",
            "-0",
            "16E",
            "18446744073709551616",
            "0x10000000000000000",
        ] {
            assert!(range(text), "{text:?} should be out of range");
        }
    }

    #[test]
    fn messages_are_qemus() {
        let e = parse_size_param("size", "abc").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e
            .to_string()
            .starts_with("Parameter 'size' expects a non-negative number below 2^64\n"));
        let e = parse_size_param("extent_size_hint", "16E").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Value '16E' is out of range for parameter 'extent_size_hint'"
        );
    }
}
