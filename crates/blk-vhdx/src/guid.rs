//! GUIDs as VHDX stores them (MS-VHDX 1.1 "GUID"): 16 bytes, the first three fields little-endian.

use std::fmt;
use std::io::Read;

/// A GUID in its on-disk (binary, mixed-endian) form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A GUID from its textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// Whether this is the zero GUID.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A new random (version 4) GUID, from the kernel's random source; when that cannot be read, from the
    /// standard library's randomly seeded hasher mixed with the time and a counter.
    pub fn random() -> Guid {
        let mut bytes = [0u8; 16];
        let from_kernel = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .is_ok();
        if !from_kernel {
            bytes = fallback_random();
        }
        // Version 4, RFC 4122 variant (bytes 7 and 8 of the binary form).
        bytes[7] = (bytes[7] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Guid(bytes)
    }

    /// Parses the braced form of the parent locator (`{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}`, either case,
    /// braces optional).
    pub fn parse(text: &str) -> Option<Guid> {
        let text = text.trim();
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let parts: Vec<&str> = text.split('-').collect();
        let [p1, p2, p3, p4, p5] = parts.as_slice() else {
            return None;
        };
        if p1.len() != 8 || p2.len() != 4 || p3.len() != 4 || p4.len() != 4 || p5.len() != 12 {
            return None;
        }
        let d1 = u32::from_str_radix(p1, 16).ok()?;
        let d2 = u16::from_str_radix(p2, 16).ok()?;
        let d3 = u16::from_str_radix(p3, 16).ok()?;
        let tail = format!("{p4}{p5}");
        let mut d4 = [0u8; 8];
        for (i, byte) in d4.iter_mut().enumerate() {
            let pair = tail.get(i * 2..i * 2 + 2)?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }

    /// The braced lower-case text form the parent locator stores.
    pub fn braced(&self) -> String {
        format!("{{{self}}}")
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let d2 = u16::from_le_bytes([b[4], b[5]]);
        let d3 = u16::from_le_bytes([b[6], b[7]]);
        write!(
            f,
            "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// 16 bytes that differ between calls and processes without a kernel random source.
fn fallback_random() -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_guid_has_the_spec_binary_form() {
        // MS-VHDX 2.2.3.2: the BAT region GUID 2DC27766-F623-4200-9D64-115E9BFD4A08.
        let bat = Guid::from_fields(
            0x2DC2_7766,
            0xF623,
            0x4200,
            [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
        );
        assert_eq!(
            bat.0,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
        assert_eq!(bat.braced(), "{2dc27766-f623-4200-9d64-115e9bfd4a08}");
        assert_eq!(
            Guid::parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}"),
            Some(bat)
        );
        assert_eq!(
            Guid::parse("2dc27766-f623-4200-9d64-115e9bfd4a08"),
            Some(bat)
        );
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64}"), None);
        assert_eq!(Guid::parse("{zzc27766-f623-4200-9d64-115e9bfd4a08}"), None);
    }

    #[test]
    fn random_guids_differ_and_are_version_4() {
        let a = Guid::random();
        let b = Guid::random();
        assert_ne!(a, b);
        assert_eq!(a.0[7] >> 4, 4);
        assert!(!a.is_zero());
    }
}
