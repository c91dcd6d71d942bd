//! The dependency-direction check: formats and backends depend on `blk-core` alone, `blk-core` on no
//! workspace crate, and only the integrators (`blk-factory`, the `blk` CLI) tie them together. Tests share
//! `blk-test-support`, a dev-only crate on `blk-core` alone.
//!
//! The rules ([`check`]) are a pure function over a [`WorkspaceGraph`]; [`graph_from_metadata`] builds that
//! graph from `cargo metadata --no-deps` JSON and [`check_manifest`] does both for a workspace on disk. The
//! graph holds *declared* dependencies (optional and target-specific ones included), so a format cannot hide
//! a backend dependency behind a feature.
//!
//! | role | crates | may depend on (normal and build dependencies) | dev-dependencies |
//! |---|---|---|---|
//! | core | `blk-core` | no workspace crate | `blk-test-support` |
//! | format | `blk-raw`, `blk-qcow`, `blk-vhd`, `blk-vhdx` | `blk-core` | `blk-core`, `blk-test-support` |
//! | backend | `blk-uring`, `blk-aio` | `blk-core` | `blk-core`, `blk-test-support` |
//! | test support | `blk-test-support` | `blk-core` | `blk-core` |
//! | integrator | `blk-factory`, `blk-vhost-user`, `blk` | core, formats, backends, `blk-factory`, `blk-vhost-user` | anything |
//! | tooling | `xtask`, `blk-benches`, `blk-fuzz`, anything under `fuzz/` | anything | anything |
//!
//! `blk-test-support` is test code: only tooling may take it as a normal or build dependency; every other crate
//! only as a dev-dependency (`blk-core`'s integration tests use it too: Cargo allows that cycle through a
//! dev-dependency, and `blk-core`'s unit tests, which cannot, do without it).
//!
//! A workspace crate named `blk` or `blk-*` that is not in [`CRATE_TABLE`] fails the check until it is added.
//! Other unknown names are reported and left unconstrained (their dependents are still constrained: a format
//! may not depend on them).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The layer a workspace crate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `blk-core`: traits, error, buffers, host-file layer.
    Core,
    /// An image format: translates guest offsets to host ranges.
    Format,
    /// An I/O backend: asynchronous submission (io_uring, Linux AIO).
    Backend,
    /// `blk-test-support`: helpers the crates' tests share; a dev-dependency only.
    TestSupport,
    /// Wires formats and backends together: `blk-factory` and the `blk` CLI.
    Integrator,
    /// Build, benchmark and fuzz tooling; unconstrained.
    Tooling,
}

impl Role {
    /// The role's name as the check prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Core => "core",
            Role::Format => "format",
            Role::Backend => "backend",
            Role::TestSupport => "test-support",
            Role::Integrator => "integrator",
            Role::Tooling => "tooling",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every known workspace crate and its role. Add a new crate here (and to the table in the module docs and
/// `docs/architecture.md`) when you create it.
pub const CRATE_TABLE: &[(&str, Role)] = &[
    ("blk-core", Role::Core),
    ("blk-raw", Role::Format),
    ("blk-qcow", Role::Format),
    ("blk-vhd", Role::Format),
    ("blk-vhdx", Role::Format),
    ("blk-uring", Role::Backend),
    ("blk-aio", Role::Backend),
    ("blk-test-support", Role::TestSupport),
    ("blk-factory", Role::Integrator),
    ("blk", Role::Integrator),
    ("blk-vhost-user", Role::Integrator),
    ("xtask", Role::Tooling),
    ("blk-benches", Role::Tooling),
    ("blk-fuzz", Role::Tooling),
];

/// The one crate that formats and backends may depend on.
pub const CORE: &str = "blk-core";

/// The CLI crate: a binary, never a dependency of another integrator.
pub const CLI: &str = "blk";

/// The kind of a dependency, as Cargo.toml declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[build-dependencies]`.
    Build,
    /// `[dev-dependencies]`.
    Dev,
}

impl DepKind {
    /// The kind's name as the check prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            DepKind::Normal => "normal",
            DepKind::Build => "build",
            DepKind::Dev => "dev",
        }
    }
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One workspace crate and the workspace crates it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package name.
    pub name: String,
    /// The package's directory relative to the workspace root (`crates/blk-raw`, `fuzz`, ...).
    pub dir: PathBuf,
    /// Its dependencies on other workspace crates (by package name), each `(name, kind)` once, sorted.
    pub deps: Vec<(String, DepKind)>,
}

impl Package {
    /// A package at `dir` with the given workspace dependencies (sorted and deduplicated here).
    pub fn new(name: &str, dir: impl Into<PathBuf>, deps: &[(&str, DepKind)]) -> Package {
        let deps: BTreeSet<(String, DepKind)> = deps
            .iter()
            .map(|&(dep, kind)| (dep.to_string(), kind))
            .collect();
        Package {
            name: name.to_string(),
            dir: dir.into(),
            deps: deps.into_iter().collect(),
        }
    }
}

/// The workspace crates and their dependencies on each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceGraph {
    /// The workspace members, sorted by name.
    pub packages: Vec<Package>,
}

/// How a crate is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Listed in [`CRATE_TABLE`] or tooling by location (`fuzz/`).
    Known(Role),
    /// Named `blk` or `blk-*` but not in the table: an error.
    UnknownBlk,
    /// Any other name: reported, unconstrained.
    Other,
}

/// Classifies the crate `name` living at `dir` (relative to the workspace root).
pub fn classify(name: &str, dir: &Path) -> Class {
    if let Some(&(_, role)) = CRATE_TABLE.iter().find(|(n, _)| *n == name) {
        return Class::Known(role);
    }
    if dir.starts_with("fuzz") {
        return Class::Known(Role::Tooling);
    }
    if name == CLI || name.starts_with("blk-") {
        Class::UnknownBlk
    } else {
        Class::Other
    }
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A `blk`/`blk-*` workspace crate missing from [`CRATE_TABLE`].
    Unclassified {
        /// The crate.
        package: String,
    },
    /// A dependency the rules forbid.
    Forbidden {
        /// The depending crate.
        package: String,
        /// Its role.
        role: Role,
        /// The crate it depends on.
        dep: String,
        /// How it depends on it.
        kind: DepKind,
        /// The rule, in words.
        rule: &'static str,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unclassified { package } => write!(
                f,
                "workspace crate `{package}` is not classified: add it to CRATE_TABLE in xtask/src/deps.rs \
                 as core, format, backend, test-support, integrator or tooling"
            ),
            Violation::Forbidden {
                package,
                role,
                dep,
                kind,
                rule,
            } => write!(
                f,
                "{package} -> {dep} ({kind} dependency): {package} is a {role} crate, and {rule}"
            ),
        }
    }
}

/// The rule a dependency of a `role` crate on `dep` (of class `dep_class`) breaks, if any.
fn broken_rule(role: Role, dep: &str, dep_class: Class, kind: DepKind) -> Option<&'static str> {
    let test_support = dep_class == Class::Known(Role::TestSupport);
    if test_support && kind != DepKind::Dev && role != Role::Tooling {
        return Some("blk-test-support is test code: only a dev-dependency");
    }
    match role {
        Role::Core | Role::Format | Role::Backend if test_support => None,
        Role::Core => {
            Some("blk-core depends on no workspace crate (its tests may use blk-test-support)")
        }
        Role::Format if dep != CORE => {
            Some("a format depends on no workspace crate but blk-core (not on backends, other formats or the factory)")
        }
        Role::Backend if dep != CORE => {
            Some("a backend depends on no workspace crate but blk-core (not on formats or the factory)")
        }
        Role::TestSupport if dep != CORE => {
            Some("blk-test-support depends on no workspace crate but blk-core")
        }
        Role::Format | Role::Backend | Role::TestSupport | Role::Tooling => None,
        Role::Integrator if kind == DepKind::Dev => None,
        Role::Integrator => match dep_class {
            _ if dep == CLI => Some("nothing depends on the blk CLI crate"),
            Class::Known(Role::Tooling) => Some("integrators do not depend on tooling crates"),
            _ => None,
        },
    }
}

/// Every rule the workspace breaks, in package order; empty when it is clean.
pub fn check(graph: &WorkspaceGraph) -> Vec<Violation> {
    let class_of = |name: &str| {
        graph.packages.iter().find(|p| p.name == name).map_or_else(
            || classify(name, Path::new("")),
            |p| classify(&p.name, &p.dir),
        )
    };
    let mut violations = Vec::new();
    for package in &graph.packages {
        let role = match classify(&package.name, &package.dir) {
            Class::Known(role) => role,
            Class::UnknownBlk => {
                violations.push(Violation::Unclassified {
                    package: package.name.clone(),
                });
                continue;
            }
            Class::Other => continue,
        };
        for (dep, kind) in &package.deps {
            if let Some(rule) = broken_rule(role, dep, class_of(dep), *kind) {
                violations.push(Violation::Forbidden {
                    package: package.name.clone(),
                    role,
                    dep: dep.clone(),
                    kind: *kind,
                    rule,
                });
            }
        }
    }
    violations
}

/// Builds the graph from the JSON of `cargo metadata --format-version 1` (with or without `--no-deps`).
///
/// Only workspace members are kept, and of their dependencies only those naming another workspace member.
pub fn graph_from_metadata(json: &str) -> Result<WorkspaceGraph, String> {
    let bad = |what: &str| format!("unexpected `cargo metadata` output: {what}");
    let metadata: Value =
        serde_json::from_str(json).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let root = metadata["workspace_root"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| bad("no workspace_root"))?;
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .ok_or_else(|| bad("no workspace_members"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages: Vec<&Value> = metadata["packages"]
        .as_array()
        .ok_or_else(|| bad("no packages"))?
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
        .collect();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();

    let mut graph = WorkspaceGraph::default();
    for package in packages {
        let name = package["name"]
            .as_str()
            .ok_or_else(|| bad("a package without a name"))?;
        let manifest = package["manifest_path"]
            .as_str()
            .map(Path::new)
            .ok_or_else(|| bad(&format!("no manifest_path for {name}")))?;
        let dir = manifest
            .parent()
            .and_then(|d| d.strip_prefix(&root).ok())
            .unwrap_or_else(|| Path::new(""));
        let mut deps = Vec::new();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let Some(dep_name) = dep["name"].as_str() else {
                return Err(bad(&format!("a dependency of {name} without a name")));
            };
            if !names.contains(dep_name) {
                continue;
            }
            let kind = match dep["kind"].as_str() {
                None => DepKind::Normal,
                Some("build") => DepKind::Build,
                Some("dev") => DepKind::Dev,
                Some(other) => {
                    return Err(bad(&format!("unknown dependency kind `{other}` in {name}")))
                }
            };
            deps.push((dep_name, kind));
        }
        graph.packages.push(Package::new(name, dir, &deps));
    }
    graph.packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(graph)
}

/// Runs `cargo metadata` on the workspace whose root manifest is `manifest_path` and builds its graph.
pub fn load_graph(manifest_path: &Path) -> Result<WorkspaceGraph, String> {
    graph_from_metadata(&crate::cmd::cargo_metadata_no_deps(manifest_path)?)
}

/// Checks the workspace at `manifest_path`: `Ok` with the graph when every rule holds, else an error listing
/// every violation, one per line.
pub fn check_manifest(manifest_path: &Path) -> Result<WorkspaceGraph, String> {
    let graph = load_graph(manifest_path)?;
    let violations = check(&graph);
    if violations.is_empty() {
        Ok(graph)
    } else {
        let mut message = format!(
            "dependency-direction check failed ({} violation{}):",
            violations.len(),
            if violations.len() == 1 { "" } else { "s" }
        );
        for v in &violations {
            message.push_str("\n  - ");
            message.push_str(&v.to_string());
        }
        message.push_str("\n(see docs/architecture.md, \"The dependency rule\")");
        Err(message)
    }
}

/// `cargo xtask deps`: checks the workspace at `root` and prints each crate's role and workspace dependencies.
pub fn run(root: &Path) -> Result<(), String> {
    let graph = check_manifest(&root.join("Cargo.toml"))?;
    for package in &graph.packages {
        let class = match classify(&package.name, &package.dir) {
            Class::Known(role) => role.as_str(),
            Class::UnknownBlk | Class::Other => "unclassified (unconstrained)",
        };
        let deps: Vec<String> = package
            .deps
            .iter()
            .map(|(d, k)| match k {
                DepKind::Normal => d.clone(),
                _ => format!("{d} ({k})"),
            })
            .collect();
        let deps = if deps.is_empty() {
            "-".to_string()
        } else {
            deps.join(", ")
        };
        println!("  {:<16} {:<12} -> {deps}", package.name, class);
    }
    println!(
        "dependency direction: OK ({} workspace crates)",
        graph.packages.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DepKind::{Build, Dev, Normal};
    use super::*;

    fn graph(packages: Vec<Package>) -> WorkspaceGraph {
        WorkspaceGraph { packages }
    }

    fn layered() -> Vec<Package> {
        vec![
            Package::new("blk-core", "crates/blk-core", &[("blk-test-support", Dev)]),
            Package::new(
                "blk-test-support",
                "crates/blk-test-support",
                &[("blk-core", Normal)],
            ),
            Package::new(
                "blk-raw",
                "crates/blk-raw",
                &[("blk-core", Normal), ("blk-test-support", Dev)],
            ),
            Package::new(
                "blk-qcow",
                "crates/blk-qcow",
                &[("blk-core", Normal), ("blk-core", Dev)],
            ),
            Package::new(
                "blk-uring",
                "crates/blk-uring",
                &[("blk-core", Normal), ("blk-test-support", Dev)],
            ),
            Package::new(
                "blk-factory",
                "crates/blk-factory",
                &[
                    ("blk-core", Normal),
                    ("blk-raw", Normal),
                    ("blk-qcow", Normal),
                    ("blk-uring", Normal),
                ],
            ),
            Package::new(
                "blk",
                "crates/blk",
                &[("blk-factory", Normal), ("blk-core", Normal)],
            ),
            Package::new("xtask", "xtask", &[]),
            Package::new(
                "blk-benches",
                "benches",
                &[("blk-raw", Normal), ("blk", Dev)],
            ),
        ]
    }

    fn with(mut packages: Vec<Package>, extra: Package) -> WorkspaceGraph {
        packages.retain(|p| p.name != extra.name);
        packages.push(extra);
        graph(packages)
    }

    fn forbidden(v: &[Violation]) -> Vec<(String, String, DepKind)> {
        v.iter()
            .filter_map(|v| match v {
                Violation::Forbidden {
                    package, dep, kind, ..
                } => Some((package.clone(), dep.clone(), *kind)),
                Violation::Unclassified { .. } => None,
            })
            .collect()
    }

    #[test]
    fn layered_workspace_passes() {
        assert_eq!(check(&graph(layered())), vec![]);
    }

    #[test]
    fn format_on_backend_fails() {
        let g = with(
            layered(),
            Package::new(
                "blk-raw",
                "crates/blk-raw",
                &[("blk-core", Normal), ("blk-uring", Normal)],
            ),
        );
        let v = check(&g);
        assert_eq!(
            forbidden(&v),
            vec![("blk-raw".into(), "blk-uring".into(), Normal)]
        );
        let text = v[0].to_string();
        assert!(
            text.starts_with("blk-raw -> blk-uring (normal dependency)"),
            "{text}"
        );
        assert!(text.contains("format"), "{text}");
    }

    #[test]
    fn format_on_format_or_factory_fails_in_every_kind() {
        for kind in [Normal, Build, Dev] {
            let g = with(
                layered(),
                Package::new(
                    "blk-qcow",
                    "crates/blk-qcow",
                    &[
                        ("blk-core", Normal),
                        ("blk-raw", kind),
                        ("blk-factory", kind),
                    ],
                ),
            );
            assert_eq!(
                forbidden(&check(&g)),
                vec![
                    ("blk-qcow".into(), "blk-factory".into(), kind),
                    ("blk-qcow".into(), "blk-raw".into(), kind)
                ]
            );
        }
    }

    #[test]
    fn backend_on_format_fails() {
        let g = with(
            layered(),
            Package::new(
                "blk-uring",
                "crates/blk-uring",
                &[("blk-core", Normal), ("blk-raw", Build)],
            ),
        );
        assert_eq!(
            forbidden(&check(&g)),
            vec![("blk-uring".into(), "blk-raw".into(), Build)]
        );
    }

    #[test]
    fn core_depends_on_nothing() {
        let g = with(
            layered(),
            Package::new("blk-core", "crates/blk-core", &[("blk-raw", Dev)]),
        );
        assert_eq!(
            forbidden(&check(&g)),
            vec![("blk-core".into(), "blk-raw".into(), Dev)]
        );
    }

    #[test]
    fn test_support_is_a_dev_dependency_on_core_alone() {
        assert_eq!(
            classify("blk-test-support", Path::new("crates/blk-test-support")),
            Class::Known(Role::TestSupport)
        );
        // Only as a dev-dependency, whoever depends on it (tooling aside).
        for (package, dir, kind) in [
            ("blk-raw", "crates/blk-raw", Normal),
            ("blk-uring", "crates/blk-uring", Build),
            ("blk-core", "crates/blk-core", Normal),
            ("blk-factory", "crates/blk-factory", Normal),
        ] {
            let g = with(
                layered(),
                Package::new(package, dir, &[("blk-test-support", kind)]),
            );
            let v = check(&g);
            assert_eq!(
                forbidden(&v),
                vec![(package.into(), "blk-test-support".into(), kind)]
            );
            assert!(
                v[0].to_string().contains("only a dev-dependency"),
                "{}",
                v[0]
            );
        }
        let g = with(
            layered(),
            Package::new(
                "blk-factory",
                "crates/blk-factory",
                &[("blk-core", Normal), ("blk-test-support", Dev)],
            ),
        );
        assert_eq!(check(&g), vec![]);
        let g = with(
            layered(),
            Package::new("xtask", "xtask", &[("blk-test-support", Normal)]),
        );
        assert_eq!(check(&g), vec![]);
        // It depends on blk-core alone, in every kind.
        for kind in [Normal, Build, Dev] {
            let g = with(
                layered(),
                Package::new(
                    "blk-test-support",
                    "crates/blk-test-support",
                    &[("blk-core", Normal), ("blk-raw", kind), ("blk-uring", kind)],
                ),
            );
            let v = check(&g);
            assert_eq!(
                forbidden(&v),
                vec![
                    ("blk-test-support".into(), "blk-raw".into(), kind),
                    ("blk-test-support".into(), "blk-uring".into(), kind)
                ]
            );
            assert!(v[0].to_string().contains("test-support crate"), "{}", v[0]);
        }
        // blk-core's other dev-dependencies stay forbidden.
        let g = with(
            layered(),
            Package::new(
                "blk-core",
                "crates/blk-core",
                &[("blk-test-support", Dev), ("blk-qcow", Dev)],
            ),
        );
        assert_eq!(
            forbidden(&check(&g)),
            vec![("blk-core".into(), "blk-qcow".into(), Dev)]
        );
    }

    #[test]
    fn integrators_may_not_depend_on_the_cli_or_tooling() {
        let g = with(
            layered(),
            Package::new(
                "blk-factory",
                "crates/blk-factory",
                &[("blk-core", Normal), ("blk", Normal), ("xtask", Build)],
            ),
        );
        assert_eq!(
            forbidden(&check(&g)),
            vec![
                ("blk-factory".into(), "blk".into(), Normal),
                ("blk-factory".into(), "xtask".into(), Build)
            ]
        );
        // ... except as dev-dependencies.
        let g = with(
            layered(),
            Package::new(
                "blk-factory",
                "crates/blk-factory",
                &[("blk", Dev), ("blk-benches", Dev)],
            ),
        );
        assert_eq!(check(&g), vec![]);
    }

    #[test]
    fn unknown_blk_crates_must_be_classified() {
        let g = with(
            layered(),
            Package::new("blk-nbd", "crates/blk-nbd", &[("blk-core", Normal)]),
        );
        let v = check(&g);
        assert_eq!(
            v,
            vec![Violation::Unclassified {
                package: "blk-nbd".into()
            }]
        );
        assert!(v[0].to_string().contains("CRATE_TABLE"));
    }

    #[test]
    fn fuzz_crates_are_tooling_and_others_unconstrained() {
        assert_eq!(
            classify("blk-fuzz-qcow", Path::new("fuzz")),
            Class::Known(Role::Tooling)
        );
        assert_eq!(
            classify("fuzz", Path::new("fuzz")),
            Class::Known(Role::Tooling)
        );
        assert_eq!(
            classify("blk", Path::new("crates/blk")),
            Class::Known(Role::Integrator)
        );
        assert_eq!(classify("helper", Path::new("crates/helper")), Class::Other);
        let g = with(
            layered(),
            Package::new("helper", "crates/helper", &[("blk-uring", Normal)]),
        );
        assert_eq!(check(&g), vec![]);
        // A format still may not depend on it.
        let g = with(
            g.packages,
            Package::new("blk-raw", "crates/blk-raw", &[("helper", Normal)]),
        );
        assert_eq!(
            forbidden(&check(&g)),
            vec![("blk-raw".into(), "helper".into(), Normal)]
        );
    }

    #[test]
    fn metadata_json_is_parsed() {
        let json = r#"{
          "workspace_root": "/ws",
          "workspace_members": ["path+file:///ws/crates/blk-raw#0.1.0", "path+file:///ws/crates/blk-core#0.1.0"],
          "packages": [
            {"name": "blk-raw", "id": "path+file:///ws/crates/blk-raw#0.1.0",
             "manifest_path": "/ws/crates/blk-raw/Cargo.toml",
             "dependencies": [
               {"name": "blk-core", "kind": null},
               {"name": "blk-core", "kind": null, "target": "cfg(unix)"},
               {"name": "blk-core", "kind": "dev"},
               {"name": "libc", "kind": null},
               {"name": "cc", "kind": "build"}
             ]},
            {"name": "blk-core", "id": "path+file:///ws/crates/blk-core#0.1.0",
             "manifest_path": "/ws/crates/blk-core/Cargo.toml", "dependencies": []},
            {"name": "libc", "id": "registry+https://example.invalid#libc@0.2.0",
             "manifest_path": "/reg/libc/Cargo.toml", "dependencies": []}
          ]
        }"#;
        let g = graph_from_metadata(json).unwrap();
        assert_eq!(
            g,
            graph(vec![
                Package::new("blk-core", "crates/blk-core", &[]),
                Package::new(
                    "blk-raw",
                    "crates/blk-raw",
                    &[("blk-core", Normal), ("blk-core", Dev)]
                ),
            ])
        );
        assert!(graph_from_metadata("{}").is_err());
        assert!(graph_from_metadata("not json").is_err());
    }
}
