//! `cargo xtask crash [--kills N] [--seed S] [--only NAME] [--release]`: a writer killed with SIGKILL at
//! random points while it writes, zeroes, discards, flushes and grows images, then the image checked.
//!
//! | module | what it holds |
//! |---|---|
//! | [`scenario`] | the images written to (QCOW2 v2, v3, with a backing file, extended L2, lazy refcounts; VHD; VHDX) |
//! | [`worker`] | the child processes: the writer, and the verifier that reopens the image |
//! | [`stamp`] | sectors that say which write they came from |
//! | [`model`] | what each sector may hold after a kill |
//!
//! Each scenario gets a share of the kills. An image lives through up to [`KILLS_PER_IMAGE`] kills: the writer
//! (`xtask crash-worker write`, the library through `blk-factory`) announces every operation on a pipe before
//! it starts it and every flush after it returns; the parent kills it after a random number of operations and
//! a random delay (sometimes while it is still opening, which is where a previous kill is repaired). Then:
//!
//! 1. the verifier reopens the image writable (blk's repairing open: lazy refcounts, a VHDX log), closes it,
//!    and reads the whole disk read-only into a raw file;
//! 2. `qemu-img check` finds no corruption, and `blk check` reports the same counts (corruptions, leaks, check
//!    errors, allocated and total clusters); for VHD, which qemu-img cannot check, `blk check` finds no
//!    corruption and no check error (leaked space, which a kill in the middle of an allocation leaves, is
//!    allowed for every format and counted in the summary);
//! 3. every sector holds what the model allows: each write a completed flush covered is there;
//! 4. `qemu-img compare` finds the image equal to the raw file blk read.
//!
//! The operations and kill points come from `--seed` (printed; kill instants still depend on timing). A failed
//! image is kept under `target/crash-failures/SEED/`, and the next kill starts a new image. The run exits
//! non-zero on any failure.

pub mod model;
pub mod scenario;
pub mod stamp;
pub mod worker;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::campaign::{self, check_outcome, CheckOutcome, Limits, Rng};
use model::{Event, Model, Verdict};
use scenario::{Scenario, MAX_SIZE, SCENARIOS, SIZE};
use stamp::Value as Sector;

/// Kills one image lives through before a new one is made.
pub const KILLS_PER_IMAGE: u64 = 6;
/// Kills when `--kills` is not given.
pub const DEFAULT_KILLS: u64 = 300;
/// Limits for the verifier and the checkers.
const LIMITS: Limits = Limits {
    address_space: 4 << 30,
    timeout: Duration::from_secs(300),
};

/// Options of `cargo xtask crash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Kills in all.
    pub kills: u64,
    /// The campaign's seed.
    pub seed: u64,
    /// Only the scenarios with these names (all when empty).
    pub only: Vec<String>,
    /// Build `blk` with `--release`.
    pub release: bool,
}

/// Parses the arguments after `crash`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        kills: DEFAULT_KILLS,
        seed: campaign::clock_seed(),
        only: Vec::new(),
        release: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--kills" => {
                let v = value("--kills")?;
                options.kills = v
                    .parse()
                    .map_err(|_| format!("--kills: `{v}` is not a number"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                options.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: `{v}` is not a number"))?;
            }
            "--only" => {
                let v = value("--only")?;
                if !SCENARIOS.iter().any(|s| s.name == v) {
                    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                    return Err(format!(
                        "--only: no scenario `{v}` (have: {})",
                        names.join(", ")
                    ));
                }
                options.only.push(v.clone());
            }
            "--release" => options.release = true,
            other => return Err(format!("unknown crash option `{other}`")),
        }
    }
    Ok(options)
}

/// What went wrong after one kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The writer failed on its own (an error, a panic).
    Writer,
    /// blk could not reopen or read the image.
    Reopen,
    /// `qemu-img check` found corruption or could not open the image (for VHD: blk's check found corruption
    /// or a check error).
    Corrupt,
    /// `blk check` and `qemu-img check` disagree.
    CheckDiffers,
    /// A sector holds what it may not: a flushed write lost, or garbage where no write was going.
    Lost,
    /// A sector an unflushed write was writing holds neither the old nor the new data (a torn sector).
    Torn,
    /// `qemu-img compare` reads the image differently from blk.
    CompareDiffers,
}

/// Per-scenario counts for the summary.
#[derive(Debug, Clone, Default)]
struct Tally {
    kills: u64,
    images: u64,
    acked_flushes: u64,
    writes: u64,
    writer: u64,
    reopen: u64,
    corrupt: u64,
    check_differs: u64,
    lost_runs: u64,
    lost_sectors: u64,
    lost_writes: u64,
    torn_runs: u64,
    torn_sectors: u64,
    compare_differs: u64,
    /// Kills after which `blk check` found leaked space (not a failure: see [`verify`]).
    leaky: u64,
    /// Kills that left a QCOW2 image with the dirty bit set (lazy refcounts not written: the repairing open
    /// rebuilt them).
    dirty: u64,
    messages: Vec<String>,
}

impl Tally {
    fn failures(&self) -> u64 {
        self.writer
            + self.reopen
            + self.corrupt
            + self.check_differs
            + self.lost_runs
            + self.torn_runs
            + self.compare_differs
    }

    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::Writer => self.writer += 1,
            Fault::Reopen => self.reopen += 1,
            Fault::Corrupt => self.corrupt += 1,
            Fault::CheckDiffers => self.check_differs += 1,
            Fault::Lost => self.lost_runs += 1,
            Fault::Torn => self.torn_runs += 1,
            Fault::CompareDiffers => self.compare_differs += 1,
        }
    }
}

/// The tools a campaign runs.
struct Tools {
    /// This program (the worker is its hidden `crash-worker` subcommand).
    worker: PathBuf,
    /// The `blk` binary.
    blk: PathBuf,
}

/// One image being written: its files and its model.
struct Image {
    dir: tempfile::TempDir,
    path: PathBuf,
    model: Model,
    backing_raw: Vec<u8>,
    next_id: u64,
}

fn qemu(program: &str, args: &[&str]) -> Result<String, String> {
    let run = campaign::supervise(Command::new(program).args(args), LIMITS);
    if run.success() {
        Ok(run.stdout)
    } else {
        Err(format!(
            "`{program} {}` failed ({:?}): {}",
            args.join(" "),
            run.ending,
            campaign::first_line(&run.stderr)
        ))
    }
}

fn new_image(scenario: &Scenario) -> Result<Image, String> {
    let dir = campaign::scratch_dir("blk-crash-")?;
    let path = dir.path().join(format!("disk.{}", scenario.format));
    let p = |path: &Path| path.to_string_lossy().into_owned();
    let size = SIZE.to_string();
    let mut backing_raw = Vec::new();
    if scenario.backing {
        let base = dir.path().join("base.qcow2");
        qemu(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &p(&base), &size],
        )?;
        qemu(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 0 3M",
                "-c",
                "write -P 0x22 5M 2M",
                "-c",
                "write -P 0x33 40M 1M",
                &p(&base),
            ],
        )?;
        let raw = dir.path().join("base.raw");
        qemu(
            "qemu-img",
            &["convert", "-f", "qcow2", "-O", "raw", &p(&base), &p(&raw)],
        )?;
        backing_raw = std::fs::read(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
        qemu(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                scenario.options,
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                &p(&path),
                &size,
            ],
        )?;
    } else {
        qemu(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                scenario.format,
                "-o",
                scenario.options,
                &p(&path),
                &size,
            ],
        )?;
    }
    let info = qemu(
        "qemu-img",
        &["info", "--output=json", "-f", scenario.format, &p(&path)],
    )?;
    let virtual_size = serde_json::from_str::<Value>(&info)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or("qemu-img info printed no virtual-size")?;
    let backing_data = backing_raw
        .chunks(stamp::SECTOR as usize)
        .map(|s| s.iter().any(|&b| b != 0))
        .collect();
    Ok(Image {
        dir,
        path,
        model: Model::new(virtual_size, backing_data),
        backing_raw,
        next_id: 1,
    })
}

/// Runs the writer on `image` and kills it at a point chosen by `rng`; feeds its events to the model.
fn write_and_kill(
    tools: &Tools,
    scenario: &Scenario,
    image: &mut Image,
    rng: &mut Rng,
    tally: &mut Tally,
) -> Result<(), String> {
    let mut child = Command::new(&tools.worker)
        .args(["crash-worker", "write"])
        .arg(&image.path)
        .arg(scenario.format)
        .arg(rng.next_u64().to_string())
        .arg(image.next_id.to_string())
        .arg(MAX_SIZE.to_string())
        .arg(scenario.workload.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start the writer: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let kill = move || {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it names our child, or its zombie).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
            text
        })
    });
    // Mostly: after a random number of operations and a short random delay; sometimes while it opens.
    let early = rng.chance(6);
    let kill_after_ops = 1 + rng.below(300);
    let delay = Duration::from_micros(rng.below(3000));
    let killer = early.then(|| {
        let at = Duration::from_micros(rng.below(40_000));
        std::thread::spawn(move || {
            std::thread::sleep(at);
            kill();
        })
    });
    let mut reader = BufReader::new(child.stdout.take().ok_or("writer without stdout")?);
    let mut line = String::new();
    let mut ops = 0;
    let mut failed = None;
    let mut killed = early;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if !line.ends_with('\n') => break,
            Ok(_) => {}
        }
        let Some(event) = Event::parse(&line) else {
            continue;
        };
        image.model.apply(&event);
        match &event {
            Event::Write { id, .. } => {
                image.next_id = u64::from(*id) + 1;
                tally.writes += 1;
            }
            Event::Ack => tally.acked_flushes += 1,
            Event::Failed(message) => failed = Some(message.clone()),
            _ => {}
        }
        if !matches!(event, Event::Ack | Event::Failed(_) | Event::Done) {
            ops += 1;
            if ops == kill_after_ops && !killed {
                std::thread::sleep(delay);
                kill();
                killed = true;
            }
        }
    }
    if let Some(killer) = killer {
        let _ = killer.join();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the writer: {e}"))?;
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let killed_by_us =
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    match failed {
        Some(message) => Err(format!("writer: {message}")),
        None if !status.success() && !killed_by_us => Err(format!(
            "writer ended with {status}: {}",
            campaign::first_line(&stderr)
        )),
        None => Ok(()),
    }
}

/// Whether the QCOW2 image at `path` has the dirty bit (incompatible feature bit 0, version 3) set.
fn qcow2_dirty(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 80];
    let read = std::fs::File::open(path).and_then(|f| f.read_exact_at(&mut header, 0));
    read.is_ok() && header[4..8] == 3u32.to_be_bytes() && header[79] & 1 != 0
}

/// Checks the image after a kill; the faults found, each with a message.
fn verify(
    tools: &Tools,
    scenario: &Scenario,
    image: &mut Image,
    tally: &mut Tally,
) -> Vec<(Fault, String)> {
    let mut faults = Vec::new();
    let path = image.path.to_string_lossy().into_owned();
    let raw = image.dir.path().join("read-back.raw");
    if scenario.format == "qcow2" && qcow2_dirty(&image.path) {
        tally.dirty += 1;
    }
    let run = campaign::supervise(
        Command::new(&tools.worker)
            .args(["crash-worker", "verify", &path, scenario.format])
            .arg(&raw),
        LIMITS,
    );
    if !run.success() {
        let why = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("E "))
            .map_or_else(
                || format!("{:?}: {}", run.ending, campaign::first_line(&run.stderr)),
                str::to_string,
            );
        faults.push((
            Fault::Reopen,
            format!("blk could not reopen the image: {why}"),
        ));
        return faults;
    }
    // The checks, on the image as the repairing open left it.
    let check = |program: &Path| {
        check_outcome(&campaign::supervise(
            Command::new(program).args(["check", "--output=json", "-f", scenario.format, &path]),
            LIMITS,
        ))
    };
    let blk = check(&tools.blk);
    if matches!(&blk, CheckOutcome::Checked(c) if c.leaks > 0) {
        tally.leaky += 1;
    }
    if scenario.qemu_checks {
        let qemu = check(Path::new("qemu-img"));
        match &qemu {
            CheckOutcome::Checked(c) if c.corruptions == 0 && c.check_errors == 0 => {}
            other => faults.push((Fault::Corrupt, format!("qemu-img check: {other:?}"))),
        }
        if blk != qemu {
            faults.push((
                Fault::CheckDiffers,
                format!("blk check {blk:?} but qemu-img check {qemu:?}"),
            ));
        }
    } else {
        // Leaks are allowed, as `qemu-img check` allows them for the other formats: a kill between moving the
        // end footer past a new block and writing its BAT entry leaves that block's space leaked (the
        // crash-safe order of QEMU's `alloc_block`; the next allocation reuses the space).
        match &blk {
            CheckOutcome::Checked(c) if c.corruptions == 0 && c.check_errors == 0 => {}
            other => faults.push((Fault::Corrupt, format!("blk check: {other:?}"))),
        }
    }
    // Every sector as the model allows.
    let verdict: Verdict = match std::fs::read(&raw) {
        Ok(data) => image.model.verify(&data, &image.backing_raw),
        Err(e) => {
            faults.push((Fault::Reopen, format!("read-back file: {e}")));
            return faults;
        }
    };
    let lost = verdict.mismatched - verdict.torn;
    let first = |torn: bool| {
        verdict
            .examples
            .iter()
            .find(|m| matches!(m.found, Sector::Garbage | Sector::Misplaced(_)) == torn)
            .cloned()
    };
    if lost > 0 || verdict.bad_size.is_some() {
        tally.lost_sectors += lost;
        tally.lost_writes += verdict.lost_writes;
        faults.push((
            Fault::Lost,
            format!(
                "{lost} sector(s) wrong, {} write(s) lost{}; first: {:?}",
                verdict.lost_writes,
                verdict
                    .bad_size
                    .as_ref()
                    .map_or(String::new(), |(found, allowed)| format!(
                        ", size {found} not in {allowed:?}"
                    )),
                first(false)
            ),
        ));
    }
    if verdict.torn > 0 {
        tally.torn_sectors += verdict.torn;
        faults.push((
            Fault::Torn,
            format!(
                "{} sector(s) of unflushed writes torn; first: {:?}",
                verdict.torn,
                first(true)
            ),
        ));
    }
    // QEMU reads what blk read.
    let compare = campaign::supervise(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", scenario.format, "-F", "raw", &path])
            .arg(&raw),
        LIMITS,
    );
    if !compare.success() {
        faults.push((
            Fault::CompareDiffers,
            format!(
                "qemu-img compare with what blk read: {:?} {}",
                compare.ending,
                campaign::first_line(&format!("{}{}", compare.stdout, compare.stderr))
            ),
        ));
    }
    let _ = std::fs::remove_file(&raw);
    faults
}

/// Keeps a failed image's files under `failures` and says where.
fn keep(image: &Image, failures: &Path, label: &str) -> String {
    let to = failures.join(label);
    let _ = std::fs::create_dir_all(&to);
    if let Ok(entries) = std::fs::read_dir(image.dir.path()) {
        for entry in entries.flatten() {
            let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
        }
    }
    to.display().to_string()
}

fn run_scenario(
    tools: &Tools,
    scenario: &Scenario,
    kills: u64,
    seed: u64,
    failures: &Path,
) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut image: Option<Image> = None;
    let mut age = 0;
    let name_hash = scenario
        .name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    for kill in 0..kills {
        if image.is_none() || age == KILLS_PER_IMAGE {
            image = Some(new_image(scenario)?);
            tally.images += 1;
            age = 0;
        }
        let Some(current) = image.as_mut() else {
            continue;
        };
        age += 1;
        tally.kills += 1;
        let mut rng = Rng::derive(seed ^ name_hash, kill);
        let mut faults = Vec::new();
        if let Err(message) = write_and_kill(tools, scenario, current, &mut rng, &mut tally) {
            faults.push((Fault::Writer, message));
        }
        faults.extend(verify(tools, scenario, current, &mut tally));
        if !faults.is_empty() {
            let label = format!("{}-kill{kill}", scenario.name);
            let kept = keep(current, failures, &label);
            for (fault, message) in &faults {
                tally.count(*fault);
                let line = format!("{label}: {fault:?}: {message}");
                println!("  FAIL {line}");
                if tally.messages.len() < 8 {
                    tally.messages.push(line);
                }
            }
            println!("       image kept in {kept}");
            image = None;
        }
    }
    Ok(tally)
}

/// `cargo xtask crash`: the campaign, its summary table, and an error if anything failed.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let chosen: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| options.only.is_empty() || options.only.iter().any(|o| o == s.name))
        .copied()
        .collect();
    let shares = scenario::shares(&chosen, options.kills);
    let tools = Tools {
        // The running program by its kernel handle, not its path: `cargo xtask ci` runs this campaign after
        // `cargo test --workspace`, which may have rebuilt (replaced) the xtask binary on disk meanwhile.
        worker: PathBuf::from("/proc/self/exe"),
        blk: campaign::build_blk(root, options.release)?,
    };
    let failures = root
        .join("target")
        .join("crash-failures")
        .join(options.seed.to_string());
    println!(
        "crash campaign: seed {} ({} kills; reproduce with `cargo xtask crash --seed {} --kills {}`)",
        options.seed, options.kills, options.seed, options.kills
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = 0;
    for (scenario, kills) in chosen.iter().zip(&shares) {
        let t = Instant::now();
        let tally = run_scenario(&tools, scenario, *kills, options.seed, &failures)?;
        println!(
            "  {:<14} {:>4} kills in {:.1}s, {} failure(s)",
            scenario.name,
            tally.kills,
            t.elapsed().as_secs_f64(),
            tally.failures()
        );
        failed += tally.failures();
        rows.push(vec![
            scenario.name.to_string(),
            tally.kills.to_string(),
            tally.images.to_string(),
            tally.writes.to_string(),
            tally.acked_flushes.to_string(),
            tally.corrupt.to_string(),
            tally.check_differs.to_string(),
            format!("{} ({} sectors)", tally.lost_writes, tally.lost_sectors),
            format!("{} ({} sectors)", tally.torn_runs, tally.torn_sectors),
            tally.compare_differs.to_string(),
            (tally.reopen + tally.writer).to_string(),
            tally.leaky.to_string(),
            tally.dirty.to_string(),
        ]);
    }
    println!();
    println!(
        "crash campaign summary (seed {}, {:.0}s):",
        options.seed,
        started.elapsed().as_secs_f64()
    );
    campaign::print_table(
        &[
            "image",
            "kills",
            "images",
            "writes",
            "acked flushes",
            "corrupt",
            "check≠qemu",
            "lost flushed writes",
            "torn unflushed",
            "compare≠",
            "reopen/writer",
            "leaks (ok)",
            "dirty (repaired)",
        ],
        &rows,
    );
    if failed > 0 {
        return Err(format!(
            "crash campaign: {failed} failure(s) (seed {}; failed images under {})",
            options.seed,
            failures.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args: Vec<String> = ["--kills", "12", "--seed", "5", "--only", "vhd"]
            .map(String::from)
            .to_vec();
        let o = parse_args(&args).unwrap();
        assert_eq!(
            (o.kills, o.seed, o.only.as_slice()),
            (12, 5, &["vhd".to_string()][..])
        );
        assert!(parse_args(&["--only".into(), "nope".into()]).is_err());
        assert!(parse_args(&["--kills".into()]).is_err());
    }
}
