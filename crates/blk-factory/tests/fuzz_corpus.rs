//! Replays every input of the `open_image` fuzz corpus (`fuzz/corpus/open_image`) through the fuzz harness,
//! so inputs that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/open_image.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn open_image_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/open_image");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        harness::open_image(&data);
        replayed += 1;
    }
    assert!(replayed >= 5, "the corpus at {} is missing", dir.display());
}
