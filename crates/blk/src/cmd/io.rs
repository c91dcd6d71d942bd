//! `blk io`: a qemu-io subset run with `-c` commands: `read`, `write`, `discard`, `flush`.
//!
//! Output lines are qemu-io's (`wrote 131072/131072 bytes at offset 0` and its statistics line); a pattern
//! mismatch prints `Pattern verification failed at offset N, M bytes`. Every command runs even after a failure,
//! and the exit code is 1 when any failed, as with qemu-io. Errors are printed as `read failed: <error>` like
//! qemu-io, but on stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blk_core::{DiskFile, Error, ErrorKind, OpenedImage, Result};
use clap::Args;

use super::{cache_is_direct, open_image, OpenSpec};

/// qemu-io's `BDRV_REQUEST_MAX_BYTES`: the largest single request.
const MAX_REQUEST: u64 = (i32::MAX as u64) & !511;
/// qemu-io's default write pattern.
const DEFAULT_WRITE_PATTERN: u8 = 0xcd;

/// Arguments of `blk io`.
#[derive(Debug, Args)]
pub struct IoArgs {
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Open the image read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// Open the image without taking a lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Cache mode: `none` bypasses the host page cache, `writeback` (default) does not.
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Bypass the host page cache (same as `-t none`).
    #[arg(short = 'n', long = "nocache")]
    pub nocache: bool,
    /// A command to run, e.g. `write -P 0xa7 0 128k` (repeatable; run in order). Without any, commands are
    /// read from stdin, one a line, until EOF or `quit`.
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "COMMAND",
        allow_hyphen_values = true
    )]
    pub commands: Vec<String>,
    /// The image.
    pub filename: PathBuf,
}

/// Why a command failed: the message is already printed, or an error still to print.
#[derive(Debug)]
pub enum Failure {
    /// Printed already (usage errors, pattern mismatches).
    Reported,
    /// An I/O error of the named operation (`read`, `write`, ...).
    Io(&'static str, Error),
}

type Outcome = std::result::Result<(), Failure>;

/// Prints a usage problem on stderr and fails the command.
fn usage(message: String) -> Failure {
    eprintln!("{message}");
    Failure::Reported
}

/// qemu-io's option parsing for one command: `-x` flags (combinable) and `-P value` options, then operands.
struct Parsed {
    flags: Vec<(char, Option<String>)>,
    operands: Vec<String>,
}

impl Parsed {
    fn has(&self, flag: char) -> bool {
        self.flags.iter().any(|(f, _)| *f == flag)
    }

    fn value(&self, flag: char) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .and_then(|(_, v)| v.as_deref())
    }
}

fn getopt(
    name: &str,
    args: &[&str],
    flags: &str,
    with_value: &str,
) -> std::result::Result<Parsed, Failure> {
    let mut parsed = Parsed {
        flags: Vec::new(),
        operands: Vec::new(),
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
                if with_value.contains(c) {
                    let rest = &arg[1 + at + c.len_utf8()..];
                    let value = if !rest.is_empty() {
                        rest.to_string()
                    } else {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.to_string(),
                            None => {
                                return Err(usage(format!(
                                    "{name}: option requires an argument -- '{c}'"
                                )))
                            }
                        }
                    };
                    parsed.flags.push((c, Some(value)));
                    break;
                } else if flags.contains(c) {
                    parsed.flags.push((c, None));
                } else {
                    return Err(usage(format!("{name}: invalid option -- '{c}'")));
                }
            }
        } else {
            parsed.operands.push(arg.to_string());
        }
        i += 1;
    }
    Ok(parsed)
}

/// qemu-io's `cvtnum`: a byte count with k/M/G/T/P/E suffixes.
fn parse_num(text: &str) -> std::result::Result<u64, Failure> {
    blk_factory::parse_size(text).map_err(|_| {
        println!(
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {text}"
        );
        Failure::Reported
    })
}

/// qemu-io's `parse_pattern`: a byte as C's `strtol(.., 0)` reads it (decimal, `0x` hex, `0` octal).
fn parse_pattern(text: &str) -> std::result::Result<u8, Failure> {
    let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse::<u32>().ok()
    };
    match parsed.and_then(|v| u8::try_from(v).ok()) {
        Some(v) => Ok(v),
        None => {
            println!("{text} is not a valid pattern byte");
            Err(Failure::Reported)
        }
    }
}

/// Checks the operand count: qemu-io's `bad argument count` message.
fn operands<'a>(
    name: &str,
    parsed: &'a Parsed,
    count: usize,
) -> std::result::Result<&'a [String], Failure> {
    let n = parsed.operands.len();
    if n != count {
        let bound = if n < count { "at least" } else { "at most" };
        return Err(usage(format!(
            "bad argument count {n} to {name}, expected {bound} {count} arguments"
        )));
    }
    Ok(&parsed.operands)
}

/// Parses `offset length` operands.
fn range(name: &str, parsed: &Parsed) -> std::result::Result<(u64, u64), Failure> {
    let ops = operands(name, parsed, 2)?;
    let offset = parse_num(&ops[0])?;
    let len = parse_num(&ops[1])?;
    if len > MAX_REQUEST {
        println!("length cannot exceed {MAX_REQUEST}, cannot {name}");
        return Err(Failure::Reported);
    }
    Ok((offset, len))
}

/// qemu-io's `cvtstr`: `128 KiB`, `512 bytes`, `2.930 KiB`.
pub fn cvtstr(value: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        ((1u64 << 60) as f64, " EiB"),
        ((1u64 << 50) as f64, " PiB"),
        ((1u64 << 40) as f64, " TiB"),
        ((1u64 << 30) as f64, " GiB"),
        ((1u64 << 20) as f64, " MiB"),
        ((1u64 << 10) as f64, " KiB"),
    ];
    let (text, suffix) = match UNITS.iter().find(|(unit, _)| value >= *unit) {
        Some((unit, suffix)) => (format!("{:.3}", value / unit), *suffix),
        None => (format!("{value:.6}"), " bytes"),
    };
    match text.find(".000") {
        Some(i) => format!("{}{suffix}", &text[..i]),
        None => format!("{text}{suffix}"),
    }
}

/// qemu-io's `timestr`: `00.00 sec` below a second, `0:00:01.23` above.
pub fn timestr(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let frac = f64::from(elapsed.subsec_nanos()) / 1e9;
    if secs == 0 {
        format!("{frac:05.2} sec")
    } else {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs / 60) % 60,
            (secs % 60) as f64 + frac
        )
    }
}

/// qemu-io's two report lines for one request.
fn print_report(op: &str, elapsed: Duration, offset: u64, count: u64) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("{op} {count}/{count} bytes at offset {offset}");
    println!(
        "{}, 1 ops; {} ({}/sec and {:.4} ops/sec)",
        cvtstr(count as f64),
        timestr(elapsed),
        cvtstr(count as f64 / secs),
        1.0 / secs
    );
}

/// qemu-io's `dump_buffer` (`read -v`).
fn dump_buffer(buf: &[u8], offset: u64) {
    for (i, line) in buf.chunks(16).enumerate() {
        let hex: String = line.iter().map(|b| format!("{b:02x} ")).collect();
        let text: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        println!("{:08x}:  {hex} {text}", offset + 16 * i as u64);
    }
}

fn read(disk: &dyn DiskFile, args: &[&str]) -> Outcome {
    let parsed = getopt("read", args, "qvCbp", "Psl")?;
    let (offset, len) = range("read", &parsed)?;
    let pattern = parsed.value('P').map(parse_pattern).transpose()?;
    let pattern_offset = parsed.value('s').map(parse_num).transpose()?.unwrap_or(0);
    let pattern_len = match parsed.value('l') {
        Some(l) => parse_num(l)?,
        None => len.saturating_sub(pattern_offset),
    };
    if pattern_offset.saturating_add(pattern_len) > len {
        println!("pattern verification range exceeds end of read data");
        return Err(Failure::Reported);
    }
    let mut buf = vec![0u8; len as usize];
    let started = Instant::now();
    disk.read_exact_at(offset, &mut buf)
        .map_err(|e| Failure::Io("read", e))?;
    let elapsed = started.elapsed();
    let mut outcome = Ok(());
    if let Some(pattern) = pattern {
        let region = &buf[pattern_offset as usize..(pattern_offset + pattern_len) as usize];
        if region.iter().any(|&b| b != pattern) {
            println!(
                "Pattern verification failed at offset {}, {} bytes",
                offset + pattern_offset,
                pattern_len
            );
            outcome = Err(Failure::Reported);
        }
    }
    if parsed.has('q') {
        return outcome;
    }
    if parsed.has('v') {
        dump_buffer(&buf, offset);
    }
    print_report("read", elapsed, offset, len);
    outcome
}

fn write(image: &OpenedImage, args: &[&str]) -> Outcome {
    let disk = &*image.disk;
    let parsed = getopt("write", args, "qzufnbpcC", "Ps")?;
    let zero = parsed.has('z');
    if u8::from(zero)
        + u8::from(parsed.value('P').is_some())
        + u8::from(parsed.value('s').is_some())
        > 1
    {
        println!("Only one of -z, -P, and -s can be specified at the same time");
        return Err(Failure::Reported);
    }
    if parsed.has('c') && zero {
        println!("Cannot use -c with -z");
        return Err(Failure::Reported);
    }
    if parsed.has('u') && !zero {
        println!("-u requires -z to be specified");
        return Err(Failure::Reported);
    }
    if parsed.value('s').is_some() {
        println!("write -s (pattern file) is not supported by blk io");
        return Err(Failure::Reported);
    }
    let (offset, len) = range("write", &parsed)?;
    let pattern = parsed
        .value('P')
        .map(parse_pattern)
        .transpose()?
        .unwrap_or(DEFAULT_WRITE_PATTERN);
    let started = Instant::now();
    if zero {
        disk.write_zeroes(offset, len, parsed.has('u'))
            .map_err(|e| Failure::Io("write", e))?;
    } else if parsed.has('c') {
        write_compressed(image, offset, len, pattern).map_err(|e| Failure::Io("write", e))?;
    } else {
        let buf = vec![pattern; len as usize];
        disk.write_all_at(offset, &buf)
            .map_err(|e| Failure::Io("write", e))?;
    }
    if parsed.has('f') {
        // FUA: durable before the command completes.
        disk.flush().map_err(|e| Failure::Io("write", e))?;
    }
    let elapsed = started.elapsed();
    if !parsed.has('q') {
        print_report("wrote", elapsed, offset, len);
    }
    Ok(())
}

/// `write -c`: `len` bytes of `pattern` stored compressed, one compression unit (cluster) at a time; like
/// qemu-io, the range must start on a unit and cover whole units but at the end of the disk.
fn write_compressed(image: &OpenedImage, offset: u64, len: u64, pattern: u8) -> Result<()> {
    let admin = &*image.admin;
    let Some(unit) = admin.compressed_write_size() else {
        return admin.write_compressed(offset, &[]);
    };
    let ends_disk = offset.checked_add(len) == Some(image.disk.logical_size());
    if unit == 0 || offset % unit != 0 || (len % unit != 0 && !ends_disk) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("compressed writes must cover whole clusters of {unit} bytes"),
        )
        .with_offset(offset));
    }
    let unit_len = usize::try_from(unit)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "cluster too large"))?;
    let buf = vec![pattern; unit_len];
    let mut done = 0;
    while done < len {
        let n = unit.min(len - done);
        admin.write_compressed(offset + done, &buf[..n as usize])?;
        done += n;
    }
    Ok(())
}

fn discard(disk: &dyn DiskFile, args: &[&str]) -> Outcome {
    let parsed = getopt("discard", args, "qC", "")?;
    let (offset, len) = range("discard", &parsed)?;
    let started = Instant::now();
    disk.discard(offset, len)
        .map_err(|e| Failure::Io("discard", e))?;
    let elapsed = started.elapsed();
    if !parsed.has('q') {
        print_report("discard", elapsed, offset, len);
    }
    Ok(())
}

fn flush(disk: &dyn DiskFile, args: &[&str]) -> Outcome {
    let parsed = getopt("flush", args, "", "")?;
    operands("flush", &parsed, 0)?;
    disk.flush().map_err(|e| Failure::Io("flush", e))
}

/// Runs one command line against `image`.
pub fn execute(image: &OpenedImage, command: &str) -> Outcome {
    let disk = &*image.disk;
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Ok(());
    };
    match name {
        "read" | "r" => read(disk, args),
        "write" | "w" => write(image, args),
        "discard" | "d" => discard(disk, args),
        "flush" | "f" | "aio_flush" => flush(disk, args),
        _ => Err(usage(format!("command \"{name}\" not found"))),
    }
}

/// Runs `blk io`.
pub fn run(args: IoArgs) -> Result<u8> {
    let path = &args.filename;
    let direct = args.nocache || cache_is_direct(args.cache.as_deref())?;
    let spec = OpenSpec {
        format: args.format.as_deref(),
        read_only: args.read_only,
        force_share: args.force_share,
        direct,
        check_mode: false,
        skip_backing: false,
        snapshot: None,
    };
    let image = open_image(path, spec)?;
    let commands = if args.commands.is_empty() {
        stdin_commands()?
    } else {
        args.commands
    };
    let mut failed = false;
    for command in &commands {
        match execute(&image, command) {
            Ok(()) => {}
            Err(Failure::Reported) => failed = true,
            Err(Failure::Io(op, err)) => {
                eprintln!("{op} failed: {}", err.with_path(path));
                failed = true;
            }
        }
    }
    Ok(u8::from(failed))
}

/// Commands from stdin, up to EOF or `quit`/`q`.
fn stdin_commands() -> Result<Vec<String>> {
    let mut commands = Vec::new();
    for line in std::io::stdin().lines() {
        let line = line?;
        if matches!(line.trim(), "quit" | "q") {
            break;
        }
        commands.push(line);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_io_number_formats() {
        assert_eq!(cvtstr(131072.0), "128 KiB");
        assert_eq!(cvtstr(512.0), "512 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(3000.0), "2.930 KiB");
        assert_eq!(timestr(Duration::from_millis(5)), "00.01 sec");
        assert_eq!(timestr(Duration::from_millis(61_500)), "0:01:01.50");
    }

    #[test]
    fn patterns_parse_like_strtol() {
        assert!(matches!(parse_pattern("0xa7"), Ok(0xa7)));
        assert!(matches!(parse_pattern("17"), Ok(17)));
        assert!(matches!(parse_pattern("017"), Ok(0o17)));
        assert!(parse_pattern("256").is_err());
        assert!(parse_pattern("x").is_err());
    }

    #[test]
    fn options_combine() {
        let p = getopt("write", &["-zu", "0", "4k"], "zu", "P")
            .ok()
            .unwrap();
        assert!(p.has('z') && p.has('u'));
        assert_eq!(p.operands, ["0", "4k"]);
        let p = getopt("read", &["-P0x5", "0", "1"], "q", "P").ok().unwrap();
        assert_eq!(p.value('P'), Some("0x5"));
    }
}
