//! Replays every input of the `qcow2_bitmaps` fuzz corpus (`fuzz/corpus/qcow2_bitmaps`) through the fuzz
//! harness, so inputs that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/qcow2_bitmaps.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn qcow2_bitmaps_corpus_replays() {
    assert!(harness::template_is_built());
    blk_test_support::replay_corpus("qcow2_bitmaps", 15, harness::qcow2_bitmaps);
}
