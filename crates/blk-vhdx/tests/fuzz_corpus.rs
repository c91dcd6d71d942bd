//! Replays every input of the `vhdx` fuzz corpus (`fuzz/corpus/vhdx`) through the fuzz harness, so inputs that
//! once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/vhdx.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn vhdx_corpus_replays() {
    blk_test_support::replay_corpus("vhdx", 10, harness::vhdx);
}
