//! Replays every input of the `vhost_user_blk_request` fuzz corpus (`fuzz/corpus/vhost_user_blk_request`)
//! through the fuzz harness, so inputs that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/vhost_user_blk_request.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn request_corpus_replays() {
    blk_test_support::replay_corpus(
        "vhost_user_blk_request",
        15,
        harness::vhost_user_blk_request,
    );
}
