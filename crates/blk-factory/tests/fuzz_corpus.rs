//! Replays every input of the `open_image` fuzz corpus (`fuzz/corpus/open_image`) through the fuzz harness,
//! so inputs that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/open_image.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn open_image_corpus_replays() {
    blk_test_support::replay_corpus("open_image", 5, harness::open_image);
}
