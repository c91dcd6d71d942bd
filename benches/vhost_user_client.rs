//! `blkio-client`: a vhost-user-blk client for `cargo xtask bench --suite vhost-user`, written on libblkio's Rust
//! crate (`blkio`, driver `virtio-blk-vhost-user`), so blk's backend and qemu-storage-daemon's export are measured
//! by the same client written by others.
//!
//! `blkio-client --socket PATH --queues N --depth D --rw randread|randwrite --seconds S --size BYTES [--bs B]`
//! keeps D requests of B bytes (4096) in flight on each of N queues (one thread each) at random aligned offsets
//! below SIZE for S seconds, and prints `ios <count> seconds <elapsed> iops <rate>`.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, ReqFlags};

struct Options {
    socket: String,
    queues: usize,
    depth: usize,
    write: bool,
    seconds: f64,
    size: u64,
    bs: usize,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        socket: String::new(),
        queues: 1,
        depth: 32,
        write: false,
        seconds: 5.0,
        size: 0,
        bs: 4096,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|_| format!("bad number {s}"));
        match a.as_str() {
            "--socket" => o.socket = v()?,
            "--queues" => o.queues = num(v()?)? as usize,
            "--depth" => o.depth = num(v()?)? as usize,
            "--rw" => o.write = v()? == "randwrite",
            "--seconds" => o.seconds = v()?.parse().map_err(|_| "bad --seconds")?,
            "--size" => o.size = num(v()?)?,
            "--bs" => o.bs = num(v()?)? as usize,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if o.socket.is_empty() || o.size < o.bs as u64 {
        return Err("--socket and --size are needed".into());
    }
    Ok(o)
}

/// Runs one queue for `deadline`; returns the requests completed.
fn run_queue(
    q: &mut Blkioq,
    base: usize,
    o: &Options,
    seed: u64,
    deadline: Instant,
) -> Result<u64, String> {
    let blocks = o.size / o.bs as u64;
    let mut state = seed | 1;
    let mut next_offset = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % blocks) * 4096
    };
    let submit = |q: &mut Blkioq, slot: usize, offset: u64| {
        let addr = base + slot * o.bs;
        if o.write {
            q.write(offset, addr as *const u8, o.bs, slot, ReqFlags::empty());
        } else {
            q.read(offset, addr as *mut u8, o.bs, slot, ReqFlags::empty());
        }
    };
    for slot in 0..o.depth {
        submit(q, slot, next_offset());
    }
    let mut completions: Vec<MaybeUninit<blkio::Completion>> =
        (0..o.depth).map(|_| MaybeUninit::uninit()).collect();
    let mut done = 0u64;
    let mut slot = 0usize;
    while Instant::now() < deadline {
        let n = q
            .do_io(&mut completions, 1, None, None)
            .map_err(|e| format!("do_io: {}", e.message()))?;
        done += n as u64;
        // Buffers are only scratch space: any slot may carry the next request.
        for _ in 0..n {
            submit(q, slot, next_offset());
            slot = (slot + 1) % o.depth;
        }
    }
    // Reap what is still in flight before the connection closes.
    let mut left = o.depth;
    while left > 0 {
        let n = q
            .do_io(&mut completions[..left], left, None, None)
            .map_err(|e| format!("do_io: {}", e.message()))?;
        left -= n;
    }
    Ok(done)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("blkio-client: {e}");
            std::process::exit(2);
        }
    };
    let fail = |what: &str, e: blkio::Error| -> ! {
        eprintln!("blkio-client: {what}: {}", e.message());
        std::process::exit(1)
    };
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap_or_else(|e| fail("new", e));
    b.set_str("path", &o.socket)
        .unwrap_or_else(|e| fail("path", e));
    b.connect().unwrap_or_else(|e| fail("connect", e));
    b.set_i32("num-queues", o.queues as i32)
        .unwrap_or_else(|e| fail("num-queues", e));
    let started = b.start().unwrap_or_else(|e| fail("start", e));
    let region = b
        .alloc_mem_region(o.queues * o.depth * o.bs)
        .unwrap_or_else(|e| fail("alloc_mem_region", e));
    b.map_mem_region(&region)
        .unwrap_or_else(|e| fail("map_mem_region", e));
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs_f64(o.seconds);
    let total: Result<u64, String> = std::thread::scope(|s| {
        let handles: Vec<_> = started
            .queues
            .into_iter()
            .enumerate()
            .map(|(i, mut q)| {
                let o = &o;
                let base = region.addr + i * o.depth * o.bs;
                s.spawn(move || {
                    run_queue(
                        &mut q,
                        base,
                        o,
                        0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                        deadline,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a queue thread panicked".to_string())?
            })
            .sum()
    });
    let elapsed = begin.elapsed().as_secs_f64();
    match total {
        Ok(ios) => println!(
            "ios {ios} seconds {elapsed:.3} iops {:.0}",
            ios as f64 / elapsed
        ),
        Err(e) => {
            eprintln!("blkio-client: {e}");
            std::process::exit(1);
        }
    }
}
