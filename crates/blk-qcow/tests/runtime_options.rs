//! QCOW2's runtime options through the format descriptor (`OpenOptions::runtime_option`): `l2-cache-size`
//! reaches `Qcow2OpenOptions::l2_cache_size` with QEMU's rules, `overlap-check=none` reaches the overlap check,
//! and names or values QEMU refuses are refused with its messages.

use std::sync::Arc;

use blk_core::{DenyNamedImages, HostOpenOptions, OpenOptions};
use blk_qcow::{OverlapCheck, Qcow2CreateOptions, Qcow2OpenOptions, DEFAULT_L2_CACHE_SIZE, FORMAT};

fn pairs(given: &[(&str, &str)]) -> Vec<(String, String)> {
    given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn applied(given: &[(&str, &str)]) -> blk_core::Result<Qcow2OpenOptions> {
    let mut options = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    options.apply_runtime_options(&pairs(given), Some(65536))?;
    Ok(options)
}

#[test]
fn cache_sizes_follow_qemu_rules() {
    assert_eq!(applied(&[]).unwrap().l2_cache_size, DEFAULT_L2_CACHE_SIZE);
    assert_eq!(
        applied(&[("l2-cache-size", "1M")]).unwrap().l2_cache_size,
        1 << 20
    );
    // cache-size alone: all but the refcount cache's minimum of 4 clusters.
    assert_eq!(
        applied(&[("cache-size", "4M")]).unwrap().l2_cache_size,
        (4 << 20) - 4 * 65536
    );
    assert_eq!(
        applied(&[("cache-size", "4M"), ("refcount-cache-size", "1M")])
            .unwrap()
            .l2_cache_size,
        3 << 20
    );
    assert_eq!(
        applied(&[("cache-size", "4M"), ("l2-cache-size", "1M")])
            .unwrap()
            .l2_cache_size,
        1 << 20
    );
    assert_eq!(
        applied(&[("overlap-check", "none")]).unwrap().overlap_check,
        OverlapCheck::None
    );
    for (given, message) in [
        (
            &[("cache-size", "1M"), ("l2-cache-size", "2M")][..],
            "l2-cache-size may not exceed cache-size",
        ),
        (
            &[("l2-cache-entry-size", "128k")][..],
            "L2 cache entry size must be a power of two between 512 and the cluster size (65536)",
        ),
        (
            &[("overlap-check", "some")][..],
            "Unsupported value 'some' for qcow2 option 'overlap-check'",
        ),
        (
            &[("pass-discard-other", "on")][..],
            "blk supports only pass-discard-other=off",
        ),
        (
            &[("pass-discard-request", "maybe")][..],
            "Parameter 'pass-discard-request' expects 'on' or 'off'",
        ),
        (
            &[("discard-unknown", "on")][..],
            "Block format 'qcow2' does not support the option 'discard-unknown'",
        ),
    ] {
        let err = applied(given).unwrap_err();
        assert!(err.message().contains(message), "{given:?}: {err}");
    }
}

#[test]
fn the_descriptor_passes_runtime_options_to_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    let create = Qcow2CreateOptions {
        size: Some(8 << 20),
        ..Qcow2CreateOptions::default()
    };
    blk_qcow::Qcow2::create(&path, &create, &DenyNamedImages).unwrap();
    let host = HostOpenOptions::default();
    // The smallest L2 cache (2 tables): data written across several L2 tables reads back.
    let options = OpenOptions::new(host)
        .runtime_option("l2-cache-size", "0")
        .runtime_option("overlap-check", "all");
    let opened = FORMAT.open(&path, &options).unwrap();
    let disk = opened.disk;
    let cluster = vec![0x5au8; 65536];
    for i in 0..8u64 {
        disk.write_all_at(i << 20, &cluster).unwrap();
    }
    let mut back = vec![0u8; 65536];
    for i in 0..8u64 {
        disk.read_exact_at(i << 20, &mut back).unwrap();
        assert_eq!(back, cluster);
    }
    drop(disk);
    drop(opened.admin);
    // `overlap-check=none` reaches the check: nothing counts as metadata, not even the header.
    let none = applied(&[("overlap-check", "none")]).unwrap();
    let image = blk_qcow::Qcow2::open(&path, &none).unwrap();
    assert_eq!(image.metadata_overlap(0, 512), None);
    drop(image);
    let cached = applied(&[("overlap-check", "cached")]).unwrap();
    let image = blk_qcow::Qcow2::open(&path, &cached).unwrap();
    assert_eq!(image.metadata_overlap(0, 512), Some("qcow2_header"));
    drop(image);
    for bad in [("overlap-check", "x"), ("bogus", "1")] {
        let options = OpenOptions::new(host).runtime_option(bad.0, bad.1);
        assert!(FORMAT.open(&path, &options).is_err(), "{bad:?}");
    }
}
