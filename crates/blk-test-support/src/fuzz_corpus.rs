//! Replaying a fuzz corpus (`fuzz/corpus/<target>`) through its harness, so inputs that once crashed stay fixed
//! without running the fuzzer.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

/// The corpus directory of the fuzz target `target`: `fuzz/corpus/<target>` in the workspace.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `harness` on every input of the corpus of `target` in file-name order, and asserts that it panicked on
/// none (naming the first input it panicked on) and that there were at least `min_inputs`.
pub fn replay_corpus(target: &str, min_inputs: usize, harness: impl Fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| harness(&data)));
        assert!(
            outcome.is_ok(),
            "the harness panicked on {}",
            path.display()
        );
    }
    assert!(
        inputs.len() >= min_inputs,
        "the corpus at {} is missing",
        dir.display()
    );
}
