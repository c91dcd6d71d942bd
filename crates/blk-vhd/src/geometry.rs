//! Disk geometry (CHS) and the virtual size, exactly as QEMU's `block/vpc.c` derives them.
//!
//! VHD spec, "Hard Disk Footer Format", field *Disk Geometry*, and its appendix "CHS Calculation": a disk's
//! geometry is computed from its sector count; Virtual PC shows the guest `C * H * S` sectors, while Hyper-V,
//! disk2vhd, XenServer and QEMU's `force_size` images use the footer's *Current Size*.

use crate::footer::Footer;

/// Sectors of the largest geometry the VHD spec allows (65535 cylinders, 16 heads, 255 sectors per track).
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// QEMU's size limit for VHD images, in 512-byte sectors: 2040 GiB.
pub const MAX_SECTORS: u64 = 0xff00_0000;

/// The largest virtual size, in bytes (2040 GiB).
pub const MAX_SIZE: u64 = MAX_SECTORS * 512;

/// A CHS geometry as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The largest geometry, which QEMU's `force_size=on` writes (and which makes readers use the footer's size).
    pub const MAX: Geometry = Geometry {
        cylinders: 65535,
        heads: 16,
        sectors_per_track: 255,
    };

    /// `C * H * S`.
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// The spec's CHS calculation (appendix "CHS Calculation"), as QEMU's `calculate_geometry` writes it.
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(MAX_GEOMETRY_SECTORS);
        let (spt, heads, cyls_times_heads) = if total >= 65535 * 16 * 63 {
            (255u64, 16u64, total / 255)
        } else {
            let mut spt = 17u64;
            let mut cth = total / spt;
            let mut heads = cth.div_ceil(1024).max(4);
            if cth >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cth = total / spt;
            }
            if cth >= heads * 1024 {
                spt = 63;
                heads = 16;
                cth = total / spt;
            }
            (spt, heads, cth)
        };
        // total <= 65535*16*255, so cyls_times_heads / heads <= 65535 and heads <= 16, spt <= 255: the casts
        // cannot truncate.
        Geometry {
            cylinders: (cyls_times_heads / heads) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    /// What `qemu-img create -f vpc` does with a requested size: the smallest CHS geometry holding at least
    /// `size` bytes (rounded up to sectors), and the resulting sector count. When that is the maximum geometry
    /// the size itself is used (in whole sectors). `None` when the size exceeds 2040 GiB.
    pub fn rounded_for_size(size: u64, force_size: bool) -> Option<(Geometry, u64)> {
        // qemu-img first rounds the size up to whole sectors.
        let size = size.checked_next_multiple_of(512)?;
        let geometry = if force_size {
            Geometry::MAX
        } else {
            let wanted = (size / 512).min(MAX_GEOMETRY_SECTORS);
            let mut geometry = Geometry {
                cylinders: 0,
                heads: 0,
                sectors_per_track: 0,
            };
            let mut i = 0;
            while wanted > geometry.sectors() {
                geometry = Geometry::for_sectors(wanted + i);
                i += 1;
            }
            geometry
        };
        let sectors = if geometry.sectors() == MAX_GEOMETRY_SECTORS {
            size / 512
        } else {
            geometry.sectors()
        };
        (sectors <= MAX_SECTORS).then_some((geometry, sectors))
    }
}

/// Whether QEMU takes the virtual size from the footer's *Current Size* rather than from the geometry, by the
/// creator application (`win ` Hyper-V, `qem2` QEMU force_size, `d2v ` disk2vhd, `CTXS` XenConverter, `tap\0`
/// XenServer) or because the geometry is the maximum one.
pub fn uses_current_size(footer: &Footer) -> bool {
    let app = &footer.creator_app;
    matches!(app, b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0")
        || footer.geometry().sectors() == MAX_GEOMETRY_SECTORS
}

/// The guest-visible size in sectors as QEMU's `vpc_open` computes it (not yet checked against the cap).
pub fn virtual_sectors(footer: &Footer) -> u64 {
    if uses_current_size(footer) {
        footer.current_size.get() / 512
    } else {
        footer.geometry().sectors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_rounding() {
        // qemu-img create -f vpc x 1G -> 1073995776 bytes
        let (g, s) = Geometry::rounded_for_size(1 << 30, false).unwrap();
        assert_eq!(s * 512, 1_073_995_776);
        assert_eq!(g.sectors(), s);
        // 10M -> 10514432
        assert_eq!(
            Geometry::rounded_for_size(10 << 20, false).unwrap().1 * 512,
            10_514_432
        );
        let (g, s) = Geometry::rounded_for_size(10 << 20, true).unwrap();
        assert_eq!((g, s * 512), (Geometry::MAX, 10 << 20));
        assert!(Geometry::rounded_for_size(2041 << 30, true).is_none());
        assert!(Geometry::rounded_for_size(3000 << 30, false).is_none());
        assert_eq!(Geometry::rounded_for_size(0, false).unwrap().1, 0);
    }
}
