//! `cargo xtask parity [--filter STR] [--verbose] [--keep] [--jobs N] [--blk PATH]`: the differential parity
//! suite. Every row of `xtask/parity/table.txt` runs with qemu-img/qemu-io and with blk on twin copies of the
//! fixtures (`xtask/parity/fixtures.txt`), comparing exit codes, stdout, the number of stderr lines and the
//! images left behind (see [`runner`]). A row that differs is either a documented difference (marked
//! `=> KEY` in the table, its reason in `xtask/parity/differences.txt`) or unexpected; any unexpected
//! difference fails the command. `docs/parity.md` explains the suite.
//!
//! | file | concern |
//! |---|---|
//! | [`table`] | the data files: rows, fixture steps, difference reasons |
//! | [`runner`] | twin directories, running both programs with a timeout, comparing what they left |
//! | [`normalise`] | what may differ in output (paths, program names, timings) and line diffs |
//! | [`report`] | counting and printing the results |

pub mod normalise;
pub mod report;
pub mod runner;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use crate::cmd;
use report::{Class, Report};
use runner::{Context, RowResult};
use table::Row;

/// Where the data files live, relative to the workspace root.
pub const DATA_DIR: &str = "xtask/parity";

/// The command line of `cargo xtask parity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Only rows whose text contains this, or whose marker does (`--filter '=> luks'`).
    pub filter: Option<String>,
    /// Print every row's outputs, not only the unexpected differences.
    pub verbose: bool,
    /// Keep the twin directories (their path is printed).
    pub keep: bool,
    /// Rows run at once.
    pub jobs: usize,
    /// The blk binary to test instead of building `blk` from the workspace.
    pub blk: Option<PathBuf>,
}

/// Parses `cargo xtask parity`'s arguments.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        jobs: 2,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--filter" => options.filter = Some(value("--filter")?),
            "--verbose" | "-v" => options.verbose = true,
            "--keep" => options.keep = true,
            "--jobs" | "-j" => {
                let n = value("--jobs")?;
                options.jobs = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--jobs: `{n}` is not a positive number"))?;
            }
            "--blk" => options.blk = Some(PathBuf::from(value("--blk")?)),
            other => return Err(format!("unknown parity option `{other}`")),
        }
    }
    Ok(options)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds the workspace's blk (debug, as `cargo test` does) and returns the binary's path.
fn build_blk(root: &Path) -> Result<PathBuf, String> {
    let mut command = cmd::cargo_command(root);
    command.args(["build", "-p", "blk", "--bin", "blk"]);
    println!("--> {}", cmd::display(&command));
    cmd::run(&mut command)?;
    let metadata: Value =
        serde_json::from_str(&cmd::cargo_metadata_no_deps(&root.join("Cargo.toml"))?)
            .map_err(|e| format!("unexpected `cargo metadata` output: {e}"))?;
    let target = metadata["target_directory"]
        .as_str()
        .ok_or("`cargo metadata` names no target directory")?;
    Ok(Path::new(target).join("debug").join("blk"))
}

/// Makes the fixtures every row starts from, in `dir`.
fn make_fixtures(recipe: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let logs = dir.join("..");
    for step in table::parse_fixtures(recipe)? {
        let outcome = runner::run_program(
            Path::new(&step.words[0]),
            &step.words[1..],
            dir,
            &logs,
            "fixture",
            runner::TIMEOUT,
        )?;
        if outcome.code != 0 && !step.may_fail {
            return Err(format!(
                "fixtures line {}: `{}` failed ({}): {}",
                step.line,
                step.words.join(" "),
                outcome.code,
                outcome.stderr.trim()
            ));
        }
    }
    for log in ["fixture.stdout", "fixture.stderr"] {
        // Written by the steps above; gone already only if no step ran.
        let _ = std::fs::remove_file(logs.join(log));
    }
    Ok(())
}

/// Runs `rows` on `jobs` threads; results in row order.
fn run_rows(rows: &[Row], context: &Context, jobs: usize) -> Result<Vec<RowResult>, String> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RowResult, String>>>> = Mutex::new(vec![None; rows.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(rows.len()).max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(row) = rows.get(i) else { break };
                let result = runner::run_row(row, context);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .map_err(|_| "a row's thread panicked".to_string())?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a row was not run".to_string())))
        .collect()
}

/// Runs the suite in the workspace at `root` with the options `args`.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let data = root.join(DATA_DIR);
    let rows = table::parse_table(&read(&data.join("table.txt"))?)?;
    let differences = table::parse_differences(&read(&data.join("differences.txt"))?)?;
    table::check_keys(&rows, &differences)?;
    let recipe = read(&data.join("fixtures.txt"))?;
    let selected: Vec<Row> = rows
        .iter()
        .filter(|r| options.filter.as_ref().is_none_or(|f| r.matches(f)))
        .cloned()
        .collect();

    let blk = match &options.blk {
        Some(path) => path.clone(),
        None => build_blk(root)?,
    };
    let work = std::env::temp_dir().join(format!("blk-parity-{}", std::process::id()));
    let fixtures = work.join("fixtures");
    let started = Instant::now();
    make_fixtures(&recipe, &fixtures)?;
    let needs = runner::fixture_needs(&fixtures, &work)?;
    let context = Context {
        fixtures,
        needs,
        blk: std::fs::canonicalize(&blk).map_err(|e| format!("{}: {e}", blk.display()))?,
        work: work.clone(),
        keep: options.keep,
    };
    println!(
        "parity: {} of {} rows, {} at a time, blk = {}",
        selected.len(),
        rows.len(),
        options.jobs,
        context.blk.display()
    );
    let results = run_rows(&selected, &context, options.jobs);
    if options.keep {
        println!("parity: twin directories kept under {}", work.display());
    } else {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    let results = results?;
    let report = Report::new(&selected, &results, &differences);
    report.print(options.verbose);
    println!("parity: {:.1}s", started.elapsed().as_secs_f64());
    match report.count(Class::Unexpected) {
        0 => Ok(()),
        n => Err(format!("{n} unexpected parity differences")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&args("--filter convert -v --jobs 1")).unwrap();
        assert_eq!(o.filter.as_deref(), Some("convert"));
        assert!(o.verbose && !o.keep);
        assert_eq!(o.jobs, 1);
        assert_eq!(parse_args(&[]).unwrap().jobs, 2);
        assert!(parse_args(&args("--jobs 0")).is_err());
        assert!(parse_args(&args("--filter")).is_err());
        assert!(parse_args(&args("--bogus")).is_err());
    }

    /// The shipped data files parse, and every difference key is used and explained.
    #[test]
    fn data_files_are_consistent() {
        let data = cmd::workspace_root().join(DATA_DIR);
        let rows = table::parse_table(&read(&data.join("table.txt")).unwrap()).unwrap();
        let differences =
            table::parse_differences(&read(&data.join("differences.txt")).unwrap()).unwrap();
        table::check_keys(&rows, &differences).unwrap();
        table::parse_fixtures(&read(&data.join("fixtures.txt")).unwrap()).unwrap();
        assert!(rows.len() >= 250, "the table has {} rows", rows.len());
    }
}
