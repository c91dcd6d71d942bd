//! Replays every input of the `luks_header` fuzz corpus (`fuzz/corpus/luks_header`) through the fuzz harness,
//! and checks that its sample header opens with the harness's password (so the corpus reaches the unlock).

#[path = "../../../fuzz/src/luks_header.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn luks_header_corpus_replays() {
    blk_test_support::replay_corpus("luks_header", 4, harness::luks_header);
}

#[test]
fn the_sample_header_unlocks() {
    let data =
        std::fs::read(blk_test_support::corpus_dir("luks_header").join("aes-128-cbc.bin")).unwrap();
    let (length, area) = data.split_at(8);
    let area_len = u64::from_be_bytes(length.try_into().unwrap());
    assert!(blk_qcow::try_unlock_luks_area(area, area_len, b"fuzz", 1000).unwrap());
    assert!(!blk_qcow::try_unlock_luks_area(area, area_len, b"fuzZ", 1000).unwrap());
}
