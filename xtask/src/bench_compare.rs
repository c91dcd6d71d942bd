//! The comparison suite of `cargo xtask bench` (`--suite compare`): `blk bench` against `qemu-img bench` on
//! the same images, alternating the contenders run by run, medians of several runs, and the speed ratios
//! issue 7 asks for (see `docs/performance.md`, "Comparisons with QEMU").
//!
//! Each [`Scenario`] (module [`bench_scenarios`](crate::bench_scenarios)) names its contenders (a tool, an image, the `bench` arguments) and its [`RatioCheck`](crate::bench_scenarios::RatioCheck)s.
//! Every run's time is the one the tool prints (`Run completed in X seconds.`: the I/O loop alone, without
//! process start or image open), the same measure for both tools. A run that fails or hangs is reported in
//! the table; it never stops the suite.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bench_images::{Image, ImageSet};
use crate::bench_report::{self, ContenderResult, ScenarioResult};
use crate::bench_scenarios::{
    scenarios, with_baseline, Contender, Preparation, Scale, Scenario, Tool,
};
use crate::cmd;

/// How the suite runs (`cargo xtask bench --suite compare [--runs N] [--quick] [--scenario K]...`).
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Runs per contender (the median is reported).
    pub runs: usize,
    /// Tiny images and counts, one run: a smoke test of the suite.
    pub quick: bool,
    /// Only these scenarios (1-based); empty: all.
    pub scenarios: Vec<u32>,
    /// `--baseline-blk PATH`: another `blk` binary (an older build) run beside every blk contender, with a
    /// ratio check that the current build is at most 5% slower.
    pub baseline_blk: Option<PathBuf>,
}

impl Default for CompareOptions {
    fn default() -> CompareOptions {
        CompareOptions {
            runs: 5,
            quick: false,
            scenarios: Vec::new(),
            baseline_blk: None,
        }
    }
}

impl CompareOptions {
    /// Takes the suite's options out of `args`, leaving the others (for criterion).
    pub fn extract(args: &mut Vec<String>) -> Result<CompareOptions, String> {
        let mut options = CompareOptions::default();
        let mut rest = Vec::new();
        let mut runs_given = false;
        let mut it = std::mem::take(args).into_iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--runs" => {
                    let n = it.next().ok_or("--runs needs a number")?;
                    options.runs = n
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--runs: `{n}` is not a positive number"))?;
                    runs_given = true;
                }
                "--quick" => options.quick = true,
                "--baseline-blk" => {
                    let path = it.next().ok_or("--baseline-blk needs a blk binary")?;
                    options.baseline_blk = Some(PathBuf::from(path));
                }
                "--scenario" => {
                    let k = it.next().ok_or("--scenario needs a number")?;
                    // Whether the suite has it is checked when it runs (see `select`).
                    let k: u32 = k
                        .parse()
                        .ok()
                        .filter(|&k| k > 0)
                        .ok_or_else(|| format!("--scenario: `{k}` is not a positive number"))?;
                    options.scenarios.push(k);
                }
                _ => rest.push(arg),
            }
        }
        if options.quick && !runs_given {
            options.runs = 1;
        }
        *args = rest;
        Ok(options)
    }

    /// Whether scenario `id` runs.
    pub fn selects(&self, id: u32) -> bool {
        self.scenarios.is_empty() || self.scenarios.contains(&id)
    }
}

/// Where the programs and files are.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The `blk` binary (release build).
    pub blk: PathBuf,
    /// The `qemu-img` binary.
    pub qemu_img: PathBuf,
    /// The target directory: images go to `bench-images/` under it, the report to `bench-compare.md`.
    pub target_dir: PathBuf,
    /// The longest a run may take before it is killed and reported as failed.
    pub run_timeout: Duration,
    /// The baseline `blk` binary of [`CompareOptions::baseline_blk`].
    pub baseline_blk: Option<PathBuf>,
}

/// The outcome of one run: its time, the backend blk named, or why it failed.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Seconds as the tool printed them, or the failure.
    pub seconds: Result<f64, String>,
    /// The backend blk ran on: the `backend: ...` line older blk binaries print, the fallback its warning
    /// names, or else the `-i` asked for (blk says nothing when that one runs, as qemu-img).
    pub backend: Option<String>,
    /// User + system CPU time of the process (all its threads) in seconds, from `wait4`; `None` when it was
    /// not reaped normally (it could not start, or was killed after the timeout).
    pub cpu_seconds: Option<f64>,
}

/// The command line of one run of `contender` on `image`.
pub fn command_for(env: &Environment, contender: &Contender, image: &Path) -> Command {
    let mut command = match contender.tool {
        Tool::Blk => Command::new(&env.blk),
        Tool::BlkBaseline => Command::new(env.baseline_blk.as_ref().unwrap_or(&env.blk)),
        Tool::QemuImg => Command::new(&env.qemu_img),
    };
    command
        .arg("bench")
        .args(["-f", contender.image.format()])
        .args(&contender.args)
        .arg(image);
    command
}

/// Runs `command`, killing it after `timeout`, and reads the time it printed.
pub fn run_once(mut command: Command, timeout: Duration) -> RunOutcome {
    let shown = cmd::display(&command);
    let asked = {
        let args: Vec<_> = command.get_args().collect();
        args.windows(2)
            .find(|w| w[0] == "-i")
            .map(|w| w[1].to_string_lossy().into_owned())
    };
    let failed = |why: String| RunOutcome {
        seconds: Err(why),
        backend: None,
        cpu_seconds: None,
    };
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start `{shown}`: {e}")),
    };
    let start = Instant::now();
    let (status, cpu) = loop {
        match reap(&child) {
            Ok(Some(done)) => break done,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(format!(
                    "`{shown}` did not finish in {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return failed(format!("waiting for `{shown}`: {e}")),
        }
    };
    // The outputs are a few lines: they fit in the pipes, so reading them after the exit cannot block.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let backend = stderr
        .lines()
        .find_map(|l| l.strip_prefix("backend: "))
        .or_else(|| {
            stderr
                .lines()
                .find_map(|l| l.strip_prefix("blk: warning: "))
        })
        .map(str::to_string)
        .or(asked);
    if !status.success() {
        let why = stderr.lines().last().unwrap_or("no message").to_string();
        return RunOutcome {
            seconds: Err(format!("`{shown}` failed ({status}): {why}")),
            backend,
            cpu_seconds: Some(cpu),
        };
    }
    let seconds = parse_seconds(&stdout)
        .ok_or_else(|| format!("`{shown}` printed no `Run completed in` line: {stdout:?}"));
    RunOutcome {
        seconds,
        backend,
        cpu_seconds: Some(cpu),
    }
}

/// Reaps `child` if it has exited (`wait4` with `WNOHANG`): its exit status and the CPU time (user + system,
/// in seconds, every thread of it, io_uring's kernel workers included) it used. `None` while it runs.
///
/// `wait4` reports the usage of this one child, where `getrusage(RUSAGE_CHILDREN)` would add every child any
/// thread of this process reaped meanwhile. After it, `child` is reaped: its `wait`/`try_wait` must not run.
fn reap(child: &std::process::Child) -> std::io::Result<Option<(ExitStatus, f64)>> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| std::io::Error::other("child pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct of integers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid, writable, live for the call; `pid` is our own child, not yet
    // reaped (std waits for it only in `wait`/`try_wait`, which the callers no longer call once this reaped it).
    let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    match reaped {
        0 => Ok(None),
        r if r == pid => {
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            Ok(Some((
                ExitStatus::from_raw(status),
                seconds(usage.ru_utime) + seconds(usage.ru_stime),
            )))
        }
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// The time in `Run completed in X seconds.`.
pub fn parse_seconds(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        line.strip_prefix("Run completed in ")?
            .strip_suffix(" seconds.")?
            .trim()
            .parse()
            .ok()
    })
}

/// The median of `values` (the mean of the middle two for an even count), or `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// The distinct images of the `scenarios`' contenders, in order of first use.
pub fn images_of(scenarios: &[Scenario]) -> Vec<Image> {
    let mut images = Vec::new();
    for c in scenarios.iter().flat_map(|s| &s.contenders) {
        if !images.contains(&c.image) {
            images.push(c.image);
        }
    }
    images
}

/// Does `scenario`'s [`Preparation`] to its images.
fn prepare(env: &Environment, images: &ImageSet, scenario: &Scenario) -> Result<(), String> {
    let used = images_of(std::slice::from_ref(scenario));
    match scenario.prepare {
        Preparation::None => Ok(()),
        Preparation::WarmCache => used.into_iter().try_for_each(|i| images.warm_cache(i)),
        Preparation::WriteOnce => used.into_iter().try_for_each(|image| {
            images.drop_cache(image)?;
            const MIB: u64 = 1 << 20;
            let mut command = Command::new(&env.blk);
            command
                .arg("bench")
                .args(["-f", image.format(), "-w", "-t", "writeback", "-d", "8"])
                .args(["-s", &MIB.to_string(), "-S", &MIB.to_string()])
                .args(["-c", &(images.size() / MIB).max(1).to_string()])
                .arg(images.path(image));
            run_once(command, env.run_timeout).seconds?;
            // Written back before the runs, so that no run shares the disk with this pass's writeback.
            images.sync(image)
        }),
    }
}

/// Runs one scenario `runs` times per contender, alternating them (the order rotates each run).
pub fn run_scenario(
    env: &Environment,
    images: &ImageSet,
    scenario: &Scenario,
    runs: usize,
) -> ScenarioResult {
    let mut results: Vec<ContenderResult> = scenario
        .contenders
        .iter()
        .map(|c| ContenderResult {
            name: c.name,
            command: cmd::display(&command_for(env, c, Path::new(c.image.file_name()))),
            times: Vec::new(),
            failures: Vec::new(),
            backend: None,
            requests: c.requests(),
            cpu_seconds: Vec::new(),
        })
        .collect();
    let setup_error = prepare(env, images, scenario).err();
    let n = scenario.contenders.len();
    for run in 0..runs {
        for k in 0..n {
            let index = (run + k) % n;
            let (Some(contender), Some(result)) =
                (scenario.contenders.get(index), results.get_mut(index))
            else {
                continue;
            };
            if let Err(e) = images.make_fresh(contender.image) {
                result.failures.push(e);
                continue;
            }
            let command = command_for(env, contender, &images.path(contender.image));
            let outcome = run_once(command, env.run_timeout);
            match outcome.seconds {
                Ok(s) => {
                    result.times.push(s);
                    result.cpu_seconds.extend(outcome.cpu_seconds);
                }
                Err(e) => result.failures.push(e),
            }
            if outcome.backend.is_some() {
                result.backend = outcome.backend;
            }
            print!(".");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    }
    println!();
    ScenarioResult {
        id: scenario.id,
        title: scenario.title,
        contenders: results,
        checks: scenario.checks.clone(),
        setup_error,
    }
}

/// The scenarios of `all` that `options` select (`--scenario K`: each K must be one of them).
pub fn select(all: Vec<Scenario>, options: &CompareOptions) -> Result<Vec<Scenario>, String> {
    if let Some(k) = options
        .scenarios
        .iter()
        .find(|&&k| !all.iter().any(|s| s.id == k))
    {
        return Err(format!(
            "--scenario: this suite has no scenario {k} (it has 1 to {})",
            all.len()
        ));
    }
    Ok(all.into_iter().filter(|s| options.selects(s.id)).collect())
}

/// Makes the images `scenarios` use, `size` bytes each, in `dir` and runs each scenario `runs` times per
/// contender; the images are deleted at the end.
pub fn run_scenarios(
    env: &Environment,
    dir: &Path,
    size: u64,
    scenarios: &[Scenario],
    runs: usize,
) -> Result<Vec<ScenarioResult>, String> {
    println!("making {} MiB images in {}", size >> 20, dir.display());
    let images = ImageSet::create(dir, size, &env.qemu_img, &images_of(scenarios))?;
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        print!("scenario {}: {} ", scenario.id, scenario.title);
        results.push(run_scenario(env, &images, scenario, runs));
    }
    Ok(results)
}

/// Prints `results` as a table, writes them as Markdown under `heading` to `<target>/{file_name}`, and fails
/// (after reporting everything) when a run failed; ratios below target are reported, not errors.
pub fn report(
    env: &Environment,
    heading: &str,
    file_name: &str,
    results: &[ScenarioResult],
    command_line: &str,
    runs: usize,
) -> Result<(), String> {
    let machine = bench_report::Machine::probe(&env.qemu_img);
    let text = bench_report::table(results);
    println!("\n{text}");
    let markdown = bench_report::markdown(heading, results, &machine, command_line, runs);
    let report = env.target_dir.join(file_name);
    std::fs::write(&report, markdown)
        .map_err(|e| format!("cannot write {}: {e}", report.display()))?;
    println!("report: {}", report.display());
    let failed: usize = results
        .iter()
        .map(|r| {
            r.contenders.iter().map(|c| c.failures.len()).sum::<usize>()
                + usize::from(r.setup_error.is_some())
        })
        .sum();
    if failed > 0 {
        return Err(format!("{failed} bench runs failed (see the table above)"));
    }
    Ok(())
}

/// Runs the suite: makes the images, runs the selected scenarios, prints the table and writes the Markdown
/// report (`<target>/bench-compare.md`). Fails (after reporting everything) when a run failed; ratios below
/// target are reported, not errors.
pub fn run_suite(
    env: &Environment,
    options: &CompareOptions,
    command_line: &str,
) -> Result<(), String> {
    let scale = Scale::of(options);
    let selected: Vec<Scenario> = select(scenarios(&scale), options)?
        .into_iter()
        .map(|s| match options.baseline_blk {
            Some(_) => with_baseline(s),
            None => s,
        })
        .collect();
    run_on_disk(
        env,
        options,
        command_line,
        &selected,
        scale.image_size,
        (bench_report::COMPARE_HEADING, "bench-compare.md"),
    )
}

/// Runs `scenarios` (`--runs` times each) on `size`-byte images made in `<target>/bench-images/`, then
/// writes the report `(heading, file name under the target directory)`: what the comparison, scaling and
/// VHD/VHDX suites share. Fails (after reporting everything) when a run failed.
pub fn run_on_disk(
    env: &Environment,
    options: &CompareOptions,
    command_line: &str,
    scenarios: &[Scenario],
    size: u64,
    (heading, file): (&str, &str),
) -> Result<(), String> {
    let results = run_scenarios(
        env,
        &env.target_dir.join("bench-images"),
        size,
        scenarios,
        options.runs,
    )?;
    report(env, heading, file, &results, command_line, options.runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_taken_out_of_the_arguments() {
        let mut args = strings(&[
            "--runs",
            "3",
            "filter",
            "--scenario",
            "2",
            "--scenario",
            "6",
        ]);
        let o = CompareOptions::extract(&mut args).unwrap();
        assert_eq!(
            (o.runs, o.quick, o.scenarios.clone()),
            (3, false, vec![2, 6])
        );
        assert_eq!(args, ["filter"]);
        assert!(o.selects(2) && !o.selects(1));
        let mut args = strings(&["--quick"]);
        assert_eq!(CompareOptions::extract(&mut args).unwrap().runs, 1);
        for bad in [&["--runs", "0"][..], &["--scenario", "0"], &["--runs"]] {
            assert!(
                CompareOptions::extract(&mut strings(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_scenario_the_suite_lacks_is_refused() {
        let all = scenarios(&Scale::of(&CompareOptions::default()));
        let options = |args: &[&str]| CompareOptions::extract(&mut strings(args)).unwrap();
        assert_eq!(
            select(all.clone(), &options(&["--scenario", "6"]))
                .unwrap()
                .len(),
            1
        );
        let err = select(all, &options(&["--scenario", "7"])).unwrap_err();
        assert!(err.contains("no scenario 7"), "{err}");
    }

    #[test]
    fn medians_and_times() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            parse_seconds("Sending ...\nRun completed in 1.234 seconds.\n"),
            Some(1.234)
        );
        assert_eq!(parse_seconds("nothing"), None);
    }
}
