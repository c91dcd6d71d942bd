//! The comparison suite's results: medians per contender, the ratios against their targets, printed as a
//! table and written as Markdown (with the machine, date and commit) for `docs/performance.md`.

use std::path::Path;
use std::process::Command;

use crate::bench_compare::median;
use crate::bench_scenarios::RatioCheck;
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
}

impl ContenderResult {
    /// The median time of the successful runs.
    pub fn median(&self) -> Option<f64> {
        median(&self.times)
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
    fn median_of(&self, name: &str) -> Option<f64> {
        self.contenders
            .iter()
            .find(|c| c.name == name)
            .and_then(ContenderResult::median)
    }

    /// The measured value of `check`.
    pub fn ratio(&self, check: &RatioCheck) -> Ratio {
        let subject = self.median_of(check.subject);
        let others: Option<Vec<f64>> = check.faster_of.iter().map(|n| self.median_of(n)).collect();
        let best = others.and_then(|o| o.into_iter().reduce(f64::min));
        let value = match (subject, best) {
            (Some(s), Some(b)) if s > 0.0 => Some(b / s),
            _ => None,
        };
        Ratio {
            value,
            pass: value.is_some_and(|v| v >= check.target),
        }
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
                "  {:<16} median {:>8} s  ({} ok, {} failed){}\n",
                c.name,
                seconds(c.median()),
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
                "  {:<36} {:>8}  target >= {:.2}x  {}\n",
                check.label,
                ratio_text(&ratio),
                check.target,
                verdict(&ratio)
            ));
        }
    }
    out
}

/// The results as Markdown, with how and where they were measured.
pub fn markdown(
    results: &[ScenarioResult],
    machine: &Machine,
    command: &str,
    runs: usize,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "### blk bench vs qemu-img bench ({})\n\n",
        machine.date
    ));
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
                "| {}. {} | {} | {} | >= {:.2}x | {} |\n",
                r.id,
                r.title,
                check.label,
                ratio_text(&ratio),
                check.target,
                verdict(&ratio)
            ));
        }
    }
    out.push_str(
        "\n| scenario | contender | median (s) | runs ok / failed | backend | command |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for r in results {
        for c in &r.contenders {
            out.push_str(&format!(
                "| {} | {} | {} | {} / {} | {} | `{}` |\n",
                r.id,
                c.name,
                seconds(c.median()),
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
        let check = |faster_of, target| RatioCheck {
            label: "x",
            subject: "blk",
            faster_of,
            target,
        };
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
}
