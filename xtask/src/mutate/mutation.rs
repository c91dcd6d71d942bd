//! Seeded mutations of an image file's bytes: bit flips, interesting values and copied runs, mostly where the
//! metadata lives; then, often, the checksums that would refuse the image outright are made right again
//! (VHD's footer and dynamic header, VHDX's headers and region tables), so the mutant reaches deeper code.

use crate::campaign::Rng;

/// The file's format, for where its metadata is and which checksums to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// QCOW2: no checksums; metadata in the first clusters.
    Qcow2,
    /// VHD: footer at the end (and its copy at 0), dynamic header at 512.
    Vhd,
    /// VHDX: headers at 64 KiB and 128 KiB, region tables at 192 KiB and 256 KiB.
    Vhdx,
}

/// Values that often sit on a parser's edge.
fn interesting(rng: &mut Rng, file_len: u64) -> u64 {
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => 0x8000_0000,
        4 => 0x7fff_ffff,
        5 => file_len,
        6 => file_len + 512,
        7 => rng.below(file_len.max(1)),
        8 => 1 << 56,
        9 => 0xffff_ffff,
        10 => 1 << rng.below(64),
        _ => rng.next_u64(),
    }
}

fn be(data: &[u8], at: usize, width: usize) -> u64 {
    data.get(at..at + width)
        .map_or(0, |b| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)))
}

/// The byte ranges holding `layout`'s metadata in `data` (headers, tables, the first L2 tables and refcount
/// blocks), as far as they can be read; ranges are clipped to the file.
pub fn hotspots(data: &[u8], layout: Layout) -> Vec<(usize, usize)> {
    let mut spots = Vec::new();
    match layout {
        Layout::Qcow2 => {
            spots.push((0, 512));
            let cluster = 1usize << be(data, 20, 4).clamp(9, 21);
            let l1 = be(data, 40, 8) as usize;
            let l1_len = (be(data, 36, 4) as usize * 8).min(1 << 20);
            let rt = be(data, 48, 8) as usize;
            let rt_len = (be(data, 56, 4) as usize * cluster).min(1 << 20);
            spots.push((l1, l1_len.max(8)));
            spots.push((rt, rt_len.clamp(8, 4096)));
            spots.push((be(data, 64, 8) as usize, 4096));
            for (table, len) in [(l1, l1_len), (rt, rt_len)] {
                for i in 0..(len / 8).min(4) {
                    let entry = be(data, table + 8 * i, 8) & 0x00ff_ffff_ffff_fe00;
                    if entry != 0 {
                        spots.push((entry as usize, cluster.min(4096)));
                    }
                }
            }
        }
        Layout::Vhd => {
            spots.push((data.len().saturating_sub(512), 512));
            spots.push((0, 1536));
            spots.push((be(data, 512 + 16, 8) as usize, 512));
        }
        Layout::Vhdx => {
            // qemu-img's layout: headers, region tables, log, BAT, metadata table and its values.
            for at in [64 << 10, 128 << 10, 192 << 10, 256 << 10] {
                spots.push((at, 80));
            }
            spots.push((1 << 20, 4096));
            spots.push((2 << 20, 64));
            spots.push((3 << 20, 224));
            spots.push(((3 << 20) + (64 << 10), 64));
        }
    }
    spots
        .into_iter()
        .filter(|&(at, len)| at < data.len() && len > 0)
        .map(|(at, len)| (at, len.min(data.len() - at)))
        .collect()
}

/// Where a mutation lands: mostly in the metadata (`spots`), else the first 64 KiB, the first 4 MiB, the
/// last 4 KiB or anywhere.
fn offset(rng: &mut Rng, len: usize, spots: &[(usize, usize)]) -> usize {
    if !spots.is_empty() && rng.chance(60) {
        let (at, n) = *rng.pick(spots);
        return at + rng.below(n as u64) as usize;
    }
    let len = len as u64;
    let at = match rng.below(100) {
        0..=39 => rng.below(len.min(64 << 10)),
        40..=69 => rng.below(len.min(4 << 20)),
        70..=84 => len - 1 - rng.below(len.min(4 << 10)),
        _ => rng.below(len),
    };
    at as usize
}

/// Mutates `data` (1 to 4 changes) and, with `fix_checksums`, recomputes the checksums of `layout`.
/// Returns a one-line description of what changed.
pub fn mutate(data: &mut [u8], layout: Layout, rng: &mut Rng, fix_checksums: bool) -> String {
    if data.is_empty() {
        return "empty file".into();
    }
    let mut what = Vec::new();
    let spots = hotspots(data, layout);
    for _ in 0..1 + rng.below(4) {
        let at = offset(rng, data.len(), &spots);
        match rng.below(10) {
            0..=3 => {
                let bit = rng.below(8);
                data[at] ^= 1 << bit;
                what.push(format!("flip {at}:{bit}"));
            }
            4..=5 => {
                let v = *rng.pick(&[0u8, 0xff, 0x80, 0x7f, 1]);
                data[at] = v;
                what.push(format!("byte {at}={v:#x}"));
            }
            6..=8 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                let at = at.min(data.len().saturating_sub(width));
                let value = interesting(rng, data.len() as u64);
                let big = rng.chance(70);
                let bytes = if big {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let bytes = if big {
                    &bytes[8 - width..]
                } else {
                    &bytes[..width]
                };
                let end = (at + width).min(data.len());
                data[at..end].copy_from_slice(&bytes[..end - at]);
                let shown = if width == 8 {
                    value
                } else {
                    value & ((1u64 << (width * 8)) - 1)
                };
                what.push(format!(
                    "u{}{} {at}={shown:#x}",
                    width * 8,
                    if big { "be" } else { "le" }
                ));
            }
            _ => {
                let n = (8 + rng.below(57)) as usize;
                let from = offset(rng, data.len(), &spots);
                let n = n.min(data.len() - at).min(data.len() - from);
                data.copy_within(from..from + n, at);
                what.push(format!("copy {from}->{at}+{n}"));
            }
        }
    }
    if fix_checksums {
        fix(data, layout);
        what.push("checksums fixed".into());
    }
    what.join(", ")
}

/// Recomputes the checksums `layout` has, where the structure is present.
pub fn fix(data: &mut [u8], layout: Layout) {
    match layout {
        Layout::Qcow2 => {}
        Layout::Vhd => {
            let len = data.len();
            if len >= 512 {
                vhd_checksum(&mut data[len - 512..], 64);
            }
            if len >= 1024 + 512 && &data[..8] == b"conectix" {
                vhd_checksum(&mut data[..512], 64);
            }
            if len >= 1536 && &data[512..520] == b"cxsparse" {
                vhd_checksum(&mut data[512..1536], 36);
            }
        }
        Layout::Vhdx => {
            for header in [64 << 10, 128 << 10] {
                crc_at(data, header, 4 << 10);
            }
            for table in [192 << 10, 256 << 10] {
                crc_at(data, table, 64 << 10);
            }
        }
    }
}

/// VHD's checksum: the one's complement of the byte sum, big-endian at `field`, the field counted as zeros.
fn vhd_checksum(block: &mut [u8], field: usize) {
    block[field..field + 4].fill(0);
    let sum = block
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    block[field..field + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// VHDX's checksum: CRC-32C of `len` bytes at `at`, little-endian at `at + 4`, the field counted as zeros.
fn crc_at(data: &mut [u8], at: usize, len: usize) {
    if data.len() < at + len {
        return;
    }
    data[at + 4..at + 8].fill(0);
    let crc = crc32c(&data[at..at + len]);
    data[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32C (Castagnoli), bitwise: the campaign checksums a few KiB per mutant.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn mutations_are_seeded_and_change_something() {
        let base = vec![0u8; 1 << 20];
        let mut a = base.clone();
        let mut b = base.clone();
        let da = mutate(&mut a, Layout::Qcow2, &mut Rng::new(3), false);
        let db = mutate(&mut b, Layout::Qcow2, &mut Rng::new(3), false);
        assert_eq!((a.clone(), da), (b, db));
    }

    #[test]
    fn qcow2_hotspots_follow_the_header() {
        let mut data = vec![0u8; 1 << 20];
        data[20..24].copy_from_slice(&16u32.to_be_bytes());
        data[36..40].copy_from_slice(&1u32.to_be_bytes());
        data[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        data[(3 << 16)..(3 << 16) + 8]
            .copy_from_slice(&(0x8000_0000_0000_0000u64 | 4 << 16).to_be_bytes());
        let spots = hotspots(&data, Layout::Qcow2);
        assert!(spots.contains(&(3 << 16, 8)));
        assert!(spots.contains(&(4 << 16, 4096)));
    }

    #[test]
    fn vhd_checksums_are_fixed() {
        let mut footer = vec![0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        vhd_checksum(&mut footer, 64);
        let sum: u32 = footer[..64]
            .iter()
            .chain(&footer[68..])
            .map(|&b| u32::from(b))
            .sum();
        assert_eq!(
            u32::from_be_bytes([footer[64], footer[65], footer[66], footer[67]]),
            !sum
        );
    }
}
