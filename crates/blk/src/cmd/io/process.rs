//! The commands that need no image data: `help`, `sleep`, `sigraise`, and the debugging (blkdebug) and
//! zoned-device commands, which answer as qemu-io does on an image without those features.

use std::io::Write;
use std::time::Duration;

use super::getopt::{getopt, parse_num, strtol};
use super::table;
use super::{Failure, Outcome};

/// `help [command]`.
pub fn help(args: &[&str]) -> Outcome {
    match args.first() {
        None => {
            table::print_help_all();
            Ok(())
        }
        Some(name) => match table::find(name) {
            Some(command) => {
                table::print_help_one(name, command);
                Ok(())
            }
            None => {
                println!("command {name} not found");
                Err(Failure::Reported)
            }
        },
    }
}

/// `sleep MS`.
pub fn sleep(text: &str) -> Outcome {
    match strtol(text) {
        Some(ms) if ms >= 0 => {
            std::thread::sleep(Duration::from_millis(ms as u64));
            Ok(())
        }
        _ => {
            println!("{text} is not a valid number");
            Err(Failure::Reported)
        }
    }
}

/// `sigraise SIGNAL`: raises the signal after flushing the output, as qemu-io.
pub fn sigraise(text: &str) -> Outcome {
    let signal = parse_num(text)?;
    if signal > 65 {
        println!("signal argument '{text}' is too large to be a valid signal");
        return Err(Failure::Reported);
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // The number was checked to be at most NSIG (65) above, so it fits a C int.
    let signal = signal as libc::c_int;
    // SAFETY: raise(3) takes any signal number (an invalid one fails with EINVAL) and touches no memory of
    // ours; what the signal does to the process is what the user asked for.
    unsafe {
        libc::raise(signal);
    }
    Ok(())
}

/// The debugging commands of qemu's blkdebug driver, on an image without it.
pub fn not_supported(what: &str) -> Outcome {
    println!("{what}: Operation not supported");
    Err(Failure::Reported)
}

/// The zoned-device commands, on an image that is not zoned: qemu's `zone OP failed` message.
pub fn zone(name: &str, typed: &str, args: &[&str]) -> Outcome {
    let options = getopt(typed, args, "")?;
    for operand in &options.operands {
        parse_num(operand)?;
    }
    let op = name.trim_start_matches("zone_");
    println!("zone {op} failed: Operation not supported");
    Err(Failure::Reported)
}
