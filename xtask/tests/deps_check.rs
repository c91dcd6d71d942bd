//! The dependency-direction check run through `cargo metadata` on throwaway workspaces (path dependencies
//! only, so it works offline) and on the real workspace.

use std::fs;
use std::path::Path;

use xtask::deps::{check_manifest, DepKind, Role};

/// Writes a workspace of tiny library crates under `dir`: each `(name, deps)` becomes `crates/<name>` with
/// path dependencies on `deps`, each `(dep, section)` in the Cargo.toml section given.
fn workspace(dir: &Path, crates: &[(&str, &[(&str, &str)])]) {
    let members: Vec<String> = crates
        .iter()
        .map(|(name, _)| format!("\"crates/{name}\""))
        .collect();
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [{}]\n",
            members.join(", ")
        ),
    )
    .unwrap();
    for (name, deps) in crates {
        let crate_dir = dir.join("crates").join(name);
        fs::create_dir_all(crate_dir.join("src")).unwrap();
        fs::write(crate_dir.join("src/lib.rs"), "").unwrap();
        let mut manifest = format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n"
        );
        for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
            let in_section: Vec<&str> = deps
                .iter()
                .filter(|(_, s)| *s == section)
                .map(|(d, _)| *d)
                .collect();
            if !in_section.is_empty() {
                manifest.push_str(&format!("\n[{section}]\n"));
                for dep in in_section {
                    manifest.push_str(&format!("{dep} = {{ path = \"../{dep}\" }}\n"));
                }
            }
        }
        fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    }
}

const NORMAL: &str = "dependencies";

#[test]
fn format_depending_on_backend_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[]),
            ("blk-raw", &[("blk-core", NORMAL), ("blk-uring", NORMAL)]),
            ("blk-uring", &[("blk-core", NORMAL)]),
        ],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(err.contains("blk-raw -> blk-uring"), "{err}");
    assert!(err.contains("1 violation"), "{err}");
}

#[test]
fn layered_workspace_passes() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[]),
            (
                "blk-raw",
                &[("blk-core", NORMAL), ("blk-core", "dev-dependencies")],
            ),
            ("blk-uring", &[("blk-core", NORMAL)]),
            (
                "blk-factory",
                &[
                    ("blk-core", NORMAL),
                    ("blk-raw", NORMAL),
                    ("blk-uring", NORMAL),
                ],
            ),
            (
                "blk",
                &[("blk-factory", NORMAL), ("blk-raw", "dev-dependencies")],
            ),
        ],
    );
    let graph = check_manifest(&dir.path().join("Cargo.toml")).unwrap();
    assert_eq!(graph.packages.len(), 5);
    let raw = graph.packages.iter().find(|p| p.name == "blk-raw").unwrap();
    assert_eq!(raw.dir, Path::new("crates/blk-raw"));
    assert_eq!(raw.deps.len(), 2, "normal and dev dependency on blk-core");
}

#[test]
fn core_depending_on_a_format_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[("blk-raw", "build-dependencies")]),
            ("blk-raw", &[]),
        ],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(
        err.contains("blk-core -> blk-raw (build dependency)"),
        "{err}"
    );
}

#[test]
fn format_dev_dependency_on_backend_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[]),
            (
                "blk-qcow",
                &[("blk-core", NORMAL), ("blk-aio", "dev-dependencies")],
            ),
            ("blk-aio", &[("blk-core", NORMAL)]),
        ],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(
        err.contains("blk-qcow -> blk-aio (dev dependency)"),
        "{err}"
    );
}

#[test]
fn test_support_as_a_dev_dependency_passes() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[("blk-test-support", "dev-dependencies")]),
            ("blk-test-support", &[("blk-core", NORMAL)]),
            (
                "blk-raw",
                &[
                    ("blk-core", NORMAL),
                    ("blk-test-support", "dev-dependencies"),
                ],
            ),
            (
                "blk-aio",
                &[
                    ("blk-core", NORMAL),
                    ("blk-test-support", "dev-dependencies"),
                ],
            ),
        ],
    );
    let graph = check_manifest(&dir.path().join("Cargo.toml")).unwrap();
    assert_eq!(graph.packages.len(), 4);
}

#[test]
fn test_support_as_a_normal_dependency_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[]),
            ("blk-test-support", &[("blk-core", NORMAL)]),
            (
                "blk-raw",
                &[("blk-core", NORMAL), ("blk-test-support", NORMAL)],
            ),
        ],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(
        err.contains("blk-raw -> blk-test-support (normal dependency)"),
        "{err}"
    );
    assert!(err.contains("only a dev-dependency"), "{err}");
    assert!(err.contains("1 violation"), "{err}");
}

#[test]
fn test_support_depending_on_a_format_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[
            ("blk-core", &[]),
            (
                "blk-test-support",
                &[("blk-core", NORMAL), ("blk-raw", NORMAL)],
            ),
            ("blk-raw", &[("blk-core", NORMAL)]),
        ],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(
        err.contains("blk-test-support -> blk-raw (normal dependency)"),
        "{err}"
    );
    assert!(err.contains("test-support crate"), "{err}");
}

#[test]
fn unclassified_blk_crate_fails() {
    let dir = tempfile::tempdir().unwrap();
    workspace(
        dir.path(),
        &[("blk-core", &[]), ("blk-nbd", &[("blk-core", NORMAL)])],
    );
    let err = check_manifest(&dir.path().join("Cargo.toml")).unwrap_err();
    assert!(err.contains("`blk-nbd` is not classified"), "{err}");
}

#[test]
fn real_workspace_passes() {
    let root = xtask::cmd::workspace_root();
    let graph = check_manifest(&root.join("Cargo.toml")).unwrap();
    let names: Vec<&str> = graph.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"blk-core"), "{names:?}");
    assert!(names.contains(&"xtask"), "{names:?}");
    let core = graph
        .packages
        .iter()
        .find(|p| p.name == "blk-core")
        .unwrap();
    // blk-core's only workspace dependency: the test support, for its integration tests.
    assert!(
        core.deps
            .iter()
            .all(|(dep, kind)| dep == "blk-test-support" && *kind == DepKind::Dev),
        "{core:?}"
    );
    assert!(xtask::deps::CRATE_TABLE.contains(&("blk-core", Role::Core)));
    assert!(xtask::deps::CRATE_TABLE.contains(&("blk-test-support", Role::TestSupport)));
}
