//! Images with extended L2 entries (128-bit entries with subcluster bitmaps), checked and repaired against
//! qemu-img.

use blk_core::{HostOpenOptions, RepairMode};
use blk_qcow::Qcow2OpenOptions;

use crate::inject::{append_leak, layout};
use crate::qemu::{assert_same_as_qemu, exit_class, repair_like_qemu};
use crate::support::{self, opener, qemu_create, qemu_io, read_be, tempdir, write_be};

#[test]
fn extended_l2_images_match_qemu() {
    let _serial = support::serial();
    let dir = tempdir();
    let path = dir.path().join("extl2.qcow2");
    qemu_create(&path, "extended_l2=on,cluster_size=65536", "4M");
    qemu_io(
        "qcow2",
        &path,
        &[
            "write -P 0x11 0 128k",
            "write -P 0x22 1M 4k",
            "write -c -P 0x33 2M 64k",
            "write -z 3M 8k",
        ],
    );
    let host = HostOpenOptions {
        read_only: true,
        ..HostOpenOptions::default()
    };
    if let Err(e) = crate::support::open_disk(&path, &Qcow2OpenOptions::new(host, opener())) {
        // Only while the engine refuses extended L2 entries.
        assert_eq!(e.kind(), blk_core::ErrorKind::UnsupportedFeature, "{e:?}");
        return;
    }
    let report = assert_same_as_qemu(&path);
    assert_eq!(exit_class(&report), 0, "{report:#?}");
    // 128-bit entries: entry 16 is guest 1M; its bitmap gets allocated and zero bits for one subcluster.
    let l = layout(&path);
    let l2 = read_be(&path, l.l1_offset, 8) & 0x00ff_ffff_ffff_fe00;
    let bitmap_at = l2 + 16 * 16 + 8;
    write_be(
        &path,
        bitmap_at,
        8,
        read_be(&path, bitmap_at, 8) | (1 << 32),
    );
    // An unallocated entry (guest 1.5M) with allocation bits.
    write_be(&path, l2 + 24 * 16 + 8, 8, 0xf);
    let report = assert_same_as_qemu(&path);
    assert_eq!(report.corruptions, 2, "{report:#?}");
    // A leak, repaired.
    append_leak(&path, &l);
    assert_same_as_qemu(&path);
    if let Err(e) = crate::support::open_disk(&path, &support::rw()) {
        // Only while the engine opens extended L2 images read-only.
        assert_eq!(e.kind(), blk_core::ErrorKind::UnsupportedFeature, "{e:?}");
        return;
    }
    repair_like_qemu(&path, RepairMode::Leaks);
}
