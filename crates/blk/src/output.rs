//! Output shared by the subcommands: qemu's JSON (key order and pretty-printing), qemu's human size strings and
//! the `--output` choice.
//!
//! qemu-img builds its JSON from QAPI objects stored in a `QDict`, a hash table of 512 buckets, and prints the
//! keys in bucket order (later insertions first within one bucket). [`Json::Map`] keeps the QAPI insertion
//! order and [`to_json_pretty`] reorders by the same hash, so `blk` prints keys exactly where qemu-img does, for
//! any key set a format reports.

use blk_core::{InfoValue, SnapshotInfo};
use clap::ValueEnum;

/// `--output=human|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// qemu-img's human-readable text.
    #[default]
    Human,
    /// qemu-img's JSON.
    Json,
}

/// A JSON value as qemu's QObject model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    /// `true` / `false`.
    Bool(bool),
    /// An unsigned number.
    U64(u64),
    /// A string.
    Str(String),
    /// A list, printed in order.
    List(Vec<Json>),
    /// An object; entries in QAPI (insertion) order, printed in `QDict` order.
    Map(Vec<(String, Json)>),
}

impl From<&InfoValue> for Json {
    fn from(value: &InfoValue) -> Json {
        match value {
            InfoValue::Bool(b) => Json::Bool(*b),
            InfoValue::U64(n) => Json::U64(*n),
            InfoValue::String(s) => Json::Str(s.clone()),
            InfoValue::List(items) => Json::List(items.iter().map(Json::from).collect()),
            InfoValue::Map(entries) => Json::Map(map_from_info(entries)),
        }
    }
}

/// Converts format-specific `(key, value)` pairs to JSON map entries.
pub fn map_from_info(entries: &[(String, InfoValue)]) -> Vec<(String, Json)> {
    entries
        .iter()
        .map(|(k, v)| (k.clone(), Json::from(v)))
        .collect()
}

/// The number of buckets in qemu's `QDict`.
const QDICT_BUCKETS: u32 = 512;

/// qemu's `tdb_hash` modulo the bucket count: where a key sits in a `QDict`.
fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << (i * 5 % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % QDICT_BUCKETS
}

/// The entries of a map in the order qemu iterates a `QDict` built by inserting them in order: by bucket, and
/// within one bucket the latest insertion first.
pub fn qdict_order(entries: &[(String, Json)]) -> Vec<&(String, Json)> {
    let mut indexed: Vec<(u32, usize, &(String, Json))> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (qdict_bucket(&e.0), i, e))
        .collect();
    indexed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    indexed.into_iter().map(|(_, _, e)| e).collect()
}

/// Pretty-prints `value` as qemu's `qobject_to_json_pretty` does (4-space indentation, empty containers on two
/// lines), without a trailing newline.
pub fn to_json_pretty(value: &Json) -> String {
    let mut out = String::new();
    write_json(value, 0, &mut out);
    out
}

/// Prints `value` on one line as qemu's `qobject_to_json` does (`{"key": value, ...}`, keys in `QDict` order):
/// the text of qemu's `json:` image names.
pub fn to_json_compact(value: &Json) -> String {
    let mut out = String::new();
    write_json_compact(value, &mut out);
    out
}

fn write_json_compact(value: &Json, out: &mut String) {
    match value {
        Json::Bool(_) | Json::U64(_) | Json::Str(_) => write_json(value, 0, out),
        Json::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_compact(item, out);
            }
            out.push(']');
        }
        Json::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in qdict_order(entries).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quote_json(key, out);
                out.push_str(": ");
                write_json_compact(item, out);
            }
            out.push('}');
        }
    }
}

fn indent(level: usize, out: &mut String) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_json(value: &Json, level: usize, out: &mut String) {
    match value {
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::U64(n) => out.push_str(&n.to_string()),
        Json::Str(s) => quote_json(s, out),
        Json::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                indent(level + 1, out);
                write_json(item, level + 1, out);
            }
            out.push('\n');
            indent(level, out);
            out.push(']');
        }
        Json::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in qdict_order(entries).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                indent(level + 1, out);
                quote_json(key, out);
                out.push_str(": ");
                write_json(item, level + 1, out);
            }
            out.push('\n');
            indent(level, out);
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string the way qemu's JSON writer quotes it (non-ASCII as `\uXXXX`).
fn quote_json(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Prints a map's entries as qemu's `dump_qdict` does for `Format specific information:` (dashes in keys become
/// spaces; nested values one level deeper), at `level` (4 spaces each).
pub fn dump_human_map(entries: &[(String, Json)], level: usize, out: &mut String) {
    for (key, value) in qdict_order(entries) {
        indent(level, out);
        out.push_str(&key.replace('-', " "));
        out.push(':');
        dump_human_value(value, level + 1, out);
    }
}

fn dump_human_value(value: &Json, level: usize, out: &mut String) {
    match value {
        Json::Bool(b) => out.push_str(&format!(" {b}\n")),
        Json::U64(n) => out.push_str(&format!(" {n}\n")),
        Json::Str(s) => out.push_str(&format!(" {s}\n")),
        Json::Map(entries) => {
            out.push('\n');
            dump_human_map(entries, level, out);
        }
        Json::List(items) => {
            out.push('\n');
            for (i, item) in items.iter().enumerate() {
                indent(level, out);
                let composite = matches!(item, Json::Map(_) | Json::List(_));
                out.push_str(&format!("[{i}]:"));
                if composite {
                    out.push('\n');
                    match item {
                        Json::Map(entries) => dump_human_map(entries, level + 1, out),
                        other => dump_human_value(other, level + 1, out),
                    }
                } else {
                    dump_human_value(item, level + 1, out);
                }
            }
        }
    }
}

/// One internal snapshot as qemu-img's JSON `SnapshotInfo` (QAPI field order; `icount` only when recorded).
pub fn snapshot_json(snapshot: &SnapshotInfo) -> Json {
    let mut m = vec![
        ("id".to_string(), Json::Str(snapshot.id.clone())),
        ("name".to_string(), Json::Str(snapshot.name.clone())),
        (
            "vm-state-size".to_string(),
            Json::U64(snapshot.vm_state_size),
        ),
        ("date-sec".to_string(), Json::U64(snapshot.date_sec)),
        ("date-nsec".to_string(), Json::U64(snapshot.date_nsec)),
        (
            "vm-clock-sec".to_string(),
            Json::U64(snapshot.vm_clock_nsec / 1_000_000_000),
        ),
        (
            "vm-clock-nsec".to_string(),
            Json::U64(snapshot.vm_clock_nsec % 1_000_000_000),
        ),
    ];
    if let Some(icount) = snapshot.icount {
        m.push(("icount".to_string(), Json::U64(icount)));
    }
    Json::Map(m)
}

/// Pads `s` with spaces to `width` bytes, on the right (`left_align`, C's `%-Ns`) or on the left (`%Ns`).
/// C counts bytes, not characters, and so does this.
fn pad(s: &str, width: usize, left_align: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(s.len()));
    if left_align {
        format!("{s}{fill}")
    } else {
        format!("{fill}{s}")
    }
}

/// One line of qemu's snapshot table (`bdrv_snapshot_dump`'s `%-7s %-16s %8s %19s %15s %10s`), without the
/// newline.
fn snapshot_columns(
    id: &str,
    tag: &str,
    size: &str,
    date: &str,
    clock: &str,
    icount: &str,
) -> String {
    format!(
        "{} {} {} {} {} {}",
        pad(id, 7, true),
        pad(tag, 16, true),
        pad(size, 8, false),
        pad(date, 19, false),
        pad(clock, 15, false),
        pad(icount, 10, false)
    )
}

/// qemu's `Snapshot list:` block (`info` and `snapshot -l`): the title, the header and a row per snapshot;
/// nothing when there are none.
pub fn snapshot_list(snapshots: &[SnapshotInfo]) -> String {
    if snapshots.is_empty() {
        return String::new();
    }
    let mut out = String::from("Snapshot list:\n");
    out.push_str(&snapshot_table_header());
    out.push('\n');
    for snapshot in snapshots {
        out.push_str(&snapshot_table_row(snapshot));
        out.push('\n');
    }
    out
}

/// The snapshot table's header line, as `qemu-img info` and `qemu-img snapshot -l` print it.
pub fn snapshot_table_header() -> String {
    snapshot_columns("ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT")
}

/// One snapshot's line of the table: the date in local time, the VM clock as `hhhh:mm:ss.mmm`.
pub fn snapshot_table_row(snapshot: &SnapshotInfo) -> String {
    let nsec = snapshot.vm_clock_nsec;
    let secs = nsec / 1_000_000_000;
    // C's `(int)` casts of int64 quotients.
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        (secs / 3600) as i32,
        ((secs / 60) % 60) as i32,
        (secs % 60) as i32,
        ((nsec / 1_000_000) % 1000) as i32
    );
    // qemu prints the icount with PRId64, and `--` when the image records none.
    let icount = snapshot
        .icount
        .map_or_else(|| "--".to_string(), |n| (n as i64).to_string());
    snapshot_columns(
        &snapshot.id,
        &snapshot.name,
        &size_to_str(snapshot.vm_state_size),
        &local_date_time(snapshot.date_sec),
        &clock,
        &icount,
    )
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS` in the local time zone (`TZ`, else
/// `/etc/localtime`), as glib's `g_date_time_format` gives it to qemu; empty if the C library cannot convert.
pub fn local_date_time(secs: u64) -> String {
    let Ok(time) = libc::time_t::try_from(secs) else {
        return String::new();
    };
    // SAFETY: `libc::tm` is plain integers and a nullable pointer (`tm_zone`): all zeros is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `localtime_r` reads `time` and writes only the `tm` passed, both live for the call; it loads the
    // time zone (from `TZ`, which this program never modifies, or `/etc/localtime`) on first use, as `tzset`.
    let converted = unsafe { libc::localtime_r(&time, &mut tm) };
    if converted.is_null() {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// C's `%.{precision}g` for a finite non-negative number.
pub fn format_g(value: f64, precision: usize) -> String {
    if value == 0.0 || !value.is_finite() {
        return "0".to_string();
    }
    let precision = precision.max(1);
    let sci = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            strip_fraction_zeros(mantissa),
            exponent.abs()
        )
    } else {
        let decimals = (precision as i32 - 1 - exponent).max(0) as usize;
        strip_fraction_zeros(&format!("{value:.decimals$}")).to_string()
    }
}

fn strip_fraction_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// qemu's `size_to_str`: `16 MiB`, `608 KiB`, `1.5 GiB`, `0 B`.
pub fn size_to_str(value: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let scaled = value as f64 / (1000.0 / 1024.0);
    // frexp's exponent: scaled = m * 2^e with m in [0.5, 1).
    let exponent = if scaled == 0.0 {
        0
    } else {
        ((scaled.to_bits() >> 52) & 0x7ff) as i32 - 1022
    };
    let i = ((exponent - 1) / 10).clamp(0, 6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g(value as f64 / div, 3), SUFFIXES[i])
}

/// C's `%#x`: `0` for zero, `0x1f` otherwise.
pub fn hex_alt(value: u64) -> String {
    if value == 0 {
        "0".to_string()
    } else {
        format!("{value:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(622_592), "608 KiB");
        assert_eq!(size_to_str(16 << 20), "16 MiB");
        assert_eq!(size_to_str(1_610_612_736), "1.5 GiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(197_120), "192 KiB");
    }

    #[test]
    fn compact_json_is_qemus_json_image_name() {
        // qemu-img 10.0.2 `info --image-opts driver=qcow2,file.filename=enc.qcow2,encrypt.key-secret=sec0`.
        let name = Json::Map(vec![
            ("encrypt.key-secret".into(), Json::Str("sec0".into())),
            ("driver".into(), Json::Str("qcow2".into())),
            (
                "file".into(),
                Json::Map(vec![
                    ("driver".into(), Json::Str("file".into())),
                    ("filename".into(), Json::Str("enc.qcow2".into())),
                ]),
            ),
        ]);
        assert_eq!(
            to_json_compact(&name),
            r#"{"encrypt.key-secret": "sec0", "driver": "qcow2", "file": {"driver": "file", "filename": "enc.qcow2"}}"#
        );
    }

    #[test]
    fn qdict_order_matches_qemu_info() {
        let keys = [
            "filename",
            "format",
            "dirty-flag",
            "actual-size",
            "virtual-size",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "format-specific",
            "children",
        ];
        let entries: Vec<(String, Json)> = keys
            .iter()
            .map(|k| (k.to_string(), Json::Bool(true)))
            .collect();
        let order: Vec<&str> = qdict_order(&entries)
            .into_iter()
            .map(|e| e.0.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "children",
                "backing-filename-format",
                "virtual-size",
                "filename",
                "cluster-size",
                "format",
                "actual-size",
                "format-specific",
                "full-backing-filename",
                "backing-filename",
                "dirty-flag"
            ]
        );
    }

    #[test]
    fn json_pretty_prints_empty_containers_like_qemu() {
        let v = Json::Map(vec![
            ("children".into(), Json::List(vec![])),
            ("data".into(), Json::Map(vec![])),
            ("name".into(), Json::Str("a\"é".into())),
        ]);
        assert_eq!(
            to_json_pretty(&v),
            "{\n    \"name\": \"a\\\"\\u00E9\",\n    \"children\": [\n    ],\n    \"data\": {\n    }\n}"
        );
    }

    #[test]
    fn snapshot_table_lines_have_qemus_columns() {
        assert_eq!(
            snapshot_table_header(),
            "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"
        );
        let snapshot = SnapshotInfo {
            id: "1".into(),
            name: "é".into(),
            vm_state_size: 1 << 20,
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 3_723_456_000_000,
            icount: None,
        };
        let row = snapshot_table_row(&snapshot);
        // Padding counts bytes, as C's printf: "é" is two.
        assert!(
            row.starts_with("1       é                  1 MiB "),
            "{row}"
        );
        assert!(row.ends_with(" 0001:02:03.456         --"), "{row}");
        // Then the date: 19 characters of local time.
        assert_eq!(row.len(), 34 + 19 + 27, "{row}");
        let json = snapshot_json(&SnapshotInfo {
            icount: Some(5),
            ..snapshot
        });
        let Json::Map(entries) = json else {
            panic!("a map")
        };
        assert!(entries.contains(&("vm-clock-sec".to_string(), Json::U64(3723))));
        assert!(entries.contains(&("vm-clock-nsec".to_string(), Json::U64(456_000_000))));
        assert!(entries.contains(&("icount".to_string(), Json::U64(5))));
    }

    #[test]
    fn g_format() {
        assert_eq!(format_g(999.7, 3), "1e+03");
        assert_eq!(format_g(16.0, 3), "16");
        assert_eq!(format_g(0.0001234, 3), "0.000123");
    }
}
