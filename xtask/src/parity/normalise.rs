//! What is allowed to differ between qemu's and blk's output, and nothing more: the twin directory's path,
//! the program name that starts error lines (`qemu-img:`/`qemu-io:` against `blk:`), and measured times
//! (qemu-io's statistics lines, `bench`'s "Run completed in N seconds.", how many `-p` progress updates were
//! printed before the last).

/// The program names error lines start with, replaced by `PROGRAM:`.
const PROGRAM_PREFIXES: [&str; 3] = ["qemu-img: ", "qemu-io: ", "blk: "];

/// Normalises one program's output captured in the twin directory `dir`.
pub fn normalise(text: &str, dir: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.replace(dir, "$DIR").split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        out.push_str(&normalise_line(body));
        out.push_str(end);
    }
    out
}

fn normalise_line(line: &str) -> String {
    if let Some(line) = normalise_progress(line) {
        return line;
    }
    for prefix in PROGRAM_PREFIXES {
        if let Some(rest) = line.strip_prefix(prefix) {
            return format!("PROGRAM: {rest}");
        }
    }
    // qemu-io: "4 KiB, 1 ops; 00.00 sec (39.062 MiB/sec and 10000.0000 ops/sec)".
    if let Some((counts, _)) = line.split_once(" ops; ") {
        if line.ends_with(" ops/sec)") {
            return format!("{counts} ops; TIME");
        }
    }
    // qemu-io's `-C`: "4096,1,0:00:00.00,97565623.362,23819.732" (bytes, ops, time, bytes/s, ops/s).
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() == 5
        && fields[2].contains(':')
        && fields[..2].iter().all(|f| f.parse::<u64>().is_ok())
    {
        return format!("{},{},TIME", fields[0], fields[1]);
    }
    // qemu-img bench: "Run completed in 0.123 seconds."
    if line.starts_with("Run completed in ") && line.ends_with(" seconds.") {
        return "Run completed in TIME seconds.".to_string();
    }
    line.to_string()
}

/// `-p` progress (`    (12.50/100%)\r` repeated, at a pace set by time) shown as the last value reached:
/// `[progress to (100.00/100%)]`.
fn normalise_progress(line: &str) -> Option<String> {
    if !line.contains("/100%)") {
        return None;
    }
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for segment in line.split('\r') {
        let trimmed = segment.trim();
        if trimmed.starts_with('(') && trimmed.ends_with("/100%)") {
            last = Some(trimmed);
            continue;
        }
        if let Some(value) = last.take() {
            out.push_str(&format!("[progress to {value}]"));
        }
        out.push_str(segment);
    }
    if let Some(value) = last {
        out.push_str(&format!("[progress to {value}]"));
    }
    Some(out)
}

/// A line diff of `a` (qemu) against `b` (blk): `-` lines only qemu printed, `+` lines only blk printed,
/// at most `limit` lines of it.
pub fn line_diff(a: &str, b: &str, limit: usize) -> Vec<String> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence; outputs are short (a few hundred lines), longer ones are shown whole.
    if a.len() * b.len() > 4_000_000 {
        let mut out: Vec<String> = a.iter().map(|l| format!("-{l}")).collect();
        out.extend(b.iter().map(|l| format!("+{l}")));
        out.truncate(limit);
        return out;
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while (i < a.len() || j < b.len()) && out.len() < limit {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_paths_and_times() {
        assert_eq!(
            normalise(
                "qemu-img: Could not open '/tmp/x/a': No such file\n",
                "/tmp/x"
            ),
            "PROGRAM: Could not open '$DIR/a': No such file\n"
        );
        assert_eq!(
            normalise("blk: Could not open", "/d"),
            "PROGRAM: Could not open"
        );
        assert_eq!(
            normalise(
                "read 4096/4096 bytes at offset 0\n4 KiB, 1 ops; 00.00 sec (39.062 MiB/sec and 10000.0000 ops/sec)\n",
                "/d"
            ),
            "read 4096/4096 bytes at offset 0\n4 KiB, 1 ops; TIME\n"
        );
        assert_eq!(
            normalise("Run completed in 0.004 seconds.\n", "/d"),
            "Run completed in TIME seconds.\n"
        );
        assert_eq!(
            normalise("4096,1,0:00:00.00,97565623.362,23819.732\n", "/d"),
            "4096,1,TIME\n"
        );
        assert_eq!(
            normalise(
                "    (0.00/100%)\r    (6.25/100%)\r    (100.00/100%)\rImages are identical.\n",
                "/d"
            ),
            "[progress to (100.00/100%)]Images are identical.\n"
        );
        assert_eq!(
            normalise("    (0.00/100%)\r    (100.00/100%)\r\n", "/d"),
            "[progress to (100.00/100%)]\n"
        );
        assert_eq!(normalise("image: a.qcow2\n", "/d"), "image: a.qcow2\n");
    }

    #[test]
    fn diff_shows_only_changed_lines() {
        assert!(line_diff("a\nb\n", "a\nb\n", 10).is_empty());
        assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n", 10), ["-b", "+x"]);
        assert_eq!(line_diff("", "x\ny", 1), ["+x"]);
    }
}
