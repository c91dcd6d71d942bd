//! Replaying a fuzz corpus (`fuzz/corpus/<target>`) through its harness, so inputs that once crashed stay fixed
//! without running the fuzzer.

use std::path::{Path, PathBuf};

/// The corpus directory of the fuzz target `target`: `fuzz/corpus/<target>` in the workspace.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `harness` on every input of the corpus of `target`, and asserts there were at least `min_inputs`.
pub fn replay_corpus(target: &str, min_inputs: usize, harness: impl Fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        harness(&data);
        replayed += 1;
    }
    assert!(
        replayed >= min_inputs,
        "the corpus at {} is missing",
        dir.display()
    );
}
