//! qemu-io's output of a request: the two statistics lines (or `-C`'s one machine-readable line), its number
//! and time formats, and `-v`'s hex dump.

use std::time::Duration;

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

/// qemu-io's `timestr`: `00.00 sec` below a second, `0:00:01.23` above or when `verbose` (`-C`).
pub fn timestr(elapsed: Duration, verbose: bool) -> String {
    let secs = elapsed.as_secs();
    let frac = f64::from(elapsed.subsec_nanos()) / 1e9;
    if secs == 0 && !verbose {
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

/// What one request did, for [`print_report`].
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// `read`, `wrote` or `discard`.
    pub op: &'static str,
    /// Guest offset of the request.
    pub offset: u64,
    /// Bytes asked for.
    pub count: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// qemu-io's `print_report`: `OP N/N bytes at offset O` and the statistics line, or with `machine` (`-C`)
/// `bytes,ops,time,bytes/sec,ops/sec`.
pub fn print_report(transfer: Transfer, machine: bool) {
    let Transfer {
        op,
        offset,
        count,
        elapsed,
    } = transfer;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let time = timestr(elapsed, machine);
    if machine {
        println!(
            "{count},1,{time},{:.3},{:.3}",
            count as f64 / secs,
            1.0 / secs
        );
    } else {
        println!("{op} {count}/{count} bytes at offset {offset}");
        println!(
            "{}, 1 ops; {time} ({}/sec and {:.4} ops/sec)",
            cvtstr(count as f64),
            cvtstr(count as f64 / secs),
            1.0 / secs
        );
    }
}

/// qemu-io's `dump_buffer` (`read -v`): 16 bytes a line, hex then `isalnum` characters.
pub fn dump_buffer(buf: &[u8], offset: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_io_number_formats() {
        assert_eq!(cvtstr(131072.0), "128 KiB");
        assert_eq!(cvtstr(512.0), "512 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(3000.0), "2.930 KiB");
        assert_eq!(timestr(Duration::from_millis(5), false), "00.01 sec");
        assert_eq!(timestr(Duration::from_millis(5), true), "0:00:00.01");
        assert_eq!(timestr(Duration::from_millis(61_500), false), "0:01:01.50");
    }
}
