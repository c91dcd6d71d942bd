//! qemu-img convert's sparse detection (`-S`): which sectors of a buffer to write and which to leave as holes,
//! with qemu's `is_allocated_sectors_min` rules.

use blk_core::Result;

use super::invalid;
use super::scan::{is_zero, SECTOR};

/// qemu-img's default `-S`: 8 sectors.
pub const DEFAULT_SPARSE: u64 = 4096;
/// qemu-img's largest `-S`: 32768 sectors.
pub const MAX_SPARSE: u64 = 16 << 20;

fn sector(buf: &[u8], i: usize) -> &[u8] {
    let start = (i * SECTOR).min(buf.len());
    &buf[start..((i + 1) * SECTOR).min(buf.len())]
}

/// qemu-img's `is_allocated_sectors`: whether the first of `n` sectors of `buf` holds data, and how many
/// sectors share its status, with run ends aligned to `alignment` sectors (data rounds up, zeros down).
fn allocated_sectors(buf: &[u8], n: usize, sector_num: u64, alignment: u64) -> (bool, usize) {
    if n == 0 {
        return (false, 0);
    }
    let mut zero = is_zero(sector(buf, 0));
    let mut i = 1;
    while i < n && is_zero(sector(buf, i)) == zero {
        i += 1;
    }
    if i == n {
        return (!zero, i);
    }
    let tail = ((sector_num + i as u64) % alignment) as usize;
    if tail != 0 {
        if zero && i <= tail {
            zero = false;
        }
        if zero {
            i -= tail;
        } else {
            i = (i + alignment as usize - tail).min(n);
        }
    }
    (!zero, i)
}

/// qemu-img's `is_allocated_sectors_min`: like [`allocated_sectors`], but a data run swallows zero runs
/// shorter than `min` sectors, so short holes do not split writes.
pub fn allocated_sectors_min(
    buf: &[u8],
    n: usize,
    min: usize,
    sector_num: u64,
    alignment: u64,
) -> (bool, usize) {
    let min = min.min(n);
    let (allocated, first) = allocated_sectors(buf, n, sector_num, alignment);
    if !allocated {
        return (false, first);
    }
    let mut used = first;
    let mut checked = first;
    while checked < n {
        let (allocated, run) = allocated_sectors(
            &buf[checked * SECTOR..],
            n - checked,
            sector_num + checked as u64,
            alignment,
        );
        checked += run;
        if allocated {
            used = checked;
        } else if run >= min {
            break;
        }
    }
    (true, used)
}

/// Parses `-S` as qemu-img does.
pub fn parse_sparse(text: Option<&str>) -> Result<u64> {
    let Some(text) = text else {
        return Ok(DEFAULT_SPARSE);
    };
    match blk_factory::parse_size(text) {
        Ok(n) if n % SECTOR as u64 == 0 && n <= MAX_SPARSE => Ok(n),
        _ => Err(invalid(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE}. \
             Select 0 to disable sparse detection (fully allocates output)."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(buf: &[u8], min: usize, alignment: u64) -> Vec<(bool, usize)> {
        let sectors = buf.len().div_ceil(SECTOR);
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < sectors {
            let (a, n) = allocated_sectors_min(
                &buf[pos * SECTOR..],
                sectors - pos,
                min,
                pos as u64,
                alignment,
            );
            assert!(n > 0);
            out.push((a, n));
            pos += n;
        }
        out
    }

    #[test]
    fn sparse_runs_follow_qemu() {
        // 16 sectors: data, 2 zero, data, 10 zero, data (sector 15).
        let mut buf = vec![0u8; 16 * SECTOR];
        for s in [0usize, 3, 15] {
            buf[s * SECTOR] = 1;
        }
        assert_eq!(runs(&buf, 8, 1), vec![(true, 4), (false, 11), (true, 1)]);
        // A leading zero run is sparse whatever its length.
        let mut buf = vec![0u8; 4 * SECTOR];
        buf[SECTOR] = 1;
        assert_eq!(runs(&buf, 8, 1), vec![(false, 1), (true, 1), (false, 2)]);
        // Alignment 8: data ends round up, zero runs start aligned.
        let mut buf = vec![0u8; 32 * SECTOR];
        buf[0] = 1;
        assert_eq!(runs(&buf, 8, 8), vec![(true, 8), (false, 24)]);
        // A partial last sector.
        let buf = vec![7u8; 1000];
        assert_eq!(runs(&buf, 8, 8), vec![(true, 2)]);
    }

    #[test]
    fn sparse_sizes() {
        assert_eq!(parse_sparse(None).unwrap(), 4096);
        assert_eq!(parse_sparse(Some("0")).unwrap(), 0);
        assert_eq!(parse_sparse(Some("1k")).unwrap(), 1024);
        assert!(parse_sparse(Some("1000")).is_err());
        assert!(parse_sparse(Some("32M")).is_err());
    }
}
