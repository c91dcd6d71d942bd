//! `blk io`: blk's qemu-io. The commands that need no running VM (`read`, `readv`, `write`, `writev`,
//! `aio_read`, `aio_write`, `aio_flush`, `discard`, `flush`, `truncate`, `length`, `info`, `map`, `alloc`,
//! `open`, `close`, `reopen`, `quit`, `help`, `sleep`, `abort`, `sigraise`) with qemu-io 10.0.2's options,
//! output lines, messages and exit codes; the debugging and zoned-device commands answer as qemu-io does on
//! an image without those features.
//!
//! Commands come from `-c` (repeatable, run in order) or, without any, from stdin one a line after qemu-io's
//! `qemu-io> ` prompt. Every command runs even after a failure; the exit code is 1 when any failed, as with
//! qemu-io. Two deliberate differences: an I/O error beyond what qemu-io's `strerror` says (out of range, a
//! host error) is printed as `OP failed: <error naming file and offset>` on stderr, and errors qemu-io prints as
//! `qemu-io: ...` start `blk: `.
//!
//! - [`getopt`]: a command's options and operands, numbers and patterns.
//! - [`table`]: the command table and `help`.
//! - [`session`]: dispatch, and the commands that open, close, reopen or reshape the image.
//! - [`image`]: how images are opened (options, refusals, `-s`) and the open image.
//! - [`process`]: `help`, `sleep`, `sigraise`, and the debugging and zone commands.
//! - [`transfer`]: the commands that move data.
//! - [`inspect`]: `length`, `info`, `map`, `alloc`.
//! - [`crate::cmd::probe_guard`] (shared with the other subcommands): QEMU's refusal to let writes turn a
//!   probed raw image into another format.
//! - [`report`]: statistics lines and dumps.

mod getopt;
mod image;
mod inspect;
mod process;
mod report;
mod session;
mod table;
mod transfer;

use std::path::PathBuf;

use blk_core::{Error, Result};
use clap::Args;

use image::OpenSettings;
use session::Session;

/// qemu-io's `BDRV_REQUEST_MAX_BYTES`: the largest single request.
const MAX_REQUEST: u64 = (i32::MAX as u64) & !511;

/// What `blk io` prints on stdout when its command line is refused, as qemu-io prints its usage: the same
/// options, naming blk.
pub const USAGE: &str = "\
Usage: blk io [OPTIONS]... [-c STRING]... [file]
Run qemu-io's commands on an image

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace OPTIONS  accepted; blk has no trace events
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See 'blk io -c help' for information on available commands.
";

/// The commands `blk io` runs, for `blk io --help`.
const COMMANDS_HELP: &str = "\
Commands (qemu-io's; `-c help` and `-c 'help CMD'` show their options):
  read, readv, write, writev, aio_read, aio_write, aio_flush, discard, flush, truncate,
  length, info, map, alloc, open, close, reopen, quit, help, sleep, abort, sigraise
  (break, remove_break, resume, wait_break and zone_* answer as on an image without
  blkdebug or zones)";

/// Arguments of `blk io` (qemu-io's options).
#[derive(Debug, Args)]
#[command(after_help = COMMANDS_HELP)]
pub struct IoArgs {
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Open the image read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// Force shared permissions: take no lock (only with `-r`, as qemu-io).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Cache mode: `none` and `directsync` bypass the host page cache, `writeback` (default),
    /// `writethrough` and `unsafe` do not.
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Bypass the host page cache (same as `-t none`).
    #[arg(short = 'n', long = "nocache")]
    pub nocache: bool,
    /// Copy-on-read: reads store what they read from backing files (or unallocated) into the image.
    #[arg(short = 'C', long = "copy-on-read")]
    pub copy_on_read: bool,
    /// I/O backend of the image's queues: `threads`, `native` (Linux AIO, needs `-n`) or `io_uring`.
    #[arg(short = 'i', long = "aio", value_name = "MODE")]
    pub aio: Option<String>,
    /// Same as `-i native`.
    #[arg(short = 'k', long = "native-aio")]
    pub native_aio: bool,
    /// Discard mode: `unmap`/`on` (default) passes discards on, `ignore`/`off` drops them.
    #[arg(short = 'd', long = "discard", value_name = "MODE")]
    pub discard: Option<String>,
    /// Snapshot mode: writes go to a temporary QCOW2 overlay and are dropped at exit.
    #[arg(short = 's', long = "snapshot")]
    pub snapshot: bool,
    /// Misalign buffers (accepted for compatibility; blk aligns its own bounce buffers).
    #[arg(short = 'm', long = "misalign")]
    pub misalign: bool,
    /// `--image-opts`: the file operand is an option string, `driver=FMT,file.filename=PATH` (resolved before
    /// the run, as for every subcommand, by [`crate::cmd::image_opts::resolve`]).
    #[command(flatten)]
    pub image_opts: crate::cmd::image_opts::ImageOptsArgs,
    /// Tracing options (accepted; blk has no trace events).
    #[arg(short = 'T', long = "trace", value_name = "OPTIONS")]
    pub trace: Vec<String>,
    /// Print the version and exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    /// `--object`: secrets, checked and defined as for every subcommand.
    #[command(flatten)]
    pub objects: crate::cmd::objects::ObjectArgs,
    /// A command to run, e.g. `write -P 0xa7 0 128k` (repeatable; run in order). Without any, commands are
    /// read from stdin, one a line, until EOF or `quit`. `-c help` lists the commands.
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "COMMAND",
        allow_hyphen_values = true
    )]
    pub commands: Vec<String>,
    /// The image (none: only `open`, `help`, `sleep` and `quit` work until `open`).
    pub filename: Option<PathBuf>,
}

/// Why a command failed (the exit code becomes 1).
#[derive(Debug)]
pub enum Failure {
    /// The message is printed already.
    Reported,
    /// A bad option: the command's usage line is still to print.
    Usage,
    /// An I/O error of the named operation (`read`, `write`, ...), still to print.
    Io(&'static str, Error),
}

/// What a command returns.
pub type Outcome = std::result::Result<(), Failure>;

/// Runs `blk io`.
pub fn run(args: IoArgs) -> Result<u8> {
    if args.version {
        println!("blk io version {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let settings = OpenSettings::from_args(&args)?;
    let mut session = Session::new(settings);
    if let Some(target) = &args.filename {
        session.open_initial(target, args.image_opts.image_opts)?;
    }
    if args.commands.is_empty() {
        session.run_stdin()?;
    } else {
        for command in &args.commands {
            session.execute(command);
            if session.quit {
                break;
            }
        }
    }
    Ok(u8::from(session.failed))
}
