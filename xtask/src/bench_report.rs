//! The `blk bench` suites' results: medians per contender (seconds, IOPS, CPU time per request), the ratios
//! against their targets, printed as a table and written as Markdown (with the machine, date and commit) for
//! `docs/performance.md`.

use std::path::Path;
use std::process::Command;

use crate::bench_compare::median;
use crate::bench_scenarios::{Measure, RatioCheck};
use crate::cmd;

/// The runs of one contender.
#[derive(Debug, Clone)]
pub struct ContenderResult {
    /// Its name in the scenario.
    pub name: &'static str,
    /// Its command line (image by file name).
    pub command: String,
    /// Seconds of each successful run.
    pub times: Vec<f64>,
    /// Why each failed run failed.
    pub failures: Vec<String>,
    /// The backend blk reported (blk contenders).
    pub backend: Option<String>,
    /// Requests per run (its `-c`), when known.
    pub requests: Option<u64>,
    /// User + system CPU seconds of each successful run (the whole process: start, open and the run).
    pub cpu_seconds: Vec<f64>,
}

impl ContenderResult {
    /// The median time of the successful runs.
    pub fn median(&self) -> Option<f64> {
        median(&self.times)
    }

    /// Requests per second at the median time.
    pub fn iops(&self) -> Option<f64> {
        let requests = self.requests? as f64;
        self.median().filter(|&s| s > 0.0).map(|s| requests / s)
    }

    /// The median CPU time per request, in microseconds.
    pub fn cpu_per_request_us(&self) -> Option<f64> {
        let requests = self.requests.filter(|&r| r > 0)? as f64;
        median(&self.cpu_seconds).map(|cpu| cpu * 1e6 / requests)
    }
}

/// The results of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Its number.
    pub id: u32,
    /// What it measures.
    pub title: &'static str,
    /// Per contender.
    pub contenders: Vec<ContenderResult>,
    /// The ratios it reports.
    pub checks: Vec<RatioCheck>,
    /// A failure preparing the scenario (warming the cache), if any.
    pub setup_error: Option<String>,
}

/// A ratio as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// `min(time of the others) / time(subject)`, when every median exists.
    pub value: Option<f64>,
    /// Whether it reaches the target.
    pub pass: bool,
}

impl ScenarioResult {
    fn measured(&self, name: &str, measure: Measure) -> Option<f64> {
        let contender = self.contenders.iter().find(|c| c.name == name)?;
        match measure {
            Measure::Speed => contender.median(),
            Measure::CpuPerRequest => contender.cpu_per_request_us(),
        }
    }

    /// The measured value of `check`.
    pub fn ratio(&self, check: &RatioCheck) -> Ratio {
        let subject = self.measured(check.subject, check.measure);
        let others: Option<Vec<f64>> = check
            .faster_of
            .iter()
            .map(|n| self.measured(n, check.measure))
            .collect();
        // Of the others, the fastest (least time) or the thriftiest (least CPU) counts.
        let best = others.and_then(|o| o.into_iter().reduce(f64::min));
        let value = match (check.measure, subject, best) {
            (Measure::Speed, Some(s), Some(b)) if s > 0.0 => Some(b / s),
            (Measure::CpuPerRequest, Some(s), Some(b)) if b > 0.0 => Some(s / b),
            _ => None,
        };
        let pass = match check.measure {
            Measure::Speed => value.is_some_and(|v| v >= check.target),
            Measure::CpuPerRequest => value.is_some_and(|v| v <= check.target),
        };
        Ratio { value, pass }
    }
}

/// What the results were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `date -u`.
    pub date: String,
    /// `uname -r`.
    pub kernel: String,
    /// The CPU model and count from `/proc/cpuinfo`.
    pub cpu: String,
    /// The first line of `qemu-img --version`.
    pub qemu_img: String,
    /// `git rev-parse --short HEAD`, with `+dirty` when the work tree has changes.
    pub commit: String,
}

impl Machine {
    /// Asks the system; anything unknown reads `unknown`.
    pub fn probe(qemu_img: &Path) -> Machine {
        let run = |program: &Path, args: &[&str]| {
            let mut command = Command::new(program);
            command.args(args);
            cmd::output(&mut command)
                .ok()
                .and_then(|o| o.lines().next().map(|l| l.trim().to_string()))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "unknown".to_string())
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim())
            })
            .unwrap_or("unknown");
        let count = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let dirty = {
            let mut command = Command::new("git");
            command.args(["status", "--porcelain"]);
            cmd::output(&mut command).is_ok_and(|o| !o.trim().is_empty())
        };
        let mut commit = run(Path::new("git"), &["rev-parse", "--short", "HEAD"]);
        if dirty {
            commit.push_str("+dirty");
        }
        Machine {
            date: run(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
            kernel: run(Path::new("uname"), &["-r"]),
            cpu: format!("{model} ({count} CPUs)"),
            qemu_img: run(qemu_img, &["--version"]),
            commit,
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "failed".to_string(), |s| format!("{s:.3}"))
}

fn verdict(ratio: &Ratio) -> &'static str {
    match (ratio.value, ratio.pass) {
        (None, _) => "n/a",
        (Some(_), true) => "pass",
        (Some(_), false) => "FAIL",
    }
}

fn target_text(check: &RatioCheck) -> String {
    match check.measure {
        Measure::Speed => format!(">= {:.2}x", check.target),
        Measure::CpuPerRequest => format!("<= {:.2}x", check.target),
    }
}

fn iops_text(c: &ContenderResult) -> String {
    c.iops()
        .map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

fn cpu_text(c: &ContenderResult) -> String {
    c.cpu_per_request_us()
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

fn ratio_text(ratio: &Ratio) -> String {
    ratio
        .value
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2}x"))
}

/// The results as a plain-text table.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(&format!("scenario {}: {}\n", r.id, r.title));
        if let Some(e) = &r.setup_error {
            out.push_str(&format!("  setup failed: {e}\n"));
        }
        for c in &r.contenders {
            out.push_str(&format!(
                "  {:<16} median {:>8} s {:>9} IOPS {:>7} us CPU/req  ({} ok, {} failed){}\n",
                c.name,
                seconds(c.median()),
                iops_text(c),
                cpu_text(c),
                c.times.len(),
                c.failures.len(),
                c.backend
                    .as_deref()
                    .map(|b| format!("  [{b}]"))
                    .unwrap_or_default()
            ));
            for f in c.failures.iter().take(2) {
                out.push_str(&format!("      failed: {f}\n"));
            }
        }
        for check in &r.checks {
            let ratio = r.ratio(check);
            out.push_str(&format!(
                "  {:<36} {:>8}  target {}  {}\n",
                check.label,
                ratio_text(&ratio),
                target_text(check),
                verdict(&ratio)
            ));
        }
    }
    out
}

/// The heading of the comparison suite's report.
pub const COMPARE_HEADING: &str = "blk bench vs qemu-img bench";

/// The results as Markdown under `### {heading} ({date})`, with how and where they were measured.
pub fn markdown(
    heading: &str,
    results: &[ScenarioResult],
    machine: &Machine,
    command: &str,
    runs: usize,
) -> String {
    let mut out = String::new();
    out.push_str(&format!("### {heading} ({})\n\n", machine.date));
    out.push_str(&format!("- Command: `{command}` (median of {runs} runs per contender, contenders alternated run by run)\n"));
    out.push_str(&format!(
        "- Machine: {}, kernel {}\n",
        machine.cpu, machine.kernel
    ));
    out.push_str(&format!("- {}\n", machine.qemu_img));
    out.push_str(&format!("- Commit: {}\n\n", machine.commit));
    out.push_str("| scenario | ratio | measured | target | result |\n|---|---|---|---|---|\n");
    for r in results {
        for check in &r.checks {
            let ratio = r.ratio(check);
            out.push_str(&format!(
                "| {}. {} | {} | {} | {} | {} |\n",
                r.id,
                r.title,
                check.label,
                ratio_text(&ratio),
                target_text(check),
                verdict(&ratio)
            ));
        }
    }
    out.push_str(
        "\n| scenario | contender | median (s) | IOPS | CPU/request (us) | runs ok / failed | backend | command |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in results {
        for c in &r.contenders {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} / {} | {} | `{}` |\n",
                r.id,
                c.name,
                seconds(c.median()),
                iops_text(c),
                cpu_text(c),
                c.times.len(),
                c.failures.len(),
                c.backend.as_deref().unwrap_or("-"),
                c.command
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contender(name: &'static str, times: &[f64]) -> ContenderResult {
        ContenderResult {
            name,
            command: format!("{name} bench"),
            times: times.to_vec(),
            failures: Vec::new(),
            backend: None,
            requests: Some(1000),
            cpu_seconds: times.iter().map(|t| t / 2.0).collect(),
        }
    }

    #[test]
    fn ratios_use_the_faster_of_the_others() {
        let result = ScenarioResult {
            id: 1,
            title: "t",
            contenders: vec![
                contender("blk", &[1.0, 1.1, 0.9]),
                contender("q1", &[3.0]),
                contender("q2", &[2.0]),
                contender("broken", &[]),
            ],
            checks: Vec::new(),
            setup_error: None,
        };
        let check = |faster_of, target| RatioCheck::speed("x", "blk", faster_of, target);
        assert_eq!(
            result.ratio(&check(vec!["q1", "q2"], 1.5)),
            Ratio {
                value: Some(2.0),
                pass: true
            }
        );
        assert!(!result.ratio(&check(vec!["q1", "q2"], 2.5)).pass);
        assert_eq!(
            result.ratio(&check(vec!["broken"], 1.0)),
            Ratio {
                value: None,
                pass: false
            }
        );
        let text = table(&[ScenarioResult {
            checks: vec![check(vec!["q2"], 1.0)],
            ..result.clone()
        }]);
        assert!(
            text.contains("2.00x") && text.contains("pass") && text.contains("failed"),
            "{text}"
        );
    }

    #[test]
    fn cpu_checks_want_less_and_iops_follow_the_median() {
        let mut blk = contender("blk", &[1.0]);
        blk.cpu_seconds = vec![0.003, 0.001, 0.002];
        let mut qemu = contender("qemu", &[2.0]);
        qemu.cpu_seconds = vec![0.004];
        assert_eq!(blk.iops(), Some(1000.0));
        assert_eq!(blk.cpu_per_request_us(), Some(2.0));
        let result = ScenarioResult {
            id: 1,
            title: "t",
            contenders: vec![blk, qemu],
            checks: Vec::new(),
            setup_error: None,
        };
        let check = |target| RatioCheck {
            measure: Measure::CpuPerRequest,
            ..RatioCheck::speed("cpu", "blk", vec!["qemu"], target)
        };
        assert_eq!(
            result.ratio(&check(0.7)),
            Ratio {
                value: Some(0.5),
                pass: true
            }
        );
        assert!(!result.ratio(&check(0.4)).pass);
        let text = markdown(
            "h",
            &[ScenarioResult {
                checks: vec![check(0.7)],
                ..result
            }],
            &Machine::probe(Path::new("/nonexistent/qemu-img")),
            "cmd",
            1,
        );
        assert!(
            text.contains("<= 0.70x") && text.contains("| 1000 | 2.00 |"),
            "{text}"
        );
    }
}
