//! The "standard write pattern" shared by blk-qcow's `qemu_interop` tests and blk's `qcow2_cli` tests (included
//! by both with `#[path]`): a deterministic qemu-io script, the ranges it touches, the image sizes it fits and
//! deterministic guest data.
#![allow(dead_code)]

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The standard write pattern: a deterministic qemu-io script for an image of `size` bytes with clusters of
/// `c` bytes (`size` >= 16 clusters). It writes patterns (`-P`) at aligned and unaligned offsets, zeroes with and
/// without unmap (`write -z`, `write -z -u`) over data and over unallocated clusters, discards aligned and
/// unaligned ranges, rewrites a discarded cluster, crosses an L2-table boundary when one lies inside the image,
/// and writes the unaligned tail of the disk.
pub fn standard_script(c: u64, size: u64) -> Vec<String> {
    assert!(size >= 16 * c, "the standard script needs 16 clusters");
    let mut s = vec![
        format!("write -P 0xa1 0 {}", 3 * c + 512),
        format!("write -P 0xb2 {} {}", 5 * c + 1536, 2 * c),
        format!("write -z {} {}", 2 * c, c),
        format!("write -z {} 1024", 5 * c + 3072),
        format!("write -z -u {} {}", 9 * c, 2 * c),
        format!("write -P 0xc3 {} 1024", 9 * c + 512),
        format!("discard {c} {c}"),
        format!("discard {} {}", 6 * c + 512, c),
        format!("write -P 0xd4 {} {}", 12 * c, c),
        format!("discard {} {}", 12 * c, c),
        format!("write -P 0xe5 {} 512", 12 * c + c / 2),
        format!("write -P 0x5a {} {}", 14 * c - 700, 1400),
    ];
    let l2_span = (c / 8) * c;
    if l2_span + 2 * c < size {
        s.push(format!(
            "write -P 0xf6 {} {}",
            l2_span - c - 512,
            2 * c + 1024
        ));
        s.push(format!("write -z {} 512", l2_span));
        s.push(format!("discard {} {}", l2_span + c, c));
    }
    s.push(format!("write -P 0x97 {} 1536", size - 1536));
    s.push(format!("write -z -u {} 512", size - 1024));
    s.push("flush".to_string());
    s
}

/// The ranges `script` touches, each widened by `margin` bytes on both sides (clamped to `size`).
pub fn touched_windows(script: &[String], margin: u64, size: u64) -> Vec<(u64, u64)> {
    script
        .iter()
        .filter_map(|cmd| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let n = words.len();
            if n < 3 {
                return None;
            }
            let offset: u64 = words[n - 2].parse().ok()?;
            let len: u64 = words[n - 1].parse().ok()?;
            let start = offset.saturating_sub(margin);
            let end = (offset + len + margin).min(size);
            Some((start, end - start))
        })
        .collect()
}

/// The matrix size for a cluster size: at least 4 MiB and 20 clusters, plus an odd tail of three sectors.
pub fn matrix_size(cluster: u64) -> u64 {
    (4 * MIB).max(20 * cluster) + 1536
}

/// Deterministic data that is partly compressible (patterns, zeros) and partly not (xorshift noise).
pub fn mixed_data(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        let block = i / 20_000;
        let byte = match block % 4 {
            0 => (i % 251) as u8,
            1 => 0,
            2 => {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }
            _ => 0x3c,
        };
        out.push(byte);
    }
    out
}

/// A deterministic pseudo-random qemu-io script of `n` requests (writes with patterns, zero writes with and
/// without unmap, discards; offsets and lengths at byte, sector and cluster granularity) inside `size` bytes.
pub fn random_script(seed: u64, n: usize, size: u64, cluster: u64) -> Vec<String> {
    let mut state = seed | 1;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound.max(1)
    };
    let mut script = Vec::with_capacity(n + 1);
    for _ in 0..n {
        let (offset, len) = match next(3) {
            0 => (next(size), 1 + next(3 * cluster)),
            1 => (
                next(size / 512) * 512,
                512 * (1 + next(2 * cluster / 512 + 1)),
            ),
            _ => (next(size / cluster) * cluster, cluster * (1 + next(3))),
        };
        let len = len.min(size - offset).max(1);
        let offset = offset.min(size - len);
        let cmd = match next(6) {
            0..=2 => format!("write -P {} {offset} {len}", 1 + next(255)),
            3 => format!("write -z {offset} {len}"),
            4 => format!("write -z -u {offset} {len}"),
            _ => format!("discard {offset} {len}"),
        };
        script.push(cmd);
    }
    script.push("flush".to_string());
    script
}
