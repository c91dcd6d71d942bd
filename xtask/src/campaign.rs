//! What the reliability campaigns ([`crate::crash`], [`crate::mutate`]) share: a seeded generator, the `blk`
//! binary built for them, programs run under a memory cap and a timeout, and check reports (`qemu-img check`
//! and `blk check`, both `--output=json`).

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd;

/// A small deterministic generator (splitmix64): the same seed gives the same campaign.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for the `index`-th item of a campaign seeded with `seed`, independent of the others.
    pub fn derive(seed: u64, index: u64) -> Rng {
        let mut rng = Rng(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from the clock, for runs not given `--seed`.
pub fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Rng::new(now.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64() >> 16
}

/// The environment variable naming the directory the campaigns keep their images in (default: `/dev/shm`
/// when the machine has it, else the system's temporary directory).
pub const SCRATCH_ENV: &str = "BLK_CAMPAIGN_DIR";

/// A new temporary directory for a campaign's images, removed when dropped. In memory by default: a SIGKILL
/// loses nothing the kernel has, so a disk would only add the flushes' latency.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    let parent = match std::env::var_os(SCRATCH_ENV) {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))
}

/// Builds the `blk` binary (`--release` when `release`) and returns its path, read from cargo's JSON messages.
pub fn build_blk(root: &Path, release: bool) -> Result<PathBuf, String> {
    let mut command = cmd::cargo_command(root);
    command.args([
        "build",
        "-p",
        "blk",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        command.arg("--release");
    }
    println!("--> {}", cmd::display(&command));
    let out = cmd::output(&mut command)?;
    out.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "blk")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built no `blk` executable".to_string())
}

/// How a supervised program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the timeout and was killed.
    Hung,
    /// It could not be started.
    NotStarted(String),
}

/// A finished supervised program: how it ended, what it printed, how long it took.
#[derive(Debug, Clone)]
pub struct Finished {
    /// How it ended.
    pub ending: Ending,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Finished {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited(0)
    }

    /// Whether it panicked (Rust's exit status 101 with a panic message) or died of a signal.
    pub fn crashed(&self) -> bool {
        matches!(self.ending, Ending::Signal(_))
            || (self.ending == Ending::Exited(101) && self.stderr.contains("panicked"))
    }
}

/// Limits a supervised program runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `RLIMIT_AS`: the address space it may map, in bytes.
    pub address_space: u64,
    /// Wall-clock time before it is killed with SIGKILL.
    pub timeout: Duration,
}

/// Runs `command` to its end under `limits` (stdin closed, output captured), killing it at the timeout.
pub fn supervise(command: &mut Command, limits: Limits) -> Finished {
    let cap = limits.address_space;
    // SAFETY: the closure runs in the child between fork and exec; it only calls setrlimit, which is
    // async-signal-safe, on a stack value, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: cap,
                rlim_max: cap,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Finished {
                ending: Ending::NotStarted(e.to_string()),
                stdout: String::new(),
                stderr: String::new(),
                elapsed: started.elapsed(),
            }
        }
    };
    let readers = [
        child.stdout.take().map(drain),
        child.stderr.take().map(drain),
    ];
    let mut hung = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > limits.timeout => {
                hung = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    let [stdout, stderr] = readers.map(|r| {
        r.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    });
    let ending = match status {
        _ if hung => Ending::Hung,
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Signal(signal),
            (None, None) => Ending::NotStarted("no exit status".into()),
        },
        None => Ending::NotStarted("wait failed".into()),
    };
    Finished {
        ending,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never blocks the child).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // Output up to 4 MiB is kept; the rest is read and dropped.
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if bytes.len() < (4 << 20) {
                bytes.extend_from_slice(&chunk[..n]);
            }
        }
        bytes
    })
}

/// The counts of a `check --output=json` report (qemu-img's keys; absent counts are 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCounts {
    /// `corruptions`.
    pub corruptions: u64,
    /// `leaks`.
    pub leaks: u64,
    /// `check-errors`.
    pub check_errors: u64,
    /// `allocated-clusters`.
    pub allocated_clusters: u64,
    /// `total-clusters`.
    pub total_clusters: u64,
}

/// What a check said about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The image opened and was checked (exit status 0, 2 or 3).
    Checked(CheckCounts),
    /// The checker could not open or check the image (status 1, or no JSON): the message.
    Refused(String),
    /// The format has no check (status 63).
    NoCheck,
    /// The checker crashed or hung.
    Crashed(String),
}

impl CheckOutcome {
    /// How bad the outcome is, for "made worse" comparisons: (can't open, corruptions + check errors).
    pub fn badness(&self) -> (u8, u64) {
        match self {
            CheckOutcome::Checked(c) => (0, c.corruptions + c.check_errors),
            CheckOutcome::NoCheck => (0, 0),
            CheckOutcome::Refused(_) | CheckOutcome::Crashed(_) => (1, 0),
        }
    }
}

/// Parses a finished `check --output=json` run.
pub fn check_outcome(run: &Finished) -> CheckOutcome {
    match run.ending {
        Ending::Exited(63) => return CheckOutcome::NoCheck,
        Ending::Exited(0 | 2 | 3) => {}
        Ending::Exited(1) => return CheckOutcome::Refused(first_line(&run.stderr)),
        _ => {
            return CheckOutcome::Crashed(format!("{:?}: {}", run.ending, first_line(&run.stderr)))
        }
    }
    match serde_json::from_str::<Value>(&run.stdout) {
        Ok(json) => {
            let n = |key: &str| json[key].as_u64().unwrap_or(0);
            CheckOutcome::Checked(CheckCounts {
                corruptions: n("corruptions"),
                leaks: n("leaks"),
                check_errors: n("check-errors"),
                allocated_clusters: n("allocated-clusters"),
                total_clusters: n("total-clusters"),
            })
        }
        Err(_) => CheckOutcome::Refused(format!(
            "no JSON report ({:?}): {}",
            run.ending,
            first_line(&run.stderr)
        )),
    }
}

/// The first line of `text`, for one-line messages.
pub fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// Prints a table: a header row and rows, columns padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("  {}", padded.join("  "));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]));
        let mut r = Rng::derive(7, 1);
        let mut s = Rng::derive(7, 2);
        assert_ne!(r.next_u64(), s.next_u64());
        assert!((0..100).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn check_reports_parse() {
        let run = |code, out: &str| Finished {
            ending: Ending::Exited(code),
            stdout: out.to_string(),
            stderr: "qemu-img: Could not open\n".into(),
            elapsed: Duration::ZERO,
        };
        let c = check_outcome(&run(
            3,
            r#"{"leaks": 2, "allocated-clusters": 5, "total-clusters": 9}"#,
        ));
        assert_eq!(
            c,
            CheckOutcome::Checked(CheckCounts {
                leaks: 2,
                allocated_clusters: 5,
                total_clusters: 9,
                ..CheckCounts::default()
            })
        );
        assert_eq!(c.badness(), (0, 0));
        assert_eq!(check_outcome(&run(63, "")), CheckOutcome::NoCheck);
        assert!(matches!(
            check_outcome(&run(1, "")),
            CheckOutcome::Refused(_)
        ));
        assert_eq!(check_outcome(&run(1, "")).badness(), (1, 0));
    }

    #[test]
    fn a_hang_is_killed_and_a_cap_applies() {
        let limits = Limits {
            address_space: 1 << 30,
            timeout: Duration::from_millis(200),
        };
        let hung = supervise(Command::new("sleep").arg("5"), limits);
        assert_eq!(hung.ending, Ending::Hung);
        let ok = supervise(Command::new("echo").arg("hi"), limits);
        assert!(ok.success());
        assert_eq!(ok.stdout, "hi\n");
    }
}
