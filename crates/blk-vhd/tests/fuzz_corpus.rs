//! Replays every input of the `vhd` fuzz corpus (`fuzz/corpus/vhd`) through the fuzz harness, so inputs that
//! once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/vhd.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn vhd_corpus_replays() {
    blk_test_support::replay_corpus("vhd", 10, harness::vhd);
}

/// The corpus's named inputs open, or fail with the kind of error their name says.
#[test]
fn vhd_corpus_outcomes() {
    use blk_core::ErrorKind::*;
    let dir = blk_test_support::corpus_dir("vhd");
    let expected = [
        ("dyn-small", Ok(64 << 10)),
        ("dyn-empty", Ok(64 << 10)),
        ("dyn-chs", Ok(4 * 4 * 7 * 512)),
        ("fixed-small", Ok(64 << 10)),
        ("diff-child", Ok(64 << 10)),
        ("diff-mac", Ok(64 << 10)),
        ("copy-damaged", Ok(64 << 10)),
        ("end-footer-damaged", Ok(64 << 10)),
        ("diff-self-loop", Err(CorruptImage)),
        ("diff-wrong-uuid", Err(CorruptImage)),
        ("diff-bad-locator", Err(CorruptImage)),
        ("bat-overlap", Err(CorruptImage)),
        ("crash-readback-aliased-blocks", Err(CorruptImage)),
        ("bat-past-eof", Err(CorruptImage)),
        ("bat-into-footer", Err(CorruptImage)),
        ("bat-into-header", Err(CorruptImage)),
        ("bat-past-end", Err(CorruptImage)),
        ("block-size-3000", Err(CorruptImage)),
        ("max-entries-huge", Err(CorruptImage)),
        ("footer-bad-checksums", Err(CorruptImage)),
        ("header-bad-checksum", Err(CorruptImage)),
        ("truncated", Err(CorruptImage)),
        ("size-2041g", Err(UnsupportedFeature)),
        ("tiny", Err(InvalidFormat)),
    ];
    for (name, outcome) in expected {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(harness::open_result(&data), Some(outcome), "{name}");
    }
}
