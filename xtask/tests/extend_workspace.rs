//! Adding a format or a backend is a registration: this test copies the workspace, adds the read-only toy
//! format `blk-toy` and the toy backend `blk-toyq` (fixtures in `tests/extend_workspace/`) with exactly the
//! edits `docs/adding-a-format.md` and `docs/adding-a-backend.md` list, builds the `blk` CLI with raw and the
//! two toys only, runs it on a toy image (detection, `info`, `convert`, `bench -i toyq`, a refused `create`),
//! runs the dependency check on the copy, and counts the files each addition touched outside its own crate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The most files outside its own crate that adding a format, or a backend, may touch.
const MAX_FILES_TOUCHED: usize = 6;

/// One edit: insert `insert` on the line after the first line of `file` that starts with `anchor` (both
/// trimmed).
struct Edit {
    file: &'static str,
    anchor: &'static str,
    insert: &'static str,
}

/// Registering the toy format, as docs/adding-a-format.md says.
const FORMAT_EDITS: &[Edit] = &[
    Edit {
        file: "Cargo.toml",
        anchor: "[workspace.dependencies]",
        insert: r#"blk-toy = { path = "crates/blk-toy", version = "0.1.0" }"#,
    },
    Edit {
        file: "crates/blk-factory/Cargo.toml",
        anchor: "[features]",
        insert: r#"toy = ["dep:blk-toy"]"#,
    },
    Edit {
        file: "crates/blk-factory/Cargo.toml",
        anchor: "[dependencies]",
        insert: "blk-toy = { workspace = true, optional = true }",
    },
    Edit {
        file: "crates/blk-factory/src/format.rs",
        anchor: "blk_raw::FORMAT,",
        insert: "    #[cfg(feature = \"toy\")]\n    blk_toy::FORMAT,",
    },
    Edit {
        file: "crates/blk/Cargo.toml",
        anchor: "[features]",
        insert: r#"toy = ["blk-factory/toy"]"#,
    },
    Edit {
        file: "xtask/src/deps.rs",
        anchor: "pub const CRATE_TABLE: &[(&str, Role)] = &[",
        insert: r#"    ("blk-toy", Role::Format),"#,
    },
    Edit {
        file: "docs/architecture.md",
        anchor: "| `blk-vhdx` |",
        insert: "| `blk-toy` | A read-only toy format. | `blk-core` |",
    },
];

/// Registering the toy backend, as docs/adding-a-backend.md says.
const BACKEND_EDITS: &[Edit] = &[
    Edit {
        file: "Cargo.toml",
        anchor: "[workspace.dependencies]",
        insert: r#"blk-toyq = { path = "crates/blk-toyq", version = "0.1.0" }"#,
    },
    Edit {
        file: "crates/blk-factory/Cargo.toml",
        anchor: "[features]",
        insert: r#"toyq = ["dep:blk-toyq"]"#,
    },
    Edit {
        file: "crates/blk-factory/Cargo.toml",
        anchor: "[dependencies]",
        insert: "blk-toyq = { workspace = true, optional = true }",
    },
    Edit {
        file: "crates/blk-factory/src/backend.rs",
        anchor: "static BACKENDS: &[&dyn BackendDescriptor] = &[",
        insert: "    #[cfg(feature = \"toyq\")]\n    blk_toyq::BACKEND,",
    },
    Edit {
        file: "crates/blk/Cargo.toml",
        anchor: "[features]",
        insert: r#"toyq = ["blk-factory/toyq"]"#,
    },
    Edit {
        file: "xtask/src/deps.rs",
        anchor: "pub const CRATE_TABLE: &[(&str, Role)] = &[",
        insert: r#"    ("blk-toyq", Role::Backend),"#,
    },
    Edit {
        file: "docs/architecture.md",
        anchor: "| `blk-aio` |",
        insert: "| `blk-toyq` | A toy I/O backend. | `blk-core` |",
    },
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// The workspace's files: tracked and untracked ones git does not ignore.
fn workspace_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .expect("running git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
        .collect()
}

fn copy_workspace(from: &Path, to: &Path) {
    for file in workspace_files(from) {
        let source = from.join(&file);
        // Deleted in the working tree but still tracked: not part of the workspace any more.
        if !source.is_file() {
            continue;
        }
        let target = to.join(&file);
        fs::create_dir_all(target.parent().expect("a file has a parent")).unwrap();
        fs::copy(&source, &target).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// Applies `edits` in `root`; returns the files they touched.
fn apply(root: &Path, edits: &[Edit]) -> Vec<&'static str> {
    let mut touched = Vec::new();
    for edit in edits {
        let path = root.join(edit.file);
        let text = fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        let mut done = false;
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            if !done && line.trim().starts_with(edit.anchor.trim()) {
                out.push_str(edit.insert);
                out.push('\n');
                done = true;
            }
        }
        assert!(done, "{}: no line `{}`", edit.file, edit.anchor);
        fs::write(&path, out).unwrap();
        if !touched.contains(&edit.file) {
            touched.push(edit.file);
        }
    }
    touched
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("starting a command");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_toy_format_and_a_toy_backend_plug_in_with_registrations_only() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("blk");
    copy_workspace(&root, &copy);
    let fixtures = root.join("xtask/tests/extend_workspace");
    copy_dir(&fixtures.join("blk-toy"), &copy.join("crates/blk-toy"));
    copy_dir(&fixtures.join("blk-toyq"), &copy.join("crates/blk-toyq"));

    let format_files = apply(&copy, FORMAT_EDITS);
    let backend_files = apply(&copy, BACKEND_EDITS);
    println!("adding a format touched {format_files:?}");
    println!("adding a backend touched {backend_files:?}");
    assert!(format_files.len() <= MAX_FILES_TOUCHED, "{format_files:?}");
    assert!(
        backend_files.len() <= MAX_FILES_TOUCHED,
        "{backend_files:?}"
    );

    // Its own target directory (the outer `cargo test` holds the workspace's), kept between runs.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("extend-workspace-target");
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&copy).env("CARGO_TARGET_DIR", &target);
        command
    };
    run(cargo().args([
        "build",
        "-p",
        "blk",
        "--no-default-features",
        "--features",
        "toy,toyq",
    ]));
    // The dependency check knows both new crates (an unlisted blk-* crate would fail it).
    run(cargo().args(["run", "-q", "-p", "xtask", "--", "deps"]));

    let blk = target.join("debug").join("blk");
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let size = 1u64 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut image = b"BLKTOY01".to_vec();
    image.extend_from_slice(&size.to_le_bytes());
    image.resize(512, 0);
    image.extend_from_slice(&data);
    fs::write(work.join("disk.toy"), &image).unwrap();
    let blk_in = |args: &[&str]| {
        let mut command = Command::new(&blk);
        command.args(args).current_dir(&work);
        command
    };

    // Detected by its probe, described through its ImageAdmin.
    let info = run(&mut blk_in(&["info", "disk.toy"]));
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("file format: toy"), "{info}");
    assert!(
        info.contains("virtual size: 1 MiB (1048576 bytes)"),
        "{info}"
    );
    // Read through its Mapper by blk-core's engine.
    run(&mut blk_in(&[
        "convert", "-O", "raw", "disk.toy", "out.raw",
    ]));
    assert_eq!(fs::read(work.join("out.raw")).unwrap(), data);
    // Its queues on the toy backend, chosen by name.
    let bench = run(&mut blk_in(&[
        "bench", "-i", "toyq", "-c", "64", "-d", "4", "-f", "toy", "disk.toy",
    ]));
    let stderr = String::from_utf8_lossy(&bench.stderr);
    assert!(!stderr.contains("using sync"), "fell back: {stderr}");
    // What it cannot do is refused with its own message.
    let create = blk_in(&["create", "-f", "toy", "new.toy", "1M"])
        .output()
        .unwrap();
    assert!(!create.status.success());
    assert!(
        String::from_utf8_lossy(&create.stderr).contains("toy images are read-only"),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
}
