//! The commands that move data: `read`, `readv`, `aio_read`, `write`, `writev`, `aio_write`, `discard`,
//! `flush`, with qemu-io's option checks in qemu-io's order. `aio_*` requests complete before the command
//! returns (so their lines come in command order, as after qemu-io's `aio_flush`), and like qemu-io they count
//! as successful once submitted, whatever the request then does.

use std::time::{Duration, Instant};

use blk_core::{Error, ErrorKind, Result};

use super::getopt::{getopt, parse_len, parse_lengths, parse_num, parse_pattern, Options};
use super::image::Image;
use super::report::{dump_buffer, print_report, Transfer};
use super::session::print_io_error;
use super::{Failure, Outcome};
use crate::cmd::map_extent;
use crate::cmd::probe_guard;

/// qemu-io's default write pattern.
const DEFAULT_WRITE_PATTERN: u8 = 0xcd;

/// The offset and total length of a vectored command's operands (`off len [len..]`).
fn vector(options: &Options) -> std::result::Result<(u64, u64), Failure> {
    let Some((offset, lens)) = options.operands.split_first() else {
        return Err(Failure::Usage);
    };
    if lens.is_empty() {
        return Err(Failure::Usage);
    }
    let offset = parse_num(offset)?;
    let total = parse_lengths(lens)?.iter().sum();
    Ok((offset, total))
}

/// Reads `len` bytes at `offset`, first copying what the image does not allocate into it with `-C`.
fn read_bytes(image: &Image, offset: u64, len: u64) -> Result<Vec<u8>> {
    if image.settings.copy_on_read && !image.settings.read_only && image.has_unallocated() {
        copy_on_read(image, offset, len)?;
    }
    let len = usize::try_from(len)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "request too large"))?;
    let mut buf = vec![0u8; len];
    image.disk().read_exact_at(offset, &mut buf)?;
    Ok(buf)
}

/// `read -b`: `len` bytes of the image's VM state at `offset` (formats without one: `Operation not
/// supported`, as qemu-io).
fn read_vm_state(image: &Image, offset: u64, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "request too large"))?;
    let mut buf = vec![0u8; len];
    image.opened.admin.read_vm_state(offset, &mut buf)?;
    Ok(buf)
}

/// qemu's `MAX_BOUNCE_BUFFER`: copy-on-read copies at most this much at a time.
const MAX_BOUNCE_BUFFER: u64 = 32768 << 9;

/// Copy-on-read as qemu does it: each run of clusters the request touches that the image does not allocate
/// itself (up to [`MAX_BOUNCE_BUFFER`]) is read and written into it, as zeros (zero clusters) when the whole
/// run reads as zeros.
fn copy_on_read(image: &Image, offset: u64, len: u64) -> Result<()> {
    let disk = image.disk();
    let size = disk.logical_size();
    let cluster = image.cluster_size.max(512);
    let start = offset / cluster * cluster;
    let end = offset
        .saturating_add(len)
        .div_ceil(cluster)
        .saturating_mul(cluster)
        .min(size);
    let unallocated = |at: u64, max: u64| -> Result<(u64, bool)> {
        let extent = map_extent(disk, &image.path, at, max)?;
        let allocated = extent.depth == 0 && extent.kind != blk_core::ExtentKind::Unallocated;
        Ok((extent.length, !allocated))
    };
    let mut at = start;
    while at < end {
        let (mut run, copy) = unallocated(at, end - at)?;
        if copy {
            while at + run < end && run < MAX_BOUNCE_BUFFER {
                let (next, same) = unallocated(at + run, end - at - run)?;
                if !same {
                    break;
                }
                run += next;
            }
            run = run.min(MAX_BOUNCE_BUFFER);
            let mut buf = vec![0u8; request_len(run)?];
            disk.read_exact_at(at, &mut buf)?;
            if buf.iter().all(|&b| b == 0) {
                disk.write_zeroes(at, run, false)?;
            } else {
                disk.write_all_at(at, &buf)?;
            }
        }
        at += run;
    }
    Ok(())
}

/// Checks a read pattern over `buf`: qemu-io's message on a mismatch.
fn verify(buf: &[u8], pattern: u8, report_offset: u64) -> bool {
    if buf.iter().any(|&b| b != pattern) {
        println!(
            "Pattern verification failed at offset {report_offset}, {} bytes",
            buf.len()
        );
        return false;
    }
    true
}

/// `read [-abCqrv] [-P pattern [-s off] [-l len]] off len`.
pub fn read(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "bCl:pP:qrs:v")?;
    let mut pattern = None;
    let mut pattern_offset = 0;
    let mut pattern_len = None;
    if let Some(l) = options.value('l') {
        pattern_len = Some(parse_num(l)?);
    }
    if let Some(p) = options.value('P') {
        pattern = Some(parse_pattern(p)?);
    }
    if let Some(s) = options.value('s') {
        pattern_offset = parse_num(s)?;
    }
    let [offset, count] = options.operands.as_slice() else {
        return Err(Failure::Usage);
    };
    let offset = parse_num(offset)?;
    let len = parse_len(count, false)?;
    if pattern.is_none() && (options.has('l') || options.has('s')) {
        return Err(Failure::Usage);
    }
    let pattern_len = pattern_len.unwrap_or(len.wrapping_sub(pattern_offset));
    if pattern_offset > len || pattern_len > len - pattern_offset {
        println!("pattern verification range exceeds end of read data");
        return Err(Failure::Reported);
    }
    if options.has('b') {
        sector_aligned(offset, len)?;
    }
    let started = Instant::now();
    let buf = if options.has('b') {
        read_vm_state(image, offset, len)
    } else {
        read_bytes(image, offset, len)
    }
    .map_err(|e| Failure::Io("read", e))?;
    let elapsed = started.elapsed();
    let mut outcome = Ok(());
    if let Some(pattern) = pattern {
        let region = &buf[pattern_offset as usize..(pattern_offset + pattern_len) as usize];
        if !verify(region, pattern, offset + pattern_offset) {
            outcome = Err(Failure::Reported);
        }
    }
    report_read(&buf, offset, len, elapsed, &options);
    outcome
}

/// Prints what qemu-io prints after a read unless `-q`: the `-v` dump, then the `read` lines.
fn report_read(buf: &[u8], offset: u64, len: u64, elapsed: Duration, options: &Options) {
    if options.has('q') {
        return;
    }
    if options.has('v') {
        dump_buffer(buf, offset);
    }
    let transfer = Transfer {
        op: "read",
        offset,
        count: len,
        elapsed,
    };
    print_report(transfer, options.has('C'));
}

/// `readv [-Cqrv] [-P pattern] off len [len..]`.
pub fn readv(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "CP:qrv")?;
    let pattern = options.value('P').map(parse_pattern).transpose()?;
    let (offset, len) = vector(&options)?;
    let started = Instant::now();
    let buf = read_bytes(image, offset, len).map_err(|e| Failure::Io("readv", e))?;
    let elapsed = started.elapsed();
    let mut outcome = Ok(());
    if let Some(pattern) = pattern {
        if !verify(&buf, pattern, offset) {
            outcome = Err(Failure::Reported);
        }
    }
    report_read(&buf, offset, len, elapsed, &options);
    outcome
}

/// `aio_read [-Ciqrv] [-P pattern] off len [len..]`: the request counts as done once submitted.
pub fn aio_read(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "CiP:qrv")?;
    let pattern = options.value('P').map(parse_pattern).transpose()?;
    if options.operands.len() < 2 {
        return Err(Failure::Usage);
    }
    if options.has('i') {
        println!("injecting invalid read request");
        return Ok(());
    }
    let (offset, len) = vector(&options)?;
    let started = Instant::now();
    let buf = match read_bytes(image, offset, len) {
        Ok(buf) => buf,
        Err(err) => {
            print_io_error("readv", err, Some(image));
            return Ok(());
        }
    };
    let elapsed = started.elapsed();
    if let Some(pattern) = pattern {
        verify(&buf, pattern, offset);
    }
    report_read(&buf, offset, len, elapsed, &options);
    Ok(())
}

/// qemu-io's alignment check of `-b` and `-c` requests.
fn sector_aligned(offset: u64, len: u64) -> Outcome {
    if offset % 512 != 0 {
        println!("{offset} is not a sector-aligned value for 'offset'");
        return Err(Failure::Reported);
    }
    if len % 512 != 0 {
        println!("{len} is not a sector-aligned value for 'count'");
        return Err(Failure::Reported);
    }
    Ok(())
}

/// What a write stores.
enum Source {
    Pattern(u8),
    Zeroes { may_unmap: bool, no_fallback: bool },
    Bytes(Vec<u8>),
}

/// Whether writing `source` at `offset` is refused because the image was probed as raw and its first sector
/// would then look like another format's image (QEMU's `Operation not permitted`); says so as `OP failed`.
fn refused_by_probe(image: &Image, op: &str, offset: u64, len: u64, source: &Source) -> bool {
    if !image.probed_raw {
        return false;
    }
    let changes = match source {
        Source::Zeroes { .. } => Ok(false),
        Source::Pattern(byte) => {
            probe_guard::write_changes_format(image.disk(), offset, len, |_| *byte)
        }
        Source::Bytes(buf) => probe_guard::write_changes_format(image.disk(), offset, len, |i| {
            buf.get((i - offset) as usize).copied().unwrap_or(0)
        }),
    };
    // A sector 0 that cannot be read leaves the write to fail on its own.
    if changes.unwrap_or(false) {
        println!("{op} failed: Operation not permitted");
        return true;
    }
    false
}

/// Writes `len` bytes of `source` at `offset` (compressed with `-c`, made durable with `-f`).
fn store(image: &Image, offset: u64, len: u64, source: &Source, options: &Options) -> Result<()> {
    let disk = image.disk();
    match source {
        Source::Zeroes {
            may_unmap,
            no_fallback,
        } => {
            if *no_fallback && !zeroes_without_fallback(image, offset, len) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "writing zeroes here needs a fallback",
                ));
            }
            disk.write_zeroes(offset, len, *may_unmap && !image.settings.ignore_discards)?;
        }
        Source::Pattern(byte) => {
            let buf = vec![*byte; request_len(len)?];
            write_bytes(image, offset, &buf, options)?;
        }
        Source::Bytes(buf) => write_bytes(image, offset, buf, options)?,
    }
    if options.has('f') {
        disk.flush()?;
    }
    Ok(())
}

/// Writes `buf` at `offset`, compressed with `-c`.
fn write_bytes(image: &Image, offset: u64, buf: &[u8], options: &Options) -> Result<()> {
    if options.has('c') {
        write_compressed(image, offset, buf)
    } else {
        image.disk().write_all_at(offset, buf)
    }
}

fn request_len(len: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| Error::new(ErrorKind::InvalidInput, "request too large"))
}

/// Whether qemu writes zeroes over the range without falling back to writing a buffer (`write -z -n`): raw
/// punches or zeroes the host range, QCOW2 marks whole clusters zero.
fn zeroes_without_fallback(image: &Image, offset: u64, len: u64) -> bool {
    match image.format {
        "raw" => true,
        "qcow2" => {
            let cluster = image.cluster_size.max(512);
            let end = offset.saturating_add(len);
            offset % cluster == 0 && (end % cluster == 0 || end == image.disk().logical_size())
        }
        _ => false,
    }
}

/// `write -s FILE`: the file's first `len` bytes, repeated to fill `len`; qemu-io's messages on stderr.
fn pattern_file(name: &str, len: u64) -> std::result::Result<Vec<u8>, Failure> {
    let len = request_len(len).map_err(|e| Failure::Io("write", e))?;
    let fail = |message: String| {
        eprintln!("{message}");
        Failure::Reported
    };
    let mut data = Vec::with_capacity(len);
    let file = std::fs::File::open(name).map_err(|e| fail(format!("{name}: {}", io_text(&e))))?;
    use std::io::Read;
    file.take(len as u64)
        .read_to_end(&mut data)
        .map_err(|e| fail(format!("{name}: {}", io_text(&e))))?;
    if data.is_empty() {
        return Err(fail(format!("{name}: file is empty")));
    }
    let pattern_len = data.len();
    while data.len() < len {
        let n = pattern_len.min(len - data.len());
        data.extend_from_within(..n);
    }
    Ok(data)
}

/// An OS error's text without Rust's `(os error N)`.
fn io_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// `write -c`: `buf` stored compressed, one compression unit (cluster) at a time; like qemu, the range must
/// start on a unit and cover whole units but at the end of the disk.
fn write_compressed(image: &Image, offset: u64, buf: &[u8]) -> Result<()> {
    let admin = &*image.opened.admin;
    let Some(unit) = admin.compressed_write_size() else {
        return admin.write_compressed(offset, &[]);
    };
    let len = buf.len() as u64;
    let ends_disk = offset.checked_add(len) == Some(image.disk().logical_size());
    if unit == 0 || offset % unit != 0 || (len % unit != 0 && !ends_disk) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("compressed writes must cover whole clusters of {unit} bytes"),
        )
        .with_offset(offset));
    }
    for (i, chunk) in buf.chunks(request_len(unit)?).enumerate() {
        let at = offset + i as u64 * unit;
        // As QEMU: a compressed write cannot overwrite a cluster the image has allocated (EIO).
        let extent = image.disk().map(at, chunk.len() as u64)?;
        let allocated = matches!(
            extent.kind,
            blk_core::ExtentKind::Data | blk_core::ExtentKind::AllocatedZero
        );
        if extent.depth == 0 && allocated {
            return Err(Error::new(
                ErrorKind::Io,
                "a compressed write cannot overwrite an allocated cluster",
            )
            .with_offset(at));
        }
        admin.write_compressed(at, chunk)?;
    }
    Ok(())
}

/// `write [-bcCfnqruz] [-P pattern | -s source_file] off len`.
pub fn write(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "bcCfnpP:qrs:uz")?;
    let pattern = options.value('P').map(parse_pattern).transpose()?;
    if options.operands.len() != 2 {
        return Err(Failure::Usage);
    }
    let zero = options.has('z');
    let fail = |message: &str| {
        println!("{message}");
        Err(Failure::Reported)
    };
    if options.has('b') && zero {
        return fail("-b and -z cannot be specified at the same time");
    }
    if options.has('f') && (options.has('b') || options.has('c')) {
        return fail("-f and -b or -c cannot be specified at the same time");
    }
    if options.has('n') && !zero {
        return fail("-n requires -z to be specified");
    }
    if options.has('u') && !zero {
        return fail("-u requires -z to be specified");
    }
    if u8::from(zero) + u8::from(pattern.is_some()) + u8::from(options.has('s')) > 1 {
        return fail("Only one of -z, -P, and -s can be specified at the same time");
    }
    let offset = parse_num(&options.operands[0])?;
    let len = if zero && options.has('n') {
        parse_num(&options.operands[1])?
    } else {
        parse_len(&options.operands[1], true)?
    };
    if options.has('b') || options.has('c') {
        sector_aligned(offset, len)?;
    }
    if options.has('b') {
        return fail("write failed: Operation not supported");
    }
    let source = if zero {
        Source::Zeroes {
            may_unmap: options.has('u'),
            no_fallback: options.has('n'),
        }
    } else if let Some(name) = options.value('s') {
        Source::Bytes(pattern_file(name, len)?)
    } else {
        Source::Pattern(pattern.unwrap_or(DEFAULT_WRITE_PATTERN))
    };
    if refused_by_probe(image, "write", offset, len, &source) {
        return Err(Failure::Reported);
    }
    timed_store(image, offset, len, &source, &options).map_err(|e| Failure::Io("write", e))
}

/// `writev [-Cfqr] [-P pattern] off len [len..]`.
pub fn writev(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "CfqrP:")?;
    let pattern = options.value('P').map(parse_pattern).transpose()?;
    let (offset, len) = vector(&options)?;
    let source = Source::Pattern(pattern.unwrap_or(DEFAULT_WRITE_PATTERN));
    if refused_by_probe(image, "writev", offset, len, &source) {
        return Err(Failure::Reported);
    }
    timed_store(image, offset, len, &source, &options).map_err(|e| Failure::Io("writev", e))
}

/// `aio_write [-Cfiqruz] [-P pattern] off len [len..]`: the request counts as done once submitted.
pub fn aio_write(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "CfiqrP:uz")?;
    let pattern = options.value('P').map(parse_pattern).transpose()?;
    if options.has('i') {
        println!("injecting invalid write request");
        return Ok(());
    }
    if options.operands.len() < 2 {
        return Err(Failure::Usage);
    }
    let zero = options.has('z');
    let fail = |message: &str| {
        println!("{message}");
        Err(Failure::Reported)
    };
    if zero && options.operands.len() != 2 {
        return fail("-z supports only a single length parameter");
    }
    if options.has('u') && !zero {
        return fail("-u requires -z to be specified");
    }
    let (offset, len) = if zero {
        (
            parse_num(&options.operands[0])?,
            parse_num(&options.operands[1])?,
        )
    } else {
        vector(&options)?
    };
    let source = if zero {
        Source::Zeroes {
            may_unmap: options.has('u'),
            no_fallback: false,
        }
    } else {
        Source::Pattern(pattern.unwrap_or(DEFAULT_WRITE_PATTERN))
    };
    if refused_by_probe(image, "aio_write", offset, len, &source) {
        return Ok(());
    }
    if let Err(err) = timed_store(image, offset, len, &source, &options) {
        print_io_error("aio_write", err, Some(image));
    }
    Ok(())
}

/// Writes `source` (a write, writev or aio_write) and prints qemu-io's `wrote` lines unless `-q`.
fn timed_store(
    image: &Image,
    offset: u64,
    len: u64,
    source: &Source,
    options: &Options,
) -> Result<()> {
    let started = Instant::now();
    store(image, offset, len, source, options)?;
    let elapsed = started.elapsed();
    if !options.has('q') {
        let transfer = Transfer {
            op: "wrote",
            offset,
            count: len,
            elapsed,
        };
        print_report(transfer, options.has('C'));
    }
    Ok(())
}

/// `discard [-Cq] off len`.
pub fn discard(image: &Image, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "Cq")?;
    let [offset, count] = options.operands.as_slice() else {
        return Err(Failure::Usage);
    };
    let offset = parse_num(offset)?;
    let len = parse_len(count, false)?;
    let started = Instant::now();
    if !image.settings.ignore_discards {
        image
            .disk()
            .discard(offset, len)
            .map_err(|e| Failure::Io("discard", e))?;
    }
    let elapsed = started.elapsed();
    if !options.has('q') {
        let transfer = Transfer {
            op: "discard",
            offset,
            count: len,
            elapsed,
        };
        print_report(transfer, options.has('C'));
    }
    Ok(())
}

/// `flush`.
pub fn flush(image: &Image) -> Outcome {
    image.disk().flush().map_err(|e| Failure::Io("flush", e))
}
