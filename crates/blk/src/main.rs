//! `blk`: qemu-img's image commands (and a qemu-io subset) over the blk disk-image crates.
//!
//! Every subcommand lives in its own module under [`cmd`] and works on any format the factory opens, through
//! the `DiskFile` trait only. The command line is read as qemu-img reads its own ([`cmd::grammar`]). Errors
//! print as one line, `blk: <error>`, on stderr, with exit code 1 unless the subcommand has qemu-img's specific
//! codes (`compare`, `check`); usage errors add qemu-img's `Try 'blk SUBCOMMAND --help' for more info` line
//! where it prints one.

mod cmd;
mod output;

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    restore_sigpipe();
    let code = cmd::run_cli(std::env::args_os().collect::<Vec<OsString>>());
    ExitCode::from(code)
}

/// Lets a closed pipe end the process quietly (`blk map x | head`), as it does C tools, instead of making
/// every `println!` fail.
fn restore_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to the default is async-signal-safe and happens before any thread
    // is started; no Rust code relies on SIGPIPE being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
