//! Replays every input of the `qcow2` fuzz corpus (`fuzz/corpus/qcow2`) through the fuzz harness, so inputs
//! that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/qcow2.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn qcow2_corpus_replays() {
    blk_test_support::replay_corpus("qcow2", 20, harness::qcow2);
}
