//! Replays every input of the write-path fuzz corpora (`fuzz/corpus/write_qcow2`, `write_vhd`, `write_vhdx`)
//! through their harness, so inputs that once failed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/write_path.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn write_qcow2_corpus_replays() {
    blk_test_support::replay_corpus("write_qcow2", 8, harness::write_qcow2);
}

#[test]
fn write_vhd_corpus_replays() {
    blk_test_support::replay_corpus("write_vhd", 4, harness::write_vhd);
}

#[test]
fn write_vhdx_corpus_replays() {
    blk_test_support::replay_corpus("write_vhdx", 4, harness::write_vhdx);
}
