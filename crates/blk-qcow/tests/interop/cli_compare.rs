//! Comparisons of `blk` with qemu-img / qemu-io for blk's `qcow2_cli` tests (included there with `#[path]`,
//! next to blk's `tests/common` module): JSON output compared key for key, maps compared with and without host
//! offsets, write scripts replayed by both tools.
#![allow(dead_code)]

use std::process::Output;

use serde_json::Value;

use super::common::{code, ok, qemu_io_args, stderr, stdout, Scratch};
use super::script::{matrix_size, mixed_data, standard_script};

/// Parses a command's stdout as JSON.
#[track_caller]
pub fn json(out: &Output, what: &str) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(out),
            stderr(out)
        )
    })
}

/// A map's runs with `offset` removed and adjacent runs of equal status merged, for images written by different
/// writers: qemu-img map splits a run where host offsets stop being contiguous, which depends on the layout.
pub fn without_offsets(map: &Value) -> Value {
    without_keys(map, &["offset"])
}

/// A map's runs without `keys`, adjacent runs left with equal status merged.
pub fn without_keys(map: &Value, keys: &[&str]) -> Value {
    let mut merged: Vec<Value> = Vec::new();
    for run in map.as_array().cloned().unwrap_or_default() {
        let mut run = run;
        if let Some(obj) = run.as_object_mut() {
            for key in keys {
                obj.remove(*key);
            }
        }
        let status = |v: &Value| {
            let mut v = v.clone();
            if let Some(obj) = v.as_object_mut() {
                obj.remove("start");
                obj.remove("length");
            }
            v
        };
        if let Some(last) = merged.last_mut() {
            let last_end =
                last["start"].as_u64().unwrap_or(0) + last["length"].as_u64().unwrap_or(0);
            if status(last) == status(&run) && run["start"].as_u64() == Some(last_end) {
                let len =
                    last["length"].as_u64().unwrap_or(0) + run["length"].as_u64().unwrap_or(0);
                last["length"] = Value::from(len);
                continue;
            }
        }
        merged.push(run);
    }
    Value::Array(merged)
}

/// Asserts two maps are equal, naming the first run that differs (maps have hundreds of runs).
#[track_caller]
pub fn assert_same_runs(ours: &Value, theirs: &Value, what: &str) {
    if ours == theirs {
        return;
    }
    let empty = Vec::new();
    let (a, b) = (
        ours.as_array().unwrap_or(&empty),
        theirs.as_array().unwrap_or(&empty),
    );
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    panic!(
        "{what}: {} vs {} runs; first difference at run {i}:\n  blk:  {}\n  qemu: {}",
        a.len(),
        b.len(),
        a.get(i).map_or("-".to_string(), Value::to_string),
        b.get(i).map_or("-".to_string(), Value::to_string)
    );
}

/// `qemu-img map` and `blk map` (JSON) of `image`; asserts they are equal, offsets included, and returns it.
#[track_caller]
pub fn assert_map_matches(s: &Scratch, image: &str) -> Value {
    let args = ["map", "--output=json", "-f", "qcow2", image];
    let theirs = json(&s.qemu_img(&args), "qemu-img map");
    let ours_out = s.blk(&args);
    assert_eq!(code(&ours_out), 0, "blk map {image}: {}", stderr(&ours_out));
    let ours = json(&ours_out, "blk map");
    assert_same_runs(
        &ours,
        &theirs,
        &format!("blk map vs qemu-img map of {image}"),
    );
    // The text too (line breaks and key order), and the human format.
    assert_eq!(
        stdout(&ours_out),
        stdout(&s.qemu_img(&args)),
        "map text of {image}"
    );
    let human = ["map", "-f", "qcow2", image];
    assert_eq!(
        stdout(&s.blk(&human)),
        stdout(&s.qemu_img(&human)),
        "human map of {image}"
    );
    theirs
}

/// `blk info --output=json` equals `qemu-img info --output=json` (with `--backing-chain` when `chain`).
#[track_caller]
pub fn assert_info_matches(s: &Scratch, image: &str, chain: bool) {
    let mut args = vec!["info", "--output=json"];
    if chain {
        args.push("--backing-chain");
    }
    args.push(image);
    let theirs = json(&s.qemu_img(&args), "qemu-img info");
    let ours_out = s.blk(&args);
    assert_eq!(code(&ours_out), 0, "blk {args:?}: {}", stderr(&ours_out));
    let ours = json(&ours_out, "blk info");
    if ours != theirs {
        // Name the first differing line of the pretty-printed JSON (the whole objects are long).
        let (a, b) = (
            serde_json::to_string_pretty(&ours).unwrap_or_default(),
            serde_json::to_string_pretty(&theirs).unwrap_or_default(),
        );
        let (line, (x, y)) = a
            .lines()
            .zip(b.lines())
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .unwrap_or((0, ("", "")));
        panic!("blk {args:?} differs from qemu-img at line {line}:\n  blk:  {x}\n  qemu: {y}");
    }
    // The human format too.
    args[1] = "--output=human";
    assert_eq!(
        stdout(&s.blk(&args)),
        stdout(&s.qemu_img(&args)),
        "blk {args:?}"
    );
}

/// `blk check --output=json` and `qemu-img check --output=json`: same exit code, same JSON.
#[track_caller]
pub fn assert_check_matches(s: &Scratch, image: &str) {
    let args = ["check", "--output=json", "-f", "qcow2", image];
    let theirs = s.qemu_img(&args);
    let ours = s.blk(&args);
    assert_eq!(
        code(&ours),
        code(&theirs),
        "exit code of check {image}: {}",
        stderr(&ours)
    );
    assert_eq!(
        json(&ours, "blk check"),
        json(&theirs, "qemu-img check"),
        "check {image}"
    );
}

/// `qemu-img check` exits 0 on `image`.
#[track_caller]
pub fn assert_qemu_clean(s: &Scratch, image: &str) {
    let out = s.qemu_img(&["check", "-f", "qcow2", image]);
    assert_eq!(code(&out), 0, "qemu-img check {image}: {}", stdout(&out));
}

/// `qemu-img compare` exits 0 (same guest contents).
#[track_caller]
pub fn assert_qemu_same(s: &Scratch, a: &str, b: &str) {
    let out = s.qemu_img(&["compare", a, b]);
    assert_eq!(
        code(&out),
        0,
        "qemu-img compare {a} {b}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// qemu-io's per-request report lines (`wrote N/N bytes at offset O`, `discard ...`), timing lines dropped.
pub fn report_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("wrote ") || l.starts_with("discard ") || l.starts_with("read "))
        .collect()
}

/// Runs `script` with qemu-io on `qemu_image` and with `blk io` on `blk_image`; both succeed and report the same
/// requests.
pub fn replay(s: &Scratch, script: &[String], qemu_image: &str, blk_image: &str) {
    let theirs = ok(&s.qemu_io(&qemu_io_args("qcow2", qemu_image, script)));
    let mut blk_args = vec!["io"];
    blk_args.extend(qemu_io_args("qcow2", blk_image, script));
    let ours = ok(&s.blk(&blk_args));
    assert_eq!(report_lines(&ours), report_lines(&theirs), "io reports");
}

/// One replay cell: create with `options` (and a raw backing file when `backing`), replay the standard script,
/// then compare everything qemu-img can say about the two images.
pub fn replay_cell(options: &str, cluster: u64, backing: bool) {
    let size = matrix_size(cluster);
    replay_script_cell(options, size, backing, &standard_script(cluster, size));
}

/// Asserts that `blk map` prints what `qemu-img map` prints on `blk_image` and on `qemu_image`, and that the two
/// images have the same guest-visible allocation status (their maps compared without host offsets).
#[track_caller]
pub fn assert_same_allocation(s: &Scratch, blk_image: &str, qemu_image: &str, what: &str) {
    let qemu_map = assert_map_matches(s, qemu_image);
    let blk_map = assert_map_matches(s, blk_image);
    assert_same_runs(
        &without_offsets(&blk_map),
        &without_offsets(&qemu_map),
        what,
    );
}

/// Creates `q.qcow2` with qemu-img and `b.qcow2` with `blk create`, both with `-o options` and `size`, over a
/// raw backing file `base.raw` of `backing_len` bytes of [`mixed_data`] when given.
pub fn create_twins(s: &Scratch, options: &str, size: u64, backing_len: Option<usize>) {
    let size_text = size.to_string();
    let mut create = vec!["create", "-q", "-f", "qcow2", "-o", options];
    if let Some(len) = backing_len {
        s.write("base.raw", &mixed_data(len));
        create.extend(["-b", "base.raw", "-F", "raw"]);
    }
    let mut qemu_create = create.clone();
    qemu_create.extend(["q.qcow2", &size_text]);
    ok(&s.qemu_img(&qemu_create));
    let mut blk_create = create;
    blk_create.extend(["b.qcow2", &size_text]);
    ok(&s.blk(&blk_create));
}

/// [`replay_cell`] with an image of `size` bytes and any `script`.
pub fn replay_script_cell(options: &str, size: u64, backing: bool, script: &[String]) {
    let s = Scratch::new();
    let what = format!("{options} backing={backing}");
    create_twins(&s, options, size, backing.then_some(size as usize));
    // Fresh images: same metadata as qemu-img reports it (format-specific data, backing names, sizes).
    let info = |image: &str| {
        let mut v = json(
            &s.qemu_img(&["info", "--output=json", image]),
            "qemu-img info",
        );
        strip_host_fields(&mut v);
        v
    };
    assert_eq!(info("b.qcow2"), info("q.qcow2"), "{what}: created images");
    assert_qemu_clean(&s, "b.qcow2");

    replay(&s, script, "q.qcow2", "b.qcow2");
    assert_qemu_clean(&s, "b.qcow2");
    assert_qemu_same(&s, "q.qcow2", "b.qcow2");
    assert_same_allocation(
        &s,
        "b.qcow2",
        "q.qcow2",
        &format!("{what}: guest-visible allocation status of blk's and QEMU's images"),
    );
    for image in ["q.qcow2", "b.qcow2"] {
        assert_info_matches(&s, image, false);
        assert_check_matches(&s, image);
    }
}

/// Removes the fields of `qemu-img info` JSON that depend on the file rather than the image's metadata:
/// `filename`, `actual-size` and the protocol child's sizes.
pub fn strip_host_fields(info: &mut Value) {
    if let Some(obj) = info.as_object_mut() {
        obj.remove("filename");
        obj.remove("actual-size");
        obj.remove("children");
    }
}

/// Copies `from` to `q.qcow2` and `b.qcow2`, replays `script` with qemu-io on the first and `blk io` on the
/// second, then asserts the results are clean and equal and that map/check agree with qemu-img.
pub fn replay_on_copies(s: &Scratch, from: &str, script: &[String], what: &str) {
    std::fs::copy(s.path(from), s.path("q.qcow2")).unwrap();
    std::fs::copy(s.path(from), s.path("b.qcow2")).unwrap();
    replay(s, script, "q.qcow2", "b.qcow2");
    let out = s.qemu_img(&["check", "-f", "qcow2", "b.qcow2"]);
    assert_eq!(code(&out), 0, "{what}: qemu-img check: {}", stdout(&out));
    let out = s.qemu_img(&["compare", "q.qcow2", "b.qcow2"]);
    assert_eq!(code(&out), 0, "{what}: qemu-img compare: {}", stdout(&out));
    assert_same_allocation(
        s,
        "b.qcow2",
        "q.qcow2",
        &format!("{what}: allocation status"),
    );
    assert_check_matches(s, "b.qcow2");
}
