//! The state of one `blk io` run (the open image, whether to quit, whether a command failed), the dispatch of a
//! command line as qemu-io's `qemuio_command` does it (lookup, open-file check, operand count, write
//! permission, then the command), the commands that open, close, reopen or reshape the image, and how a
//! failed request is printed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use blk_core::{ErrorKind, LockMode, Result};
use blk_factory::{resize_disk_file, ResizeParams};

use super::getopt::{getopt, parse_num};
use super::image::{
    apply_image_options, cant_open, open_image, open_overlay, parse_aio, parse_discard, Image,
    OpenSettings,
};
use super::process::{help, not_supported, sigraise, sleep, zone};
use super::table::{self, Command, Needs};
use super::{inspect, transfer, Failure, Outcome};
use crate::cmd::{invalid, parse_cache, parse_format, parse_options};

/// One `blk io` run.
pub struct Session {
    image: Option<Image>,
    settings: OpenSettings,
    /// `quit` ran.
    pub quit: bool,
    /// A command failed: the exit code is 1.
    pub failed: bool,
}

impl Session {
    /// A session with no image open yet.
    pub fn new(settings: OpenSettings) -> Session {
        Session {
            image: None,
            settings,
            quit: false,
            failed: false,
        }
    }

    /// Opens the command line's image (`target` is an option string with `--image-opts`); an error ends the
    /// run with exit code 1.
    pub fn open_initial(&mut self, target: &Path, image_opts: bool) -> Result<()> {
        let mut settings = self.settings.clone();
        let path = if image_opts {
            apply_image_options(&target.to_string_lossy(), &mut settings)?
                .ok_or_else(|| invalid("The option string names no file (file.filename=...)"))?
        } else {
            target.to_path_buf()
        };
        self.image = Some(open_image(&path, &settings).map_err(|e| cant_open(&path, e))?);
        Ok(())
    }

    /// Reads commands from stdin after qemu-io's prompt, until EOF or `quit`.
    pub fn run_stdin(&mut self) -> Result<()> {
        let stdin = std::io::stdin();
        let mut stdin = stdin.lock();
        let mut line = String::new();
        while !self.quit {
            print!("qemu-io> ");
            std::io::stdout().flush()?;
            line.clear();
            if stdin.read_line(&mut line)? == 0 {
                break;
            }
            let command = line.strip_suffix('\n').unwrap_or(&line);
            self.execute(command);
        }
        Ok(())
    }

    /// Runs one command line (words separated by spaces, as qemu-io splits them).
    pub fn execute(&mut self, line: &str) {
        let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        let Some((&typed, args)) = words.split_first() else {
            return;
        };
        let Some(command) = table::find(typed) else {
            eprintln!("command \"{typed}\" not found");
            self.failed = true;
            return;
        };
        if let Err(failure) = self.dispatch(command, typed, args) {
            self.failed = true;
            match failure {
                Failure::Reported => {}
                Failure::Usage => table::print_usage(command),
                Failure::Io(op, err) => print_io_error(op, err, self.image.as_ref()),
            }
        }
    }

    /// qemu-io's `command`: the checks every command gets, then the command.
    fn dispatch(&mut self, command: &'static Command, typed: &str, args: &[&str]) -> Outcome {
        if matches!(command.needs, Needs::File | Needs::WritableFile) && self.image.is_none() {
            eprintln!("no file open, try 'help open'");
            return Err(Failure::Reported);
        }
        let n = args.len();
        if n < command.argmin || command.argmax.is_some_and(|max| n > max) {
            match command.argmax {
                None => eprintln!(
                    "bad argument count {n} to {typed}, expected at least {} arguments",
                    command.argmin
                ),
                Some(max) if max == command.argmin => {
                    eprintln!("bad argument count {n} to {typed}, expected {max} arguments")
                }
                Some(max) => eprintln!(
                    "bad argument count {n} to {typed}, expected between {} and {max} arguments",
                    command.argmin
                ),
            }
            return Err(Failure::Reported);
        }
        if command.needs == Needs::WritableFile
            && self
                .image
                .as_ref()
                .is_some_and(|image| image.settings.read_only)
        {
            eprintln!("blk: Block node is read-only");
            return Err(Failure::Reported);
        }
        match (command.name, self.image.as_ref()) {
            ("help", _) => help(args),
            ("quit", _) => {
                self.quit = true;
                Ok(())
            }
            ("open", _) => self.open(typed, args),
            ("close", _) => {
                self.image = None;
                Ok(())
            }
            ("reopen", _) => self.reopen(typed, args),
            ("truncate", _) => self.truncate(typed, args),
            ("sleep", _) => sleep(args[0]),
            ("abort", _) => std::process::abort(),
            ("sigraise", _) => sigraise(args[0]),
            ("break", _) => not_supported("Could not set breakpoint"),
            ("remove_break", _) => {
                not_supported(&format!("Could not remove breakpoint {}", args[0]))
            }
            ("resume", _) => not_supported("Could not resume request"),
            ("wait_break", _) => {
                eprintln!("blk: no request is suspended at breakpoint {}", args[0]);
                Err(Failure::Reported)
            }
            (name, Some(_)) if name.starts_with("zone_") => zone(name, typed, args),
            (_, Some(image)) => run_on_image(command.name, typed, args, image),
            (_, None) => Ok(()),
        }
    }

    /// `open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] path`.
    fn open(&mut self, typed: &str, args: &[&str]) -> Outcome {
        let options = getopt(typed, args, "snCro:ki:t:d:U")?;
        let mut settings = self.settings.clone();
        settings.read_only = options.has('r');
        settings.force_share = options.has('U');
        settings.copy_on_read = options.has('C');
        settings.direct = options.has('n');
        if let Some(mode) = options.value('t') {
            settings.direct = parse_cache(mode).map_err(report)?;
        }
        if let Some(mode) = options.value('d') {
            settings.ignore_discards = parse_discard(mode).map_err(report)?;
        }
        if options.has('k') {
            settings.backend = parse_aio("native").map_err(report)?;
        }
        if let Some(mode) = options.value('i') {
            settings.backend = parse_aio(mode).map_err(report)?;
        }
        settings.snapshot = options.has('s');
        let mut path = None;
        if let Some(text) = options.value('o') {
            path = apply_image_options(text, &mut settings).map_err(report)?;
        }
        let path = match (options.operands.as_slice(), path) {
            ([name], _) => PathBuf::from(name),
            ([], Some(path)) => path,
            _ => return Err(Failure::Usage),
        };
        if self.image.is_some() {
            eprintln!("blk: file open already, try 'help close'");
            return Err(Failure::Reported);
        }
        let image = open_image(&path, &settings).map_err(|e| report(cant_open(&path, e)))?;
        self.image = Some(image);
        Ok(())
    }

    /// `reopen [(-r|-w)] [-c cache] [-o options]`: the same image with new options.
    fn reopen(&mut self, typed: &str, args: &[&str]) -> Outcome {
        let options = getopt(typed, args, "c:o:rw")?;
        if !options.operands.is_empty() {
            return Err(Failure::Usage);
        }
        if options.has('r') && options.has('w') {
            eprintln!("blk: Only one -r/-w option may be given");
            return Err(Failure::Reported);
        }
        let Some(image) = self.image.take() else {
            return Ok(());
        };
        let mut settings = image.settings.clone();
        if options.has('r') {
            settings.read_only = true;
        }
        if options.has('w') {
            settings.read_only = false;
        }
        if let Some(mode) = options.value('c') {
            match parse_cache(mode) {
                Ok(direct) => settings.direct = direct,
                Err(err) => {
                    self.image = Some(image);
                    return Err(report(err));
                }
            }
        }
        if let Some(text) = options.value('o') {
            if let Some((key, _)) = parse_options(&[text.to_string()])
                .map_err(report)?
                .into_iter()
                .next()
            {
                self.image = Some(image);
                eprintln!("blk: Cannot change the option '{key}'");
                return Err(Failure::Reported);
            }
        }
        self.reopen_as(image, &settings, |_, _| Ok(()))
    }

    /// Closes `image`, runs `between` on the file it was (the `-s` overlay stays) and its format, and opens
    /// it again with `settings`; on failure the image stays closed.
    fn reopen_as(
        &mut self,
        mut image: Image,
        settings: &OpenSettings,
        between: impl FnOnce(&Path, &'static str) -> Result<()>,
    ) -> Outcome {
        let overlay = image.overlay.take();
        let file = image.file.clone();
        let path = image.path.clone();
        let format = image.format;
        drop(image);
        let done = between(&file, format).and_then(|()| match overlay {
            Some(overlay) => open_overlay(overlay, &path, settings),
            None => open_image(&file, settings),
        });
        let image = done.map_err(report)?;
        self.image = Some(image);
        Ok(())
    }

    /// `truncate [-m prealloc_mode] off`: a new virtual size (smaller too), through `blk resize`'s code.
    fn truncate(&mut self, typed: &str, args: &[&str]) -> Outcome {
        let options = getopt(typed, args, "m:")?;
        let preallocation = match options.value('m') {
            None | Some("off") => None,
            Some(mode @ ("metadata" | "falloc" | "full")) => Some(mode.to_string()),
            Some(mode) => {
                eprintln!("blk: Invalid preallocation mode '{mode}'");
                return Err(Failure::Reported);
            }
        };
        let Some(text) = options.operands.first() else {
            return Err(Failure::Usage);
        };
        let size = parse_num(text)?;
        let Some(image) = self.image.take() else {
            return Ok(());
        };
        let settings = image.settings.clone();
        let mut resized = Ok(());
        let path = image.path.clone();
        let reopened = self.reopen_as(image, &settings, |file, format| {
            let params = ResizeParams {
                path: file.to_path_buf(),
                format: parse_format(Some(format)).ok().flatten(),
                size,
                shrink: true,
                preallocation,
                lock: LockMode::Auto,
            };
            resized = resize_disk_file(&params).map_err(|e| report(e.with_path(&path)));
            Ok(())
        });
        resized.and(reopened)
    }
}

/// Prints `err` as qemu-io's `error_report` lines are printed by blk: `blk: <error>` on stderr.
fn report(err: blk_core::Error) -> Failure {
    crate::cmd::report(&err);
    Failure::Reported
}

/// qemu's `strerror` text of an error, without Rust's `(os error N)`.
pub fn strerror(err: &blk_core::Error) -> String {
    crate::cmd::strerror(err.errno())
}

/// Prints a failed request as qemu-io does: `OP failed: <strerror>` on stdout, a request past the end of the
/// image being an `Input/output error` as in QEMU. A corrupt image (a write refused by the metadata overlap
/// check, an invalid table entry) is also said on stderr with what is wrong, file and offset, as qemu's
/// `qcow2: Marking image as corrupt: ...` line is, before the `Input/output error` on stdout.
pub fn print_io_error(op: &str, err: blk_core::Error, _image: Option<&Image>) {
    match err.kind() {
        ErrorKind::OutOfBounds => println!("{op} failed: {}", crate::cmd::strerror(libc::EIO)),
        ErrorKind::CorruptImage => {
            crate::cmd::report(&err);
            println!("{op} failed: {}", strerror(&err));
        }
        _ => println!("{op} failed: {}", strerror(&err)),
    }
}

/// The commands that work on the open image's data or metadata.
fn run_on_image(name: &str, typed: &str, args: &[&str], image: &Image) -> Outcome {
    match name {
        "read" => transfer::read(image, typed, args),
        "readv" => transfer::readv(image, typed, args),
        "write" => transfer::write(image, typed, args),
        "writev" => transfer::writev(image, typed, args),
        "aio_read" => transfer::aio_read(image, typed, args),
        "aio_write" => transfer::aio_write(image, typed, args),
        "discard" => transfer::discard(image, typed, args),
        "flush" => transfer::flush(image),
        "aio_flush" => Ok(()),
        "length" => inspect::length(image),
        "info" => inspect::info(image),
        "map" => inspect::map(image),
        "alloc" => inspect::alloc(image, args),
        _ => Ok(()),
    }
}
