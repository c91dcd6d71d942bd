//! Parsing one command's words as qemu-io does: glibc `getopt` (options anywhere, operands permuted after
//! them, `--` ends options), `cvtnum` byte counts and `parse_pattern` bytes, with qemu-io's messages.

use super::{Failure, MAX_REQUEST};

/// A command's options (in the order given) and operands.
#[derive(Debug, Default)]
pub struct Options {
    flags: Vec<(char, Option<String>)>,
    /// The words that are not options, in order.
    pub operands: Vec<String>,
}

impl Options {
    /// Whether flag `flag` was given.
    pub fn has(&self, flag: char) -> bool {
        self.flags.iter().any(|(f, _)| *f == flag)
    }

    /// The value of the last `-flag value`.
    pub fn value(&self, flag: char) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// glibc's `getopt(argc, argv, spec)` over `args` (the words after the command name `name`): `spec` lists the
/// option letters, a `:` after one that takes a value. Errors print glibc's line on stderr and fail with
/// [`Failure::Usage`], for which the caller prints the command's usage line.
pub fn getopt(name: &str, args: &[&str], spec: &str) -> Result<Options, Failure> {
    let mut parsed = Options::default();
    let takes_value = |c: char| {
        spec.char_indices()
            .find(|&(_, s)| s == c && c != ':')
            .map(|(i, _)| spec[i + c.len_utf8()..].starts_with(':'))
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        if arg == "--" {
            parsed
                .operands
                .extend(args[i + 1..].iter().map(|s| s.to_string()));
            break;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            for (at, c) in arg[1..].char_indices() {
                match takes_value(c) {
                    Some(true) => {
                        let rest = &arg[1 + at + c.len_utf8()..];
                        let value = if !rest.is_empty() {
                            rest.to_string()
                        } else {
                            i += 1;
                            match args.get(i) {
                                Some(v) => v.to_string(),
                                None => {
                                    eprintln!("{name}: option requires an argument -- '{c}'");
                                    return Err(Failure::Usage);
                                }
                            }
                        };
                        parsed.flags.push((c, Some(value)));
                        break;
                    }
                    Some(false) => parsed.flags.push((c, None)),
                    None => {
                        eprintln!("{name}: invalid option -- '{c}'");
                        return Err(Failure::Usage);
                    }
                }
            }
        } else {
            parsed.operands.push(arg.to_string());
        }
        i += 1;
    }
    Ok(parsed)
}

/// qemu-io's `cvtnum`: a byte count with k/M/G/T/P/E suffixes, or `print_cvtnum_err`'s line.
pub fn parse_num(text: &str) -> Result<u64, Failure> {
    match blk_factory::parse_size(text) {
        Ok(v) if v <= i64::MAX as u64 => Ok(v),
        Ok(_) => {
            println!("Parsing error: argument too large -- {text}");
            Err(Failure::Reported)
        }
        Err(_) => {
            println!(
                "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {text}"
            );
            Err(Failure::Reported)
        }
    }
}

/// A length operand of one request: at most qemu's `BDRV_REQUEST_MAX_BYTES`, else `length cannot exceed
/// MAX, given TEXT` (`MAX without -n` for writes: `write -z -n` may exceed it).
pub fn parse_len(text: &str, write: bool) -> Result<u64, Failure> {
    let len = parse_num(text)?;
    if len > MAX_REQUEST {
        let hint = if write { " without -n" } else { "" };
        println!("length cannot exceed {MAX_REQUEST}{hint}, given {text}");
        return Err(Failure::Reported);
    }
    Ok(len)
}

/// C's `strtol(text, &end, 0)` over the whole text: decimal, `0x` hex or `0` octal, with an optional sign.
pub fn strtol(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let parsed = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        None
    };
    parsed.map(|v| if negative { -v } else { v })
}

/// qemu-io's `parse_pattern`: a byte as `strtol(.., 0)` reads it, else `X is not a valid pattern byte`.
pub fn parse_pattern(text: &str) -> Result<u8, Failure> {
    match strtol(text).and_then(|v| u8::try_from(v).ok()) {
        Some(v) => Ok(v),
        None => {
            println!("{text} is not a valid pattern byte");
            Err(Failure::Reported)
        }
    }
}

/// The lengths of a vectored request (`readv off len [len..]`), as qemu-io's `create_iovec` checks them.
pub fn parse_lengths(texts: &[String]) -> Result<Vec<u64>, Failure> {
    let mut total = 0u64;
    let mut lens = Vec::with_capacity(texts.len());
    for text in texts {
        let len = parse_num(text)?;
        if len > MAX_REQUEST {
            println!("Argument '{text}' exceeds maximum size {MAX_REQUEST}");
            return Err(Failure::Reported);
        }
        if total > MAX_REQUEST - len {
            println!("The total number of bytes exceed the maximum size {MAX_REQUEST}");
            return Err(Failure::Reported);
        }
        total += len;
        lens.push(len);
    }
    Ok(lens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_like_strtol() {
        assert!(matches!(parse_pattern("0xa7"), Ok(0xa7)));
        assert!(matches!(parse_pattern("17"), Ok(17)));
        assert!(matches!(parse_pattern("017"), Ok(0o17)));
        assert!(parse_pattern("256").is_err());
        assert!(parse_pattern("x").is_err());
        assert!(parse_pattern("-1").is_err());
        assert_eq!(strtol("-12"), Some(-12));
    }

    #[test]
    fn options_combine_and_permute() {
        let p = getopt("write", &["-zu", "0", "4k"], "zuP:").ok().unwrap();
        assert!(p.has('z') && p.has('u'));
        assert_eq!(p.operands, ["0", "4k"]);
        let p = getopt("read", &["-P0x5", "0", "1"], "qP:").ok().unwrap();
        assert_eq!(p.value('P'), Some("0x5"));
        let p = getopt("read", &["0", "1", "-P", "7", "-q"], "qP:")
            .ok()
            .unwrap();
        assert_eq!(p.value('P'), Some("7"));
        assert!(p.has('q'));
        assert_eq!(p.operands, ["0", "1"]);
        assert!(matches!(getopt("read", &["-x"], "q"), Err(Failure::Usage)));
        assert!(matches!(getopt("read", &["-P"], "P:"), Err(Failure::Usage)));
    }
}
