//! Replays every input of the `qcow2` fuzz corpus (`fuzz/corpus/qcow2`) through the fuzz harness, so inputs
//! that once crashed stay fixed without running the fuzzer.

#[path = "../../../fuzz/src/qcow2.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

#[test]
fn qcow2_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/qcow2");
    let mut replayed = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness::qcow2(&data));
        assert!(
            outcome.is_ok(),
            "the harness panicked on {}",
            path.display()
        );
        replayed += 1;
    }
    assert!(replayed >= 20, "the corpus at {} is missing", dir.display());
}
