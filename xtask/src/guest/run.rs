//! One format's guest run: make an image and its twin, boot the guest against `blk vhost-user-blk` on the image
//! and against qemu-storage-daemon's export on the twin, and check what the guest saw and what the images hold.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::plan::GuestPlan;
use crate::cmd;

/// A format the test covers: its qemu name and how its image is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFormat {
    /// QCOW2 on a QCOW2 backing file.
    Qcow2,
    /// VHD (qemu's `vpc`).
    Vpc,
    /// VHDX.
    Vhdx,
    /// Raw.
    Raw,
}

impl GuestFormat {
    /// Every format, in the order the test runs them.
    pub const ALL: [GuestFormat; 4] = [
        GuestFormat::Qcow2,
        GuestFormat::Vpc,
        GuestFormat::Vhdx,
        GuestFormat::Raw,
    ];

    /// The qemu-img name.
    pub fn name(self) -> &'static str {
        match self {
            GuestFormat::Qcow2 => "qcow2",
            GuestFormat::Vpc => "vpc",
            GuestFormat::Vhdx => "vhdx",
            GuestFormat::Raw => "raw",
        }
    }

    /// The format named `name` (`vhd` is an alias of `vpc`).
    pub fn parse(name: &str) -> Option<GuestFormat> {
        match name {
            "qcow2" => Some(GuestFormat::Qcow2),
            "vpc" | "vhd" => Some(GuestFormat::Vpc),
            "vhdx" => Some(GuestFormat::Vhdx),
            "raw" => Some(GuestFormat::Raw),
            _ => None,
        }
    }

    /// Whether `qemu-img check` checks it (else blk's check does).
    fn qemu_checks(self) -> bool {
        matches!(self, GuestFormat::Qcow2 | GuestFormat::Vhdx)
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct GuestEnv {
    /// The `blk` binary.
    pub blk: PathBuf,
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The work directory (one subdirectory per format).
    pub dir: PathBuf,
    /// How long one boot may take.
    pub timeout: Duration,
}

const MIB: u64 = 1024 * 1024;
const DISK_SIZE: u64 = 64 * MIB;

fn run_ok(command: &mut Command) -> Result<String, String> {
    cmd::output(command)
}

fn qemu_io(format: &str, image: &Path, commands: &[String]) -> Result<String, String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", format]);
    for command in commands {
        c.args(["-c", command]);
    }
    c.arg(image);
    run_ok(&mut c)
}

/// Creates `image` (and for QCOW2 its backing file) with data the guest reads and overwrites.
fn make_image(format: GuestFormat, dir: &Path, image: &Path) -> Result<(), String> {
    let size = DISK_SIZE.to_string();
    let writes = |extra: &[(u8, u64, u64)]| -> Vec<String> {
        extra
            .iter()
            .map(|(p, off, len)| format!("write -P {p:#x} {off} {len}"))
            .collect()
    };
    match format {
        GuestFormat::Qcow2 => {
            let base = dir.join("base.qcow2");
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&base)
                    .arg(&size),
            )?;
            qemu_io(
                "qcow2",
                &base,
                &writes(&[(0x11, 0, 4 * MIB), (0x22, 20 * MIB, 3 * MIB)]),
            )?;
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                    .arg(&base)
                    .arg(image),
            )?;
            qemu_io(
                "qcow2",
                image,
                &writes(&[(0x44, 6 * MIB, 6 * MIB), (0x33, 60 * MIB, 4 * MIB)]),
            )?;
        }
        _ => {
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", format.name()])
                    .arg(image)
                    .arg(&size),
            )?;
            qemu_io(
                format.name(),
                image,
                &writes(&[
                    (0x11, 0, 4 * MIB),
                    (0x44, 6 * MIB, 6 * MIB),
                    (0x22, 20 * MIB, 3 * MIB),
                    (0x33, 60 * MIB, 4 * MIB),
                ]),
            )?;
        }
    }
    Ok(())
}

fn virtual_size(format: GuestFormat, image: &Path) -> Result<u64, String> {
    let json = run_ok(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-f", format.name()])
            .arg(image),
    )?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| format!("no virtual-size in {json}"))
}

fn to_raw(format: GuestFormat, image: &Path, raw: &Path) -> Result<Vec<u8>, String> {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", format.name(), "-O", "raw"])
            .arg(image)
            .arg(raw),
    )?;
    std::fs::read(raw).map_err(|e| format!("{}: {e}", raw.display()))
}

fn sha256(bytes: &[u8], scratch: &Path) -> Result<String, String> {
    std::fs::write(scratch, bytes).map_err(|e| e.to_string())?;
    let out = run_ok(Command::new("sha256sum").arg(scratch))?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

/// Which server the guest talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Blk,
    QemuStorageDaemon,
}

fn start_server(
    server: Server,
    env: &GuestEnv,
    format: GuestFormat,
    image: &Path,
    socket: &Path,
    log: &Path,
) -> Result<Child, String> {
    let _ = std::fs::remove_file(socket);
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut c = match server {
        Server::Blk => {
            let mut c = Command::new(&env.blk);
            c.arg("vhost-user-blk")
                .arg("--socket")
                .arg(socket)
                .args([
                    "-f",
                    format.name(),
                    "--num-queues",
                    "2",
                    "--serial",
                    "blk-guest-test",
                ])
                .arg(image);
            c
        }
        Server::QemuStorageDaemon => {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=f,filename={},discard=unmap",
                    image.display()
                ))
                .arg("--blockdev")
                .arg(format!(
                    "driver={},node-name=d,file=f,discard=unmap",
                    format.name()
                ))
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on,num-queues=2",
                    socket.display()
                ));
            c
        }
    };
    let mut child = c
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd::display(&c)))?;
    let started = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{server:?} exited early ({status})"));
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err(format!("{server:?} did not create {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Stops a server with SIGTERM and waits for it; returns its exit status.
fn stop_server(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    cmd::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("the server did not stop within 30 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots the guest against `socket`; returns the serial console's text.
fn boot(env: &GuestEnv, socket: &Path, console: &Path) -> Result<String, String> {
    let _ = std::fs::remove_file(console);
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-smp", "2", "-m", "512"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&env.vmlinuz)
        .arg("-initrd")
        .arg(&env.initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", socket.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=c0,num-queues=2"]);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > env.timeout {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(console).unwrap_or_default();
            return Err(format!(
                "the guest did not finish within {:?}; console:\n{text}",
                env.timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let text = std::fs::read_to_string(console).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "qemu-system-x86_64 failed ({status}): {stderr}\nconsole:\n{text}"
        ));
    }
    println!(
        "guest: booted and powered off in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(text)
}

/// What the guest printed.
#[derive(Debug, Default)]
struct GuestReport {
    queues: Option<u32>,
    sectors: Option<u64>,
    sha256: Option<String>,
    readbacks: Vec<(u64, String)>,
    failures: Vec<String>,
    done: bool,
}

fn parse_console(text: &str) -> GuestReport {
    let mut r = GuestReport::default();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("BLKTEST ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["mq", n] => r.queues = n.parse().ok(),
            ["sectors", n] => r.sectors = n.parse().ok(),
            ["sha256", h] => r.sha256 = Some(h.to_string()),
            ["readback", off, h] => {
                if let Ok(off) = off.parse() {
                    r.readbacks.push((off, h.to_string()));
                }
            }
            ["fail", ..] => r.failures.push(rest.to_string()),
            ["done"] => r.done = true,
            _ => {}
        }
    }
    r
}

fn check_report(
    who: &str,
    r: &GuestReport,
    size: u64,
    expected_sha: &str,
    plan: &GuestPlan,
    scratch: &Path,
    console: &str,
) -> Result<(), String> {
    let fail = |what: String| Err(format!("{who}: {what}; console:\n{console}"));
    if !r.done {
        return fail("the guest script did not finish".into());
    }
    if !r.failures.is_empty() {
        return fail(format!("the guest reported {:?}", r.failures));
    }
    if r.queues != Some(2) {
        return fail(format!(
            "/sys/block/vda/mq lists {:?} queues, not 2",
            r.queues
        ));
    }
    if r.sectors != Some(size / 512) {
        return fail(format!(
            "the disk has {:?} sectors, not {}",
            r.sectors,
            size / 512
        ));
    }
    if r.sha256.as_deref() != Some(expected_sha) {
        return fail(format!(
            "the whole-disk sha256 is {:?}, qemu-img convert gives {expected_sha}",
            r.sha256
        ));
    }
    for w in &plan.writes {
        let want = sha256(&vec![w.pattern; w.len as usize], scratch)?;
        let got = r
            .readbacks
            .iter()
            .find(|(o, _)| *o == w.offset)
            .map(|(_, h)| h);
        if got != Some(&want) {
            return fail(format!(
                "reading back the write at {} gave {got:?}",
                w.offset
            ));
        }
    }
    Ok(())
}

/// Runs the whole test for `format`.
pub fn run_format(env: &GuestEnv, format: GuestFormat) -> Result<(), String> {
    let dir = env.dir.join(format.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = dir.join(format!("disk.{}", format.name()));
    let twin = dir.join(format!("twin.{}", format.name()));
    make_image(format, &dir, &image)?;
    std::fs::copy(&image, &twin).map_err(|e| e.to_string())?;
    let size = virtual_size(format, &image)?;
    let plan = GuestPlan::for_size(size);
    let scratch = dir.join("scratch");
    let before = to_raw(format, &image, &dir.join("before.raw"))?;
    let expected_sha = sha256(&before, &scratch)?;
    drop(before);
    let socket = dir.join("vhost.sock");

    for (server, disk) in [(Server::Blk, &image), (Server::QemuStorageDaemon, &twin)] {
        println!("guest: {} through {server:?}", format.name());
        let mut child = start_server(
            server,
            env,
            format,
            disk,
            &socket,
            &dir.join(format!("{server:?}.log")),
        )?;
        let console_path = dir.join(format!("{server:?}.console"));
        let booted = boot(env, &socket, &console_path);
        let stopped = stop_server(&mut child);
        let console = booted?;
        let status = stopped?;
        let log = std::fs::read_to_string(dir.join(format!("{server:?}.log"))).unwrap_or_default();
        if server == Server::Blk && !status.success() {
            return Err(format!(
                "blk vhost-user-blk exited with {status} after SIGTERM:\n{log}"
            ));
        }
        let report = parse_console(&console);
        check_report(
            &format!("{} through {server:?}", format.name()),
            &report,
            size,
            &expected_sha,
            &plan,
            &scratch,
            &console,
        )?;
    }

    // The image blk served checks clean and holds the patterns.
    if format.qemu_checks() {
        run_ok(
            Command::new("qemu-img")
                .args(["check", "-q", "-f", format.name()])
                .arg(&image),
        )
        .map_err(|e| format!("qemu-img check after the guest: {e}"))?;
    } else {
        let out = Command::new(&env.blk)
            .args(["check", "-f", format.name()])
            .arg(&image)
            .output()
            .map_err(|e| e.to_string())?;
        // 0: clean; 63: the format has nothing to check (raw), as qemu-img says.
        if !matches!(out.status.code(), Some(0 | 63)) {
            return Err(format!(
                "blk check after the guest: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let reads: Vec<String> = plan
        .writes
        .iter()
        .map(|w| format!("read -P {:#x} {} {}", w.pattern, w.offset, w.len))
        .collect();
    let out = qemu_io(format.name(), &image, &reads)?;
    if out.contains("verification failed") || out.contains("failed") {
        return Err(format!("qemu-io read the patterns back wrong:\n{out}"));
    }

    // Same written ranges as qemu-storage-daemon's twin (discarded ranges are unspecified).
    let ours = to_raw(format, &image, &dir.join("blk.raw"))?;
    let theirs = to_raw(format, &twin, &dir.join("qsd.raw"))?;
    if ours.len() != theirs.len() {
        return Err(format!("sizes differ: {} vs {}", ours.len(), theirs.len()));
    }
    if let Some(at) = (0..ours.len()).find(|&i| ours[i] != theirs[i] && !plan.discarded(i as u64)) {
        return Err(format!(
            "blk's image and qemu-storage-daemon's twin differ at byte {at} (outside the discards)"
        ));
    }
    println!(
        "guest: {} ok (2 queues, whole-disk sha256 {}, patterns read back, image checks clean, same as qemu-storage-daemon)",
        format.name(),
        &expected_sha[..16]
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_parse() {
        let r = parse_console(
            "[ 1.0] noise\nBLKTEST mq 2\nBLKTEST sectors 131072\nBLKTEST sha256 ab\r\nBLKTEST readback 1048576 cd\nBLKTEST done\n",
        );
        assert_eq!(r.queues, Some(2));
        assert_eq!(r.sectors, Some(131072));
        assert_eq!(r.sha256.as_deref(), Some("ab"));
        assert_eq!(r.readbacks, [(1048576, "cd".to_string())]);
        assert!(r.done && r.failures.is_empty());
        assert_eq!(GuestFormat::parse("vhd"), Some(GuestFormat::Vpc));
    }
}
