//! Replays every input of the `vhdx` fuzz corpus (`fuzz/corpus/vhdx`) through the fuzz harness, so inputs that
//! once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/vhdx.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn vhdx_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/vhdx");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        harness::vhdx(&data);
        replayed += 1;
    }
    assert!(replayed >= 10, "the corpus at {} is missing", dir.display());
}
