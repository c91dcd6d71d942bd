//! The blk commands each mutant goes through, and the QEMU command doing the same (to tell a blk fault from
//! an image QEMU handles no better).

use super::bases::{Base, Extra};
use crate::campaign::Rng;

/// One command of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `info --output=json`.
    Info,
    /// `check --output=json`.
    Check,
    /// `map --output=json`.
    Map,
    /// `io -r` reads at a few places.
    Read,
    /// `snapshot -l` (QCOW2).
    SnapshotList,
    /// `io` write then flush.
    Write,
    /// `check -r all`.
    Repair,
    /// `resize +1M` (QCOW2).
    Resize,
    /// `snapshot -c` (QCOW2).
    SnapshotCreate,
    /// `amend -o` (QCOW2: v3, or lazy refcounts switched).
    Amend,
    /// `commit` into the backing file.
    Commit,
}

/// Every command, read-only ones first.
pub const ALL: [Kind; 11] = [
    Kind::Info,
    Kind::Check,
    Kind::Map,
    Kind::Read,
    Kind::SnapshotList,
    Kind::Write,
    Kind::Repair,
    Kind::Resize,
    Kind::SnapshotCreate,
    Kind::Amend,
    Kind::Commit,
];

/// Reads `io -r` does.
const READS: [&str; 3] = ["read 0 64k", "read 1M 256k", "read 3M 1M"];

impl Kind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Info => "info",
            Kind::Check => "check",
            Kind::Map => "map",
            Kind::Read => "io read",
            Kind::SnapshotList => "snapshot -l",
            Kind::Write => "io write+flush",
            Kind::Repair => "check -r all",
            Kind::Resize => "resize",
            Kind::SnapshotCreate => "snapshot -c",
            Kind::Amend => "amend",
            Kind::Commit => "commit",
        }
    }

    /// Whether it may change the image.
    pub fn writes(self) -> bool {
        self >= Kind::Write
    }

    /// Whether it is run on mutants of `base`.
    pub fn applies(self, base: &Base) -> bool {
        let qcow2 = base.format == "qcow2";
        match self {
            Kind::SnapshotList | Kind::Resize | Kind::SnapshotCreate | Kind::Amend => qcow2,
            Kind::Commit => base.extra == Extra::Backing,
            _ => true,
        }
    }

    /// The arguments after the program: `(blk args, qemu program, qemu args)` for the image at `file`.
    pub fn command_lines(
        self,
        base: &Base,
        file: &str,
        rng: &mut Rng,
    ) -> (Vec<String>, &'static str, Vec<String>) {
        let f = base.format;
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let with_commands = |first: &[&str], commands: &[String]| {
            let mut args = v(first);
            for c in commands {
                args.push("-c".into());
                args.push(c.clone());
            }
            args.push(file.to_string());
            args
        };
        match self {
            Kind::Info | Kind::Check | Kind::Map => {
                let sub = self.name();
                let args = v(&[sub, "-f", f, "--output=json", file]);
                (args.clone(), "qemu-img", args)
            }
            Kind::Read => {
                let reads: Vec<String> = READS.iter().map(|s| s.to_string()).collect();
                (
                    with_commands(&["io", "-r", "-f", f], &reads),
                    "qemu-io",
                    with_commands(&["-r", "-f", f], &reads),
                )
            }
            Kind::SnapshotList => {
                let args = v(&["snapshot", "-l", "-f", f, file]);
                (args.clone(), "qemu-img", args)
            }
            Kind::Write => {
                let offset = rng.pick(&["0", "512k", "1028k", "2M", "3004k", "4032k"]);
                let commands = vec![format!("write -P 0x5a {offset} 64k"), "flush".to_string()];
                (
                    with_commands(&["io", "-f", f], &commands),
                    "qemu-io",
                    with_commands(&["-f", f], &commands),
                )
            }
            Kind::Repair => {
                let args = v(&["check", "-f", f, "-r", "all", "--output=json", file]);
                (args.clone(), "qemu-img", args)
            }
            Kind::Resize => {
                let args = v(&["resize", "-f", f, file, "+1M"]);
                (args.clone(), "qemu-img", args)
            }
            Kind::SnapshotCreate => {
                let args = v(&["snapshot", "-f", f, "-c", "mutant-snap", file]);
                (args.clone(), "qemu-img", args)
            }
            Kind::Amend => {
                let options = match base.options {
                    o if o.contains("compat=0.10") => "compat=1.1",
                    o if o.contains("lazy_refcounts=on") => "lazy_refcounts=off",
                    _ => "lazy_refcounts=on",
                };
                let args = v(&["amend", "-f", f, "-o", options, file]);
                (args.clone(), "qemu-img", args)
            }
            Kind::Commit => {
                let args = v(&["commit", "-f", f, file]);
                (args.clone(), "qemu-img", args)
            }
        }
    }
}
