//! `cargo xtask bench --suite vhost-user`: blk's vhost-user-blk backend against qemu-storage-daemon's
//! vhost-user-blk export of the same QCOW2, with one client written by others for both (`blkio-client`, on
//! libblkio's Rust crate), 4 KiB random reads and writes at depth 32 per queue, 1 and 2 queues.
//!
//! Three placements of the image:
//! - `page-cache`: on the target directory's file system, buffered (blk `-t writeback`, QEMU
//!   `cache.direct=off`), read once beforehand so it sits in the page cache;
//! - `tmpfs-direct`: in /dev/shm, O_DIRECT (blk `-t none`, QEMU `cache.direct=on`): a device with no latency,
//!   where only the servers' own cost counts;
//! - `disk-direct`: on the target directory's file system, O_DIRECT: device-bound, so the servers' CPU time
//!   per request (user + system, from `/proc/PID/stat` over the client's run) is what differs.
//!
//! Before each O_DIRECT run the image's pages are written back and evicted from the page cache (`sync FILE`,
//! `dd iflag=nocache count=0`), so neither server pays for pages an earlier case left cached.
//!
//! QEMU's file node uses `aio=io_uring` (its fastest); both servers run with their defaults otherwise. Each
//! case is [`ROUNDS`] pairs of runs, the contenders alternating which goes first, and reports each server's
//! medians: this VM's disk and CPUs vary from run to run (a single disk-direct pair has shown anything from
//! 0.5x to 0.8x), and a median of alternated pairs is what one run of the suite can say honestly. Targets:
//! blk >= 1.2x QEMU's IOPS in the first two placements, blk's CPU per I/O <= 0.7x QEMU's in the third.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd;

/// Pairs of runs per case (medians reported).
pub const ROUNDS: usize = 3;

/// The image size.
const IMAGE_SIZE: &str = "1G";
const IMAGE_BYTES: u64 = 1 << 30;

/// Where the image lives and how it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    PageCache,
    TmpfsDirect,
    DiskDirect,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::PageCache => "page-cache",
            Placement::TmpfsDirect => "tmpfs-direct",
            Placement::DiskDirect => "disk-direct",
        }
    }

    fn direct(self) -> bool {
        self != Placement::PageCache
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Blk,
    Qsd,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    iops: f64,
    /// Server CPU seconds (user + system) per request, in microseconds.
    cpu_us_per_io: f64,
}

impl Sample {
    /// The median IOPS and the median CPU per request of `samples` (each on its own).
    fn median(samples: &[Sample]) -> Sample {
        Sample {
            iops: median(samples.iter().map(|s| s.iops).collect()),
            cpu_us_per_io: median(samples.iter().map(|s| s.cpu_us_per_io).collect()),
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count; 0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn clock_ticks() -> f64 {
    cmd::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn start(
    server: Server,
    blk: &Path,
    image: &Path,
    socket: &Path,
    queues: u32,
    direct: bool,
) -> Result<Child, String> {
    let _ = std::fs::remove_file(socket);
    let mut c = match server {
        Server::Blk => {
            let mut c = Command::new(blk);
            c.arg("vhost-user-blk")
                .arg("--socket")
                .arg(socket)
                .args(["-f", "qcow2", "--num-queues", &queues.to_string()])
                .args(["-t", if direct { "none" } else { "writeback" }])
                .arg(image);
            c
        }
        Server::Qsd => {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=f,filename={},cache.direct={},aio=io_uring",
                    image.display(),
                    if direct { "on" } else { "off" }
                ))
                .arg("--blockdev")
                .arg("driver=qcow2,node-name=d,file=f")
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
                    socket.display()
                ));
            c
        }
    };
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd::display(&c)))?;
    let started = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{server:?} exited at start ({status})"));
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err(format!("{server:?} made no socket"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[allow(clippy::too_many_arguments)]
fn measure(
    server: Server,
    env: &VhostBenchEnv,
    image: &Path,
    queues: u32,
    direct: bool,
    write: bool,
    seconds: f64,
) -> Result<Sample, String> {
    let socket = env.dir.join("bench.sock");
    if direct {
        drop_cached_pages(image);
    }
    let mut child = start(server, &env.blk, image, &socket, queues, direct)?;
    let before = cpu_ticks(child.id());
    let out = cmd::output(
        Command::new(&env.client)
            .arg("--socket")
            .arg(&socket)
            .args(["--queues", &queues.to_string(), "--depth", "32"])
            .args(["--rw", if write { "randwrite" } else { "randread" }])
            .args(["--seconds", &seconds.to_string()])
            .args(["--size", &IMAGE_BYTES.to_string()]),
    );
    let after = cpu_ticks(child.id());
    stop(&mut child);
    let out = out?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("blkio-client printed `{out}`"))
    };
    let ios = field("ios")?;
    let iops = field("iops")?;
    let cpu = (after.saturating_sub(before)) as f64 / env.ticks;
    Ok(Sample {
        iops,
        cpu_us_per_io: if ios > 0.0 { cpu / ios * 1e6 } else { 0.0 },
    })
}

/// Where the suite runs.
#[derive(Debug, Clone)]
pub struct VhostBenchEnv {
    /// The release `blk`.
    pub blk: PathBuf,
    /// The release `blkio-client`.
    pub client: PathBuf,
    /// Scratch directory on the target directory's file system.
    pub dir: PathBuf,
    /// Seconds per measurement.
    pub seconds: f64,
    ticks: f64,
}

impl VhostBenchEnv {
    /// An environment for these binaries, working in `dir`.
    pub fn new(blk: PathBuf, client: PathBuf, dir: PathBuf, seconds: f64) -> VhostBenchEnv {
        VhostBenchEnv {
            blk,
            client,
            dir,
            seconds,
            ticks: clock_ticks(),
        }
    }
}

/// Writes back and evicts the image's pages from the page cache, so an O_DIRECT run starts alike for both
/// servers: an O_DIRECT write over cached pages must first write them back and invalidate them, and the
/// page-cache runs before leave the disk image's pages cached and dirty (otherwise the first server of the
/// disk-direct write cases paid for that, in its own io-wq workers' CPU time). Best effort.
fn drop_cached_pages(image: &Path) {
    let _ = cmd::output(Command::new("sync").arg(image));
    let _ = cmd::output(
        Command::new("dd")
            .arg(format!("if={}", image.display()))
            .args(["iflag=nocache", "count=0", "status=none"]),
    );
}

fn make_image(path: &Path) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(path);
    // Fully allocated, so reads hit data and writes overwrite in place.
    cmd::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "preallocation=full"])
            .arg(path)
            .arg(IMAGE_SIZE),
    )?;
    Ok(())
}

/// Runs the suite; prints a table and whether each target is met.
pub fn run_suite(env: &VhostBenchEnv) -> Result<(), String> {
    std::fs::create_dir_all(&env.dir).map_err(|e| e.to_string())?;
    let disk_image = env.dir.join("vhost-bench.qcow2");
    let shm_image = PathBuf::from("/dev/shm/blk-vhost-bench/vhost-bench.qcow2");
    make_image(&disk_image)?;
    make_image(&shm_image)?;
    // Warm the page cache for the buffered runs.
    let _ = std::fs::read(&disk_image);
    println!(
        "vhost-user suite: QCOW2 {IMAGE_SIZE} (preallocation=full), blkio-client 4 KiB random, depth 32 per queue, {} s per run, medians of {ROUNDS} alternated pairs",
        env.seconds
    );
    println!(
        "{:<13} {:<10} {:>2}  {:>10} {:>10} {:>6}  {:>9} {:>9} {:>6}",
        "placement", "rw", "q", "blk IOPS", "qsd IOPS", "ratio", "blk us/io", "qsd us/io", "ratio"
    );
    let mut misses = Vec::new();
    for placement in [
        Placement::PageCache,
        Placement::TmpfsDirect,
        Placement::DiskDirect,
    ] {
        let image = if placement == Placement::TmpfsDirect {
            &shm_image
        } else {
            &disk_image
        };
        for write in [false, true] {
            for queues in [1u32, 2] {
                let mut blk = Vec::with_capacity(ROUNDS);
                let mut qsd = Vec::with_capacity(ROUNDS);
                for round in 0..ROUNDS {
                    // Alternate which server goes first.
                    let order = if (round + queues as usize) % 2 == 1 {
                        [Server::Blk, Server::Qsd]
                    } else {
                        [Server::Qsd, Server::Blk]
                    };
                    for server in order {
                        let s = measure(
                            server,
                            env,
                            image,
                            queues,
                            placement.direct(),
                            write,
                            env.seconds,
                        )?;
                        match server {
                            Server::Blk => blk.push(s),
                            Server::Qsd => qsd.push(s),
                        }
                    }
                }
                let (b, q) = (Sample::median(&blk), Sample::median(&qsd));
                let iops_ratio = b.iops / q.iops.max(1.0);
                let cpu_ratio = b.cpu_us_per_io / q.cpu_us_per_io.max(1e-9);
                let rw = if write { "randwrite" } else { "randread" };
                println!(
                    "{:<13} {:<10} {:>2}  {:>10.0} {:>10.0} {:>5.2}x  {:>9.2} {:>9.2} {:>5.2}x",
                    placement.name(),
                    rw,
                    queues,
                    b.iops,
                    q.iops,
                    iops_ratio,
                    b.cpu_us_per_io,
                    q.cpu_us_per_io,
                    cpu_ratio
                );
                let case = format!("{} {rw} {queues}q", placement.name());
                match placement {
                    Placement::PageCache | Placement::TmpfsDirect if iops_ratio < 1.2 => {
                        misses.push(format!("{case}: IOPS {iops_ratio:.2}x (target >= 1.2x)"))
                    }
                    Placement::DiskDirect if cpu_ratio > 0.7 => misses.push(format!(
                        "{case}: CPU per I/O {cpu_ratio:.2}x (target <= 0.7x)"
                    )),
                    _ => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(&shm_image);
    let _ = std::fs::remove_dir(shm_image.parent().unwrap_or(Path::new("/dev/shm")));
    let _ = std::fs::remove_file(&disk_image);
    if misses.is_empty() {
        println!("vhost-user suite: every target met");
    } else {
        println!("vhost-user suite: targets not met:");
        for m in &misses {
            println!("  {m}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
        let s = Sample::median(&[
            Sample {
                iops: 10.0,
                cpu_us_per_io: 9.0,
            },
            Sample {
                iops: 30.0,
                cpu_us_per_io: 1.0,
            },
            Sample {
                iops: 20.0,
                cpu_us_per_io: 5.0,
            },
        ]);
        assert_eq!((s.iops, s.cpu_us_per_io), (20.0, 5.0));
    }
}
