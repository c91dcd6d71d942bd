//! `cargo xtask mutate [--mutants N] [--seed S] [--only BASE] [--mutant I] [--release]`: seeded mutants of
//! qemu-img-made images through blk's commands.
//!
//! | module | what it holds |
//! |---|---|
//! | [`bases`] | the images mutated: every format and feature, made by qemu-img |
//! | [`mutation`] | the byte mutations, and the checksums made right again |
//! | [`commands`] | the blk commands run on each mutant, and their QEMU counterparts |
//!
//! Mutant `I` comes from base `I mod bases` and the generator `(seed, I)`, so `--seed S --mutant I` rebuilds
//! it alone. Each mutant is first judged by `qemu-img check` (VHD, which qemu-img cannot check: `blk check`).
//! Then the read-only commands run on it (the file must not change) and each writable command on a copy of
//! its own, every one under `RLIMIT_AS` ([`MEMORY_CAP`]) and a timeout. Failures:
//!
//! - a panic, a signal (an allocation past the cap aborts: counted as memory), a hang (unless the QEMU
//!   command hangs on the same mutant too);
//! - a read-only command that changed the file;
//! - a writable command after which the image (and for `commit`, its backing file) checks worse than before
//!   (it no longer opens, or more corruptions and check errors), unless the QEMU command ends the same way
//!   on the same mutant (succeeds where blk succeeded; exits, even refusing, where blk refused) and leaves it
//!   at least as bad ("worse as QEMU", counted apart). A QEMU command that aborts on an assertion or hangs
//!   counts as refusing: blk must not make those images worse either. Refusing is judged too: a command
//!   blk refused must not have left the image worse.
//!
//! A failing mutant is kept under `target/mutate-failures/SEED/`. The run prints the seed and a table per
//! base, and exits non-zero on any failure.

pub mod bases;
pub mod commands;
pub mod mutation;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::campaign::{self, check_outcome, CheckOutcome, Ending, Finished, Limits, Rng};
use bases::{Base, Extra, BACKING, BASES};
use commands::Kind;

/// Mutants when `--mutants` is not given.
pub const DEFAULT_MUTANTS: u64 = 2000;
/// The address space a command may map.
pub const MEMORY_CAP: u64 = 1 << 30;

/// Options of `cargo xtask mutate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Mutants in all.
    pub mutants: u64,
    /// The campaign's seed.
    pub seed: u64,
    /// Only mutants of these bases (all when empty).
    pub only: Vec<String>,
    /// Only this mutant.
    pub mutant: Option<u64>,
    /// Build `blk` with `--release`.
    pub release: bool,
}

/// Parses the arguments after `mutate`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        mutants: DEFAULT_MUTANTS,
        seed: campaign::clock_seed(),
        only: Vec::new(),
        mutant: None,
        release: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: &String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match arg.as_str() {
            "--mutants" => options.mutants = number("--mutants", value("--mutants")?)?,
            "--seed" => options.seed = number("--seed", value("--seed")?)?,
            "--mutant" => options.mutant = Some(number("--mutant", value("--mutant")?)?),
            "--only" => {
                let v = value("--only")?;
                if !BASES.iter().any(|b| b.name == v) {
                    let names: Vec<&str> = BASES.iter().map(|b| b.name).collect();
                    return Err(format!(
                        "--only: no base `{v}` (have: {})",
                        names.join(", ")
                    ));
                }
                options.only.push(v.clone());
            }
            "--release" => options.release = true,
            other => return Err(format!("unknown mutate option `{other}`")),
        }
    }
    Ok(options)
}

/// What went wrong with one command on one mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic,
    Signal,
    Memory,
    Hang,
    ReadOnlyChanged,
    MadeWorse,
}

/// Per-base counts for the summary.
#[derive(Debug, Clone, Default)]
struct Tally {
    mutants: u64,
    /// Mutants QEMU (VHD: blk) could check before any command.
    checkable: u64,
    commands: u64,
    succeeded: u64,
    refused: u64,
    panics: u64,
    signals: u64,
    memory: u64,
    hangs: u64,
    hangs_as_qemu: u64,
    read_only_changed: u64,
    made_worse: u64,
    /// Of `made_worse`: the QEMU command refused the mutant (an abort or a hang counts as refusing).
    worse_qemu_refused: u64,
    /// Of `made_worse`: blk refused, yet left the mutant worse (than QEMU's command left it).
    worse_blk_refused: u64,
    /// Of `made_worse`: the QEMU command succeeded and left the mutant less bad.
    worse_qemu_less: u64,
    worse_as_qemu: u64,
}

impl Tally {
    fn failures(&self) -> u64 {
        self.panics
            + self.signals
            + self.memory
            + self.hangs
            + self.read_only_changed
            + self.made_worse
    }

    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::Panic => self.panics += 1,
            Fault::Signal => self.signals += 1,
            Fault::Memory => self.memory += 1,
            Fault::Hang => self.hangs += 1,
            Fault::ReadOnlyChanged => self.read_only_changed += 1,
            Fault::MadeWorse => self.made_worse += 1,
        }
    }

    fn add(&mut self, other: &Tally) {
        self.mutants += other.mutants;
        self.checkable += other.checkable;
        self.commands += other.commands;
        self.succeeded += other.succeeded;
        self.refused += other.refused;
        self.panics += other.panics;
        self.signals += other.signals;
        self.memory += other.memory;
        self.hangs += other.hangs;
        self.hangs_as_qemu += other.hangs_as_qemu;
        self.read_only_changed += other.read_only_changed;
        self.made_worse += other.made_worse;
        self.worse_qemu_refused += other.worse_qemu_refused;
        self.worse_blk_refused += other.worse_blk_refused;
        self.worse_qemu_less += other.worse_qemu_less;
        self.worse_as_qemu += other.worse_as_qemu;
    }

    fn row(&self, name: &str) -> Vec<String> {
        let n = |v: u64| v.to_string();
        vec![
            name.to_string(),
            n(self.mutants),
            n(self.checkable),
            n(self.commands),
            n(self.succeeded),
            n(self.refused),
            n(self.panics),
            n(self.signals),
            n(self.memory),
            format!("{} (+{} as QEMU)", self.hangs, self.hangs_as_qemu),
            n(self.read_only_changed),
            n(self.worse_qemu_refused),
            n(self.worse_qemu_less),
            n(self.worse_blk_refused),
            n(self.worse_as_qemu),
        ]
    }
}

/// What one campaign runs with.
struct Campaign {
    blk: PathBuf,
    limits: Limits,
    /// The bases, made once.
    bases_dir: PathBuf,
    /// Scratch space for the mutant being run.
    work: PathBuf,
    /// Where failing mutants are kept.
    failures: PathBuf,
    seed: u64,
}

fn ro_fault(run: &Finished) -> Option<Fault> {
    match &run.ending {
        Ending::Signal(_) if run.stderr.contains("memory allocation") => Some(Fault::Memory),
        Ending::Signal(_) => Some(Fault::Signal),
        Ending::Exited(101) if run.stderr.contains("panicked") => Some(Fault::Panic),
        Ending::Hung => Some(Fault::Hang),
        _ => None,
    }
}

impl Campaign {
    /// Checks `file` as the campaign judges images: `qemu-img check`, or `blk check` for VHD.
    fn judge(&self, base: &Base, file: &Path) -> CheckOutcome {
        let program = if base.format == "vpc" {
            self.blk.as_path()
        } else {
            Path::new("qemu-img")
        };
        check_outcome(&campaign::supervise(
            Command::new(program)
                .args(["check", "--output=json", "-f", base.format])
                .arg(file),
            self.limits,
        ))
    }

    /// A fresh directory `name` under the work directory holding the mutant as `disk.img` (and the backing
    /// file); returns the image's path.
    fn copy(&self, base: &Base, mutant: &[u8], name: &str) -> Result<PathBuf, String> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join("disk.img");
        std::fs::write(&file, mutant).map_err(|e| format!("{}: {e}", file.display()))?;
        if base.extra == Extra::Backing {
            std::fs::copy(self.bases_dir.join(BACKING), dir.join(BACKING))
                .map_err(|e| format!("backing file: {e}"))?;
        }
        Ok(file)
    }

    fn run(&self, program: &Path, args: &[String], dir: &Path) -> Finished {
        campaign::supervise(
            Command::new(program).args(args).current_dir(dir),
            self.limits,
        )
    }

    /// Runs mutant `index` of `base`; counts into `tally`; returns the failure lines.
    fn mutant(&self, index: u64, base: &Base, tally: &mut Tally) -> Result<Vec<String>, String> {
        let mut rng = Rng::derive(self.seed, index);
        let original = self.bases_dir.join(format!("{}.img", base.name));
        let mut data =
            std::fs::read(&original).map_err(|e| format!("{}: {e}", original.display()))?;
        let fix = rng.chance(60);
        let what = mutation::mutate(&mut data, base.layout, &mut rng, fix);
        tally.mutants += 1;
        let mut failures = Vec::new();
        let before_file = self.copy(base, &data, "before")?;
        let before = self.judge(base, &before_file);
        if matches!(before, CheckOutcome::Checked(_)) {
            tally.checkable += 1;
        }
        let read_only = self.copy(base, &data, "read-only")?;
        let ro_dir = read_only.parent().unwrap_or(&self.work).to_path_buf();
        for kind in commands::ALL.into_iter().filter(|k| k.applies(base)) {
            let dir_name = if kind.writes() { "write" } else { "read-only" };
            let file = if kind.writes() {
                self.copy(base, &data, dir_name)?
            } else {
                read_only.clone()
            };
            let dir = file.parent().unwrap_or(&self.work).to_path_buf();
            let (blk_args, qemu_program, qemu_args) =
                kind.command_lines(base, "disk.img", &mut rng);
            tally.commands += 1;
            let run = self.run(&self.blk, &blk_args, &dir);
            let mut fault = ro_fault(&run);
            let mut qemu_note = String::new();
            if fault == Some(Fault::Hang) {
                // Not blk's fault if QEMU cannot finish either.
                let qfile = self.copy(base, &data, "qemu")?;
                let q = self.run(
                    Path::new(qemu_program),
                    &qemu_args,
                    qfile.parent().unwrap_or(&self.work),
                );
                if q.ending == Ending::Hung {
                    tally.hangs_as_qemu += 1;
                    fault = None;
                }
            }
            if run.success() {
                tally.succeeded += 1;
            } else {
                tally.refused += 1;
            }
            if fault.is_none() && !kind.writes() {
                let now = std::fs::read(&file).unwrap_or_default();
                if now != data {
                    fault = Some(Fault::ReadOnlyChanged);
                    // Later read-only commands start from the mutant again.
                    std::fs::write(&read_only, &data).map_err(|e| e.to_string())?;
                }
            }
            if fault.is_none() && kind.writes() {
                // Judged whether blk succeeded or refused: a refusal must leave the image no worse either.
                let mut worse = self.judge(base, &file).badness() > before.badness();
                if kind == Kind::Commit {
                    worse |= self.judge(base, &dir.join(BACKING)).badness() > (0, 0);
                }
                if worse {
                    // As bad as QEMU's own command leaves it?
                    let qfile = self.copy(base, &data, "qemu")?;
                    let qdir = qfile.parent().unwrap_or(&self.work).to_path_buf();
                    let q = self.run(Path::new(qemu_program), &qemu_args, &qdir);
                    let blk_after = self.judge(base, &file).badness();
                    let qemu_after = self.judge(base, &qfile);
                    // A QEMU command that aborts (a signal) or hangs counts as refusing, never as "as QEMU".
                    let qemu_exited = matches!(q.ending, Ending::Exited(_));
                    let as_qemu = qemu_after.badness() >= blk_after
                        && if run.success() {
                            q.success()
                        } else {
                            qemu_exited
                        };
                    if as_qemu {
                        tally.worse_as_qemu += 1;
                    } else if !run.success() {
                        tally.worse_blk_refused += 1;
                        fault = Some(Fault::MadeWorse);
                        qemu_note = format!(
                            "; blk refused but changed the image; QEMU's {qemu_program} ended {:?}, after: {qemu_after:?}",
                            q.ending
                        );
                    } else if q.success() {
                        tally.worse_qemu_less += 1;
                        fault = Some(Fault::MadeWorse);
                        qemu_note =
                            format!("; QEMU's {qemu_program} succeeded, after: {qemu_after:?}");
                    } else {
                        tally.worse_qemu_refused += 1;
                        fault = Some(Fault::MadeWorse);
                        qemu_note = format!(
                            "; QEMU's {qemu_program} refused ({:?}): {}",
                            q.ending,
                            campaign::first_line(&q.stderr)
                        );
                    }
                }
            }
            if let Some(fault) = fault {
                tally.count(fault);
                let after = if kind.writes() {
                    format!("; after: {:?}", self.judge(base, &file))
                } else {
                    String::new()
                };
                failures.push(format!(
                    "mutant {index} ({}; {what}): `blk {}`: {fault:?} ({:?}) {}; before: {before:?}{after}{qemu_note}",
                    base.name,
                    blk_args.join(" "),
                    run.ending,
                    campaign::first_line(&run.stderr),
                ));
            }
        }
        if !failures.is_empty() {
            let keep = self.failures.join(format!("mutant-{index}"));
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join("disk.img"), &data);
            if base.extra == Extra::Backing {
                let _ = std::fs::copy(self.bases_dir.join(BACKING), keep.join(BACKING));
            }
        }
        let _ = std::fs::remove_dir_all(&ro_dir);
        Ok(failures)
    }
}

/// `cargo xtask mutate`: the campaign, its summary table, and an error if anything failed.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let chosen: Vec<&Base> = BASES
        .iter()
        .filter(|b| options.only.is_empty() || options.only.iter().any(|o| o == b.name))
        .collect();
    let blk = campaign::build_blk(root, options.release)?;
    let scratch = campaign::scratch_dir("blk-mutate-")?;
    let bases_dir = scratch.path().join("bases");
    std::fs::create_dir_all(&bases_dir).map_err(|e| e.to_string())?;
    for base in &chosen {
        bases::make(&bases_dir, base)?;
    }
    let campaign = Campaign {
        blk,
        limits: Limits {
            address_space: MEMORY_CAP,
            timeout: Duration::from_secs(if options.release { 10 } else { 30 }),
        },
        bases_dir,
        work: scratch.path().join("work"),
        failures: root
            .join("target")
            .join("mutate-failures")
            .join(options.seed.to_string()),
        seed: options.seed,
    };
    println!(
        "mutate campaign: seed {} ({} mutants of {} bases; reproduce one with `cargo xtask mutate --seed {} --mutant I`)",
        options.seed,
        options.mutant.map_or(options.mutants, |_| 1),
        chosen.len(),
        options.seed
    );
    let started = Instant::now();
    let mut tallies = vec![Tally::default(); chosen.len()];
    let mut failures = Vec::new();
    let indexes: Vec<u64> = match options.mutant {
        Some(i) => vec![i],
        None => (0..options.mutants).collect(),
    };
    for (n, &index) in indexes.iter().enumerate() {
        let which = (index % chosen.len() as u64) as usize;
        let lines = campaign.mutant(index, chosen[which], &mut tallies[which])?;
        for line in &lines {
            println!("  FAIL {line}");
        }
        failures.extend(lines);
        if (n + 1) % 250 == 0 {
            println!(
                "  {} mutants in {:.0}s, {} failure(s)",
                n + 1,
                started.elapsed().as_secs_f64(),
                failures.len()
            );
        }
    }
    let mut total = Tally::default();
    let mut rows = Vec::new();
    for (base, tally) in chosen.iter().zip(&tallies) {
        total.add(tally);
        rows.push(tally.row(base.name));
    }
    rows.push(total.row("total"));
    println!();
    println!(
        "mutate campaign summary (seed {}, {:.0}s):",
        options.seed,
        started.elapsed().as_secs_f64()
    );
    campaign::print_table(
        &[
            "base",
            "mutants",
            "checkable",
            "commands",
            "blk ok",
            "blk refused",
            "panics",
            "signals",
            "memory",
            "hangs",
            "ro changed",
            "worse, QEMU refuses/aborts",
            "worse than QEMU",
            "worse, blk refused",
            "worse as QEMU",
        ],
        &rows,
    );
    if total.failures() > 0 {
        return Err(format!(
            "mutate campaign: {} failure(s) (seed {}; mutants kept under {})",
            total.failures(),
            options.seed,
            campaign.failures.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args: Vec<String> = [
            "--mutants",
            "9",
            "--seed",
            "4",
            "--mutant",
            "3",
            "--release",
        ]
        .map(String::from)
        .to_vec();
        let o = parse_args(&args).unwrap();
        assert_eq!(
            (o.mutants, o.seed, o.mutant, o.release),
            (9, 4, Some(3), true)
        );
        assert!(parse_args(&["--only".into(), "nope".into()]).is_err());
    }

    #[test]
    fn commands_apply_by_format() {
        let vhd = BASES.iter().find(|b| b.format == "vpc").unwrap();
        assert!(!Kind::Resize.applies(vhd) && Kind::Write.applies(vhd));
        assert!(Kind::Write.writes() && !Kind::Read.writes());
    }
}
