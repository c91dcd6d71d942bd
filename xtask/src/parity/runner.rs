//! Running one row: fresh twin directories holding copies of the fixtures, the qemu command in one and blk's
//! in the other (cwd = the twin, so file names in output are the same), then the comparison of exit codes,
//! normalised stdout, the number of stderr lines and every image the commands made or changed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::normalise::{line_diff, normalise};
use super::table::Row;

/// How long one program may run before it is killed (the row then differs).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a stdout diff shown per row.
const DIFF_LINES: usize = 40;

/// What one program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code; a process killed by a signal shows as 128 + the signal, as in a shell.
    pub code: i32,
    /// Whether it was killed after [`TIMEOUT`].
    pub timed_out: bool,
    /// Its standard output (lossily UTF-8).
    pub stdout: String,
    /// Its standard error (lossily UTF-8).
    pub stderr: String,
}

/// Runs `program args` in `cwd` with stdin closed, capturing stdout and stderr into `logs/<name>.*`, killing it
/// after `timeout`.
pub fn run_program<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    cwd: &Path,
    logs: &Path,
    name: &str,
    timeout: Duration,
) -> Result<Outcome, String> {
    let out_path = logs.join(format!("{name}.stdout"));
    let err_path = logs.join(format!("{name}.stderr"));
    let open = |p: &Path| fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(open(&out_path)?)
        .stderr(open(&err_path)?);
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", program.display()))?;
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                timed_out = true;
                // The child may have exited meanwhile; kill's error then does not matter.
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
            }
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let read = |p: &Path| {
        fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    Ok(Outcome {
        code,
        timed_out,
        stdout: read(&out_path)?,
        stderr: read(&err_path)?,
    })
}

/// Everything a row needs: where the fixtures are, the programs, and a scratch directory for this row.
#[derive(Debug)]
pub struct Context {
    /// The directory holding the fixtures every row starts from.
    pub fixtures: PathBuf,
    /// Each fixture's name with the fixtures it needs (itself and its backing chain).
    pub needs: BTreeMap<String, Vec<String>>,
    /// The blk binary.
    pub blk: PathBuf,
    /// Where the rows' twin directories are made.
    pub work: PathBuf,
    /// Keep the twin directories after the row (for `--keep`).
    pub keep: bool,
}

/// The result of one row: empty `differences` means identical.
#[derive(Debug, Clone, Default)]
pub struct RowResult {
    /// One entry per thing that differs (a headline, possibly followed by detail lines).
    pub differences: Vec<String>,
    /// Both programs' outputs, for `--verbose`.
    pub transcript: String,
}

/// The fixtures `args` names (a fixture's name inside an argument, e.g. `file.filename=a.qcow2`), with their
/// backing files: only those are copied into a row's twins (the others would stay untouched anyway).
pub fn fixtures_named(args: &[String], needs: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut names: Vec<String> = needs
        .iter()
        .filter(|(name, _)| args.iter().any(|a| a.contains(name.as_str())))
        .flat_map(|(_, needed)| needed.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Each fixture in `dir` with the fixtures it needs: itself and, recursively, its backing files (from
/// `qemu-img info`).
pub fn fixture_needs(dir: &Path, logs: &Path) -> Result<BTreeMap<String, Vec<String>>, String> {
    let names = file_names(dir)?;
    let mut backing = BTreeMap::new();
    for name in &names {
        let info = run_program(
            qemu_img(),
            &["info", "-U", "--output=json", name.as_str()],
            dir,
            logs,
            "fixture-info",
            TIMEOUT,
        )?;
        let parent = serde_json::from_str::<Value>(&info.stdout)
            .ok()
            .and_then(|v| v["backing-filename"].as_str().map(String::from));
        backing.insert(name.clone(), parent);
    }
    let mut needs = BTreeMap::new();
    for name in &names {
        let mut chain = vec![name.clone()];
        let mut current = name.clone();
        while let Some(Some(parent)) = backing.get(&current) {
            if chain.contains(parent) || !backing.contains_key(parent) {
                break;
            }
            chain.push(parent.clone());
            current = parent.clone();
        }
        needs.insert(name.clone(), chain);
    }
    Ok(needs)
}

fn copy_fixtures(from: &Path, names: &[String], to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    if names.is_empty() {
        return Ok(());
    }
    // `cp -a` keeps holes and times, so a sparse fixture stays sparse and an untouched copy is recognised.
    let status = Command::new("cp")
        .arg("-a")
        .args(names.iter().map(|n| from.join(n)))
        .arg(to)
        .status()
        .map_err(|e| format!("could not run cp: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {names:?} {} failed", to.display()))
    }
}

fn qemu_img() -> &'static Path {
    Path::new("qemu-img")
}

/// The file's length and modification time, if it exists.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn file_names(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// The parts of `qemu-img info --output=json` two equal results must share (not the allocation on the host,
/// not snapshot dates).
pub fn info_essentials(json: &str) -> Value {
    let Ok(info) = serde_json::from_str::<Value>(json) else {
        return Value::String(format!("not JSON: {json}"));
    };
    let mut kept = serde_json::Map::new();
    for key in [
        "format",
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "backing-filename-format",
        "encrypted",
        "dirty-flag",
        "format-specific",
    ] {
        if let Some(v) = info.get(key) {
            kept.insert(key.to_string(), v.clone());
        }
    }
    // A LUKS header's UUID and salts are random: keep only its format.
    if let Some(encrypt) = kept
        .get_mut("format-specific")
        .and_then(|f| f.get_mut("data"))
        .and_then(|d| d.get_mut("encrypt"))
    {
        *encrypt = serde_json::json!({"format": encrypt["format"]});
    }
    if let Some(snapshots) = info.get("snapshots").and_then(Value::as_array) {
        let names: Vec<Value> = snapshots
            .iter()
            .map(|s| {
                serde_json::json!({"id": s["id"], "name": s["name"], "vm-state-size": s["vm-state-size"]})
            })
            .collect();
        kept.insert("snapshots".to_string(), Value::Array(names));
    }
    Value::Object(kept)
}

/// Compares the image `name` as the qemu and blk runs left it in their twins.
fn compare_image(
    name: &str,
    qemu_dir: &Path,
    blk_dir: &Path,
    logs: &Path,
    out: &mut Vec<String>,
) -> Result<(), String> {
    // qemu-img probes a fixed VHD as raw, which would compare its footer (with a time stamp and a UUID).
    let format: &[&str] = if is_fixed_vhd(&qemu_dir.join(name)) && is_fixed_vhd(&blk_dir.join(name))
    {
        &["-f", "vpc"]
    } else {
        &[]
    };
    let info = |dir: &Path, tag: &str| {
        run_program(
            qemu_img(),
            &[&["info", "-U", "--output=json"], format, &[name]].concat(),
            dir,
            logs,
            &format!("info-{tag}"),
            TIMEOUT,
        )
    };
    let (qi, bi) = (info(qemu_dir, "qemu")?, info(blk_dir, "blk")?);
    if qi.code != bi.code {
        out.push(format!(
            "{name}: `qemu-img info` exits {} after qemu, {} after blk: {}",
            qi.code,
            bi.code,
            if qi.code != 0 { &qi.stderr } else { &bi.stderr }.trim()
        ));
        return Ok(());
    }
    if qi.code != 0 {
        // Neither is an image qemu-img opens (e.g. an encrypted one without its secret): compare bytes.
        let same = fs::read(qemu_dir.join(name)).ok() == fs::read(blk_dir.join(name)).ok();
        if !same {
            out.push(format!(
                "{name}: not readable by qemu-img info, and the bytes differ"
            ));
        }
        return Ok(());
    }
    let (qe, be) = (
        info_essentials(&qi.stdout.replace(&*qemu_dir.to_string_lossy(), "$DIR")),
        info_essentials(&bi.stdout.replace(&*blk_dir.to_string_lossy(), "$DIR")),
    );
    if qe != be {
        out.push(format!(
            "{name}: `qemu-img info` differs\n    qemu: {qe}\n    blk:  {be}"
        ));
    }
    let compare = |a: &Path, b: &Path| {
        let mut args = vec![OsStr::new("compare"), OsStr::new("-U")];
        if !format.is_empty() {
            args.extend(["-f", "vpc", "-F", "vpc"].map(OsStr::new));
        }
        args.extend([a.as_os_str(), b.as_os_str()]);
        run_program(qemu_img(), &args, qemu_dir, logs, "compare", TIMEOUT)
    };
    let (qemu_image, blk_image) = (qemu_dir.join(name), blk_dir.join(name));
    let compare = compare(&qemu_image, &blk_image)?;
    match compare.code {
        0 => {}
        // qemu's own result cannot be read whole either (e.g. its backing file is missing): info said enough.
        2 if compare_failed_on(&qemu_image, &compare.stderr) => {}
        1 => out.push(format!(
            "{name}: guest contents differ ({})",
            compare.stdout.trim()
        )),
        code => out.push(format!(
            "{name}: `qemu-img compare` failed ({code}): {}",
            compare.stderr.trim()
        )),
    }
    let check = |dir: &Path, tag: &str| {
        run_program(
            qemu_img(),
            &[&["check", "-U"], format, &[name]].concat(),
            dir,
            logs,
            &format!("check-{tag}"),
            TIMEOUT,
        )
    };
    let (qc, bc) = (check(qemu_dir, "qemu")?, check(blk_dir, "blk")?);
    if qc.code != bc.code {
        out.push(format!(
            "{name}: `qemu-img check` exits {} after qemu, {} after blk\n    {}",
            qc.code,
            bc.code,
            bc.stdout.trim().replace('\n', "\n    ")
        ));
    }
    Ok(())
}

/// Whether `path` ends in a VHD footer (`conectix`) of a fixed disk (disk type 2).
fn is_fixed_vhd(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut footer = [0u8; 512];
    file.seek(SeekFrom::End(-512)).is_ok()
        && file.read_exact(&mut footer).is_ok()
        && &footer[..8] == b"conectix"
        && footer[60..64] == [0, 0, 0, 2]
}

/// Whether `qemu-img compare`'s message says it could not open `image` (the qemu twin's result).
fn compare_failed_on(image: &Path, stderr: &str) -> bool {
    stderr.contains(&format!("Could not open '{}'", image.display()))
}

fn expand(args: &[String], dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    args.iter().map(|a| a.replace("{dir}", &dir)).collect()
}

/// Runs `row` in fresh twins and lists what differs.
pub fn run_row(row: &Row, context: &Context) -> Result<RowResult, String> {
    let base = context.work.join(format!("row{:04}", row.line));
    let (qemu_dir, blk_dir, logs) = (base.join("qemu"), base.join("blk"), base.join("logs"));
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let names = fixtures_named(&row.args, &context.needs);
    copy_fixtures(&context.fixtures, &names, &qemu_dir)?;
    copy_fixtures(&context.fixtures, &names, &blk_dir)?;

    let (program, qemu_args) = row.qemu_command();
    let qemu = run_program(
        Path::new(program),
        &expand(&qemu_args, &qemu_dir),
        &qemu_dir,
        &logs,
        "qemu",
        TIMEOUT,
    )?;
    let blk = run_program(
        &context.blk,
        &expand(&row.blk_args(), &blk_dir),
        &blk_dir,
        &logs,
        "blk",
        TIMEOUT,
    )?;

    let mut result = RowResult::default();
    let q_out = normalise(&qemu.stdout, &qemu_dir.to_string_lossy());
    let b_out = normalise(&blk.stdout, &blk_dir.to_string_lossy());
    let q_err = normalise(&qemu.stderr, &qemu_dir.to_string_lossy());
    let b_err = normalise(&blk.stderr, &blk_dir.to_string_lossy());
    result.transcript = format!(
        "  qemu: exit {}\n{}{}  blk: exit {}\n{}{}",
        qemu.code,
        indent("stdout", &q_out),
        indent("stderr", &q_err),
        blk.code,
        indent("stdout", &b_out),
        indent("stderr", &b_err)
    );
    if qemu.timed_out || blk.timed_out {
        result.differences.push(format!(
            "timed out after {}s: {}",
            TIMEOUT.as_secs(),
            if qemu.timed_out { "qemu" } else { "blk" }
        ));
    }
    if qemu.code != blk.code {
        result.differences.push(format!(
            "exit code: qemu {}, blk {}{}",
            qemu.code,
            blk.code,
            stderr_hint(&q_err, &b_err)
        ));
    }
    if q_out != b_out {
        let diff = line_diff(&q_out, &b_out, DIFF_LINES);
        result
            .differences
            .push(format!("stdout (-qemu +blk):\n    {}", diff.join("\n    ")));
    }
    let (q_lines, b_lines) = (q_err.lines().count(), b_err.lines().count());
    if q_lines != b_lines {
        result.differences.push(format!(
            "stderr lines: qemu {q_lines}, blk {b_lines}{}",
            stderr_hint(&q_err, &b_err)
        ));
    }

    let mut names = file_names(&qemu_dir)?;
    names.extend(file_names(&blk_dir)?);
    names.sort();
    names.dedup();
    for name in names {
        let (q, b) = (stamp(&qemu_dir.join(&name)), stamp(&blk_dir.join(&name)));
        let original = stamp(&context.fixtures.join(&name));
        if original.is_some() && q == original && b == original {
            continue;
        }
        match (q, b) {
            (Some(_), Some(_)) => {
                compare_image(&name, &qemu_dir, &blk_dir, &logs, &mut result.differences)?
            }
            (Some(_), None) => result
                .differences
                .push(format!("{name}: exists after qemu only")),
            (None, Some(_)) => result
                .differences
                .push(format!("{name}: exists after blk only")),
            (None, None) => {}
        }
    }
    if !context.keep {
        fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    }
    Ok(result)
}

fn indent(what: &str, text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut out = format!("    {what}:\n");
    for line in text.lines() {
        out.push_str("      ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Both sides' stderr, one line each, to show why exit codes or message counts differ.
fn stderr_hint(q: &str, b: &str) -> String {
    if q.is_empty() && b.is_empty() {
        return String::new();
    }
    let all = |s: &str| s.lines().collect::<Vec<_>>().join(" / ");
    format!("\n    qemu stderr: {}\n    blk stderr:  {}", all(q), all(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_essentials_ignore_host_allocation_and_dates() {
        let a = r#"{"filename": "x", "format": "qcow2", "virtual-size": 1048576, "actual-size": 200704,
            "snapshots": [{"id": "1", "name": "s1", "vm-state-size": 0, "date-sec": 1}]}"#;
        let b = r#"{"filename": "x", "format": "qcow2", "virtual-size": 1048576, "actual-size": 4096,
            "snapshots": [{"id": "1", "name": "s1", "vm-state-size": 0, "date-sec": 2}]}"#;
        assert_eq!(info_essentials(a), info_essentials(b));
        let c = r#"{"format": "raw", "virtual-size": 1048576}"#;
        assert_ne!(info_essentials(a), info_essentials(c));
    }

    #[test]
    fn rows_get_the_fixtures_they_name_with_backing_files() {
        let needs = BTreeMap::from([
            ("a.qcow2".to_string(), vec!["a.qcow2".to_string()]),
            ("base.qcow2".to_string(), vec!["base.qcow2".to_string()]),
            (
                "top.qcow2".to_string(),
                vec!["top.qcow2".to_string(), "base.qcow2".to_string()],
            ),
        ]);
        let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fixtures_named(&args(&["commit", "top.qcow2"]), &needs),
            ["base.qcow2", "top.qcow2"]
        );
        assert_eq!(
            fixtures_named(
                &args(&["--image-opts", "driver=qcow2,file.filename=a.qcow2"]),
                &needs
            ),
            ["a.qcow2"]
        );
        assert!(fixtures_named(&args(&["missing.qcow2"]), &needs).is_empty());
    }

    #[test]
    fn programs_run_with_a_timeout() {
        let dir = std::env::temp_dir().join(format!("xtask-parity-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let o = run_program(
            Path::new("sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            &dir,
            &dir,
            "a",
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        let o = run_program(
            Path::new("sleep"),
            &["5"],
            &dir,
            &dir,
            "b",
            Duration::from_millis(50),
        )
        .unwrap();
        assert!(o.timed_out);
        fs::remove_dir_all(&dir).unwrap();
    }
}
