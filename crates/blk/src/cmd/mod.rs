//! The command line: clap definitions, dispatch, exit codes, and the helpers every subcommand shares (opening
//! an image through the factory, format names, cache modes, `-o` option lists, sizes).

pub mod amend;
pub mod bench;
pub mod bitmap;
pub mod check;
pub mod commit;
pub mod compare;
pub mod completions;
pub mod convert;
pub mod create;
pub mod dd;
pub mod demo;
pub mod formatting;
pub mod grammar;
pub mod image_opts;
pub mod info;
pub mod io;
pub mod man;
pub mod map;
pub mod measure;
pub mod objects;
pub mod option_list;
pub mod probe_guard;
pub mod progress;
pub mod rate_limit;
pub mod rebase;
pub mod resize;
pub mod scan;
pub mod snapshot;
pub mod sparse;
pub mod vhost_user_blk;

use std::ffi::OsString;
use std::path::Path;

use blk_core::{AsyncDiskFile, DiskFile, Error, ErrorKind, Extent, LockMode, Operation, Result};
use blk_factory::{DiskFileParams, ImageFormat, NamedImagePolicy, OpenedImage};
use clap::builder::{TypedValueParser, ValueParser};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The size of one copy or compare step: large enough for throughput, small enough to keep memory low.
pub const CHUNK: u64 = 2 << 20;

/// blk: disk-image tool with qemu-img's commands, flags, output and exit codes.
#[derive(Debug, Parser)]
#[command(name = "blk", version, about, long_about = None, disable_help_subcommand = true)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, named as in qemu-img (`io` is qemu-io).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show information about an image (qemu-img info).
    Info(info::InfoArgs),
    /// Create a new image (qemu-img create).
    Create(create::CreateArgs),
    /// Copy one or more images into a new image, optionally changing the format (qemu-img convert).
    Convert(convert::ConvertArgs),
    /// Compare the guest-visible contents of two images (qemu-img compare).
    Compare(compare::CompareArgs),
    /// Show the allocation map of an image (qemu-img map).
    Map(map::MapArgs),
    /// Measure how big a new image would be, of a size or a copy of an image (qemu-img measure).
    Measure(measure::MeasureArgs),
    /// Check an image's consistency (qemu-img check).
    Check(check::CheckArgs),
    /// Change an image's format options in place (qemu-img amend).
    Amend(amend::AmendArgs),
    /// Run a simple I/O benchmark on an image (qemu-img bench).
    Bench(bench::BenchArgs),
    /// Write an image's data into its backing file (qemu-img commit).
    Commit(commit::CommitArgs),
    /// Change the backing file of an image (qemu-img rebase).
    Rebase(rebase::RebaseArgs),
    /// Change the virtual size of an image (qemu-img resize).
    Resize(resize::ResizeArgs),
    /// List, create, apply or delete the internal snapshots of an image (qemu-img snapshot).
    Snapshot(snapshot::SnapshotArgs),
    /// Add, remove, clear, enable, disable or merge the persistent dirty bitmaps of an image (qemu-img
    /// bitmap).
    Bitmap(bitmap::BitmapArgs),
    /// Copy a part of an image into a new image, dd style (qemu-img dd).
    Dd(dd::DdArgs),
    /// Run qemu-io style commands against an image (qemu-io -c).
    Io(io::IoArgs),
    /// Demonstrate the tool on a temporary image.
    Demo(demo::DemoArgs),
    /// Serve an image to a VMM over a vhost-user socket until SIGTERM or SIGINT (qemu-storage-daemon's
    /// vhost-user-blk export).
    VhostUserBlk(vhost_user_blk::VhostUserBlkArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(completions::CompletionsArgs),
    /// Print the manual page (or write every page into a directory).
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Parses `args` (including the program name) as qemu-img reads its command line (see [`grammar`]), runs the
/// subcommand and returns the process exit code.
pub fn run_cli<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut definition = command();
    let normalized = match grammar::read(&definition, &args) {
        grammar::Reading::Clap(words) => words,
        grammar::Reading::Refused(usage) => return usage.print(),
        grammar::Reading::OptionHelp { sub, format } => {
            return match print_options_without_file(&sub, format.as_deref()) {
                Ok(code) => code,
                Err(err) => {
                    report(&err);
                    1
                }
            }
        }
    };
    let sub = normalized
        .get(1)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parsed = definition
        .try_get_matches_from_mut(normalized)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    match parsed {
        Ok(cli) => match run(cli.command) {
            Ok(code) => code,
            Err(err) => {
                report(&err);
                1
            }
        },
        Err(err) => clap_error(err, &sub),
    }
}

/// clap's definition of the command line, as [`grammar`] hands it words: every option may be repeated (the
/// last value wins) and every option value is taken as it is, even when it starts with `-`.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.args_override_self(true).mut_args(|a| {
                let a = if !a.is_positional() && a.get_action().takes_values() {
                    a.allow_hyphen_values(true)
                } else {
                    a
                };
                if a.get_value_parser().type_id() == ValueParser::path_buf().type_id() {
                    a.value_parser(AnyPath)
                } else {
                    a
                }
            })
        });
    }
    // qemu-img convert also calls `--image-opts` `--source-image-opts` (its sources are the images).
    cmd = cmd.mut_subcommand("convert", |sub| {
        sub.mut_arg("image_opts", |a| a.visible_alias("source-image-opts"))
    });
    cmd.build();
    cmd
}

fn run(mut command: Command) -> Result<u8> {
    objects::define(image_opts::object_definitions(&command))?;
    image_opts::resolve(&mut command)?;
    match command {
        Command::Info(args) => info::run(args),
        Command::Create(args) => create::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Map(args) => map::run(args),
        Command::Measure(args) => measure::run(args),
        Command::Check(args) => check::run(args),
        Command::Amend(args) => amend::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Commit(args) => commit::run(args),
        Command::Rebase(args) => rebase::run(args),
        Command::Resize(args) => resize::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Bitmap(args) => bitmap::run(args),
        Command::Dd(args) => dd::run(args),
        Command::Io(args) => io::run(args),
        Command::Demo(args) => demo::run(args),
        Command::VhostUserBlk(args) => vhost_user_blk::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
    }
}

/// Prints `err` as the error line `blk: <error>`, then its [`Hint`] if it carries one.
pub fn report(err: &Error) {
    eprintln!("blk: {err}");
    if let Some(hint) = err.cause().and_then(|c| c.downcast_ref::<Hint>()) {
        eprintln!("{}", hint.0);
    }
}

/// A second line qemu-img prints under some errors (QEMU's `error_append_hint`, e.g. `Could not open backing
/// image.`), attached to an error as its source: [`report`] prints it on its own line. Its `Display` is empty
/// so the error's own line does not repeat it.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl std::error::Error for Hint {}

/// `err` with `hint` to print under it (see [`Hint`]).
pub fn with_hint(err: Error, hint: impl Into<String>) -> Error {
    err.with_source(Hint(hint.into()))
}

/// A file name as given, even empty (clap's own path parser refuses `""`, which qemu-img takes and then fails
/// to open with its own message).
#[derive(Debug, Clone, Copy)]
struct AnyPath;

impl TypedValueParser for AnyPath {
    type Value = std::path::PathBuf;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<Self::Value, clap::Error> {
        Ok(value.into())
    }
}

/// Help and version go to stdout with code 0; a value clap refuses (the options with a fixed set of values)
/// gets qemu-img's message and `Try` line; anything else is one `blk: ...` line with code 1, as every other
/// error.
fn clap_error(err: clap::Error, sub: &str) -> u8 {
    use clap::error::{ContextKind, ContextValue, ErrorKind as K};
    match err.kind() {
        K::DisplayHelp | K::DisplayVersion => {
            print!("{}", err.render());
            0
        }
        K::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{}", err.render());
            1
        }
        K::InvalidValue => {
            let context = |kind| match err.get(kind) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let (arg, value) = (
                context(ContextKind::InvalidArg),
                context(ContextKind::InvalidValue),
            );
            let message = if arg.starts_with("--output") {
                format!("--output expects 'human' or 'json' not '{value}'")
            } else if arg.contains("--repair") {
                format!("--repair (-r) expects 'leaks' or 'all' not '{value}'")
            } else {
                return clap_error_line(&err);
            };
            grammar::UsageError::usage(sub, message, true).print()
        }
        _ => clap_error_line(&err),
    }
}

/// The first line of clap's message, as one `blk: ...` line; code 1.
fn clap_error_line(err: &clap::Error) -> u8 {
    let text = err.render().to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let line = lines.next().unwrap_or("invalid command line");
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // "the following required arguments were not provided:" names them on the next line.
    match lines.next().filter(|_| line.ends_with(':')) {
        Some(next) => eprintln!("blk: {line} {}", next.trim()),
        None => eprintln!("blk: {line}"),
    }
    1
}

/// An error for bad command-line input.
pub fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Parses an optional format name (`-f`, `-O`, `-F`): `raw`, `qcow2`, `vpc`/`vhd`, `vhdx`.
pub fn parse_format(name: Option<&str>) -> Result<Option<ImageFormat>> {
    name.map(str::parse::<ImageFormat>).transpose()
}

/// Whether an optional cache mode (`-t`, `-T`) bypasses the host page cache; no mode means the page cache.
pub fn cache_is_direct(mode: Option<&str>) -> Result<bool> {
    mode.map(parse_cache)
        .transpose()
        .map(|direct| direct.unwrap_or(false))
}

/// Parses a qemu cache mode (`-t`, `-T`) into whether to bypass the host page cache.
pub fn parse_cache(mode: &str) -> Result<bool> {
    match mode {
        "none" | "directsync" => Ok(true),
        "writeback" | "writethrough" | "unsafe" => Ok(false),
        _ => Err(invalid(format!("Invalid cache option: {mode}"))),
    }
}

/// Parses a size or offset in qemu's syntax (`16M`, `1.5G`, `4096`) up to `INT64_MAX`, with qemu-img's messages
/// naming `what` (`Invalid image size specified: 'x'.`, `... Must be between 0 and 9223372036854775807.`).
pub fn parse_size_arg(what: &str, text: &str) -> Result<u64> {
    blk_core::size::parse_size_in_range(what, text, 0, blk_core::size::MAX_CLI_SIZE)
}

/// The options `info`, `map` and `check` share: the image's format, the output format and `-U`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(
        long = "output",
        value_enum,
        default_value_t,
        value_name = "human|json"
    )]
    pub output: crate::output::OutputFormat,
    /// Open the image without taking a lock (shared with a running VM).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
}

/// How to open an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenSpec<'a> {
    /// The format name given on the command line; `None` probes.
    pub format: Option<&'a str>,
    /// Open without write access.
    pub read_only: bool,
    /// qemu-img `-U`: take no lock.
    pub force_share: bool,
    /// Bypass the host page cache (`-t none`).
    pub direct: bool,
    /// Open for `check -r`: no automatic repair on open, and images marked corrupt may be opened writable.
    pub check_mode: bool,
    /// Leave the backing file unopened (qemu's `BDRV_O_NO_BACKING`, as `qemu-img info` opens images).
    pub skip_backing: bool,
    /// Open this internal snapshot instead of the current disk (read-only; qemu-img's `-l`).
    pub snapshot: Option<&'a blk_core::SnapshotSelector>,
}

impl<'a> OpenSpec<'a> {
    /// A read-only open with format `format` (probed when `None`), sharing as `-U` says.
    pub fn read_only(format: Option<&'a str>, force_share: bool) -> OpenSpec<'a> {
        OpenSpec {
            format,
            read_only: true,
            force_share,
            direct: false,
            check_mode: false,
            skip_backing: false,
            snapshot: None,
        }
    }
}

/// Opens `path` through the factory as `spec` says, for guest data only (see [`open_image`]).
pub fn open_disk(path: &Path, spec: OpenSpec<'_>) -> Result<Box<dyn AsyncDiskFile>> {
    open_image(path, spec).map(|image| image.disk)
}

/// Opens `path` through the factory as `spec` says: the disk and its administration (info, check, ...).
/// Backing files an image names are opened read-only with their recorded format, as qemu-img does; every error
/// carries the path.
pub fn open_image(path: &Path, spec: OpenSpec<'_>) -> Result<OpenedImage> {
    let format = parse_format(spec.format).map_err(|e| e.with_path(path))?;
    if spec.force_share && !spec.read_only {
        return Err(invalid(format!(
            "Could not open '{}': force-share=on can only be used with read-only images",
            display_path(path)
        )));
    }
    if !spec.read_only {
        warn_if_probed_raw(path, spec.format);
    }
    let params = DiskFileParams::new(path)
        .format(format)
        .read_only(spec.read_only)
        .direct(spec.direct)
        .lock(if spec.force_share {
            LockMode::None
        } else {
            LockMode::Auto
        })
        .named_images(NamedImagePolicy::AllowRecordedFormat)
        .check_mode(spec.check_mode)
        .skip_backing(spec.skip_backing)
        .snapshot(spec.snapshot.cloned());
    let params = image_opts::with_runtime_options(params);
    let image = blk_factory::open_image(&params)
        .map_err(|e| image_opts::open_error(path, e.with_path(path)))?;
    report_open_repair(&image);
    Ok(image)
}

/// Prints the repair a writable open made of a dirty image, as qemu does on stderr (one line per problem).
pub fn report_open_repair(image: &OpenedImage) {
    if let Some(report) = image.admin.repaired_on_open() {
        for message in &report.messages {
            eprintln!("{message}");
        }
    }
}

/// qemu's warning when it opens an image writable whose format it had to guess and guessed raw
/// ([`probe_guard::warn_probed_raw`]): printed when `format` is `None` and `path` probes as raw. Nothing is
/// printed when detection fails; the open that follows reports that.
pub fn warn_if_probed_raw(path: &Path, format: Option<&str>) {
    if format.is_none() && blk_factory::detect_format(path).is_ok_and(|f| f == ImageFormat::RAW) {
        probe_guard::warn_probed_raw(path);
    }
}

/// The C library's text for `errno`, without Rust's ` (os error N)`.
pub fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Whether an `-o` list asks for the format's options (`-o help` or `-o ?`), as qemu-img accepts anywhere in it.
pub fn wants_option_help(lists: &[String]) -> bool {
    lists
        .iter()
        .flat_map(|l| l.split(','))
        .any(|item| item == "help" || item == "?")
}

/// Prints the creation options of `format` as `qemu-img create -o help` does.
pub fn print_option_help(format: ImageFormat) -> Result<u8> {
    let options = blk_factory::create_options(format);
    println!("Supported options:");
    for option in options {
        println!("{}", option.help_line());
    }
    Ok(0)
}

/// `-o help` of `create`, `convert` (`-O`) or `amend` given no file name: what qemu-img prints then. create and
/// convert list the format's own options (the `file` protocol's need a target file name) under `Supported FMT
/// options:`; amend needs `-f` to know the format.
fn print_options_without_file(sub: &str, format: Option<&str>) -> Result<u8> {
    if sub == "amend" {
        let Some(format) = format else {
            return Ok(
                grammar::UsageError::usage(sub, "Expecting one image file name", false).print(),
            );
        };
        return amend::print_amend_help(format.parse()?);
    }
    let format: ImageFormat = format.unwrap_or("raw").parse()?;
    let own = format.descriptor().formatting_options();
    // Every format has `size`; the file protocol adds the others.
    let protocol_only = |name: &str| {
        name != "size"
            && blk_core::FILE_FORMATTING_OPTIONS
                .iter()
                .any(|o| o.name == name)
            && !own.iter().any(|o| o.name == name)
    };
    println!("Supported {} options:", format.name());
    for option in blk_factory::create_options(format) {
        if !protocol_only(option.name) {
            println!("{}", option.help_line());
        }
    }
    println!("\nThe protocol level may support further options.");
    println!("Specify the target filename to include those options.");
    Ok(0)
}

/// Parses qemu's `-o key=value,key2=value2` lists (several `-o` are joined; `,,` is a literal comma; a bare
/// `key` means `key=on`; a key given twice keeps its last value; `help` and `?` are left to
/// [`wants_option_help`]).
pub fn parse_options(lists: &[String]) -> Result<Vec<(String, String)>> {
    let mut options = Vec::new();
    for list in lists {
        for item in option_list::split_items(list)
            .into_iter()
            .filter(|i| !i.is_empty())
        {
            if item == "help" || item == "?" {
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (item, "on".to_string()),
            };
            // A key given again (in the same or a later `-o`) replaces the earlier value, as in qemu.
            options.retain(|(k, _)| *k != key);
            options.push((key, value));
        }
    }
    Ok(options)
}

/// The first run of `disk` at `offset` (at most `len` bytes, `len > 0`), checked so that callers always
/// advance: an extent that starts elsewhere or is empty is reported as an error instead of looping forever.
pub fn map_extent(disk: &dyn DiskFile, path: &Path, offset: u64, len: u64) -> Result<Extent> {
    let mut extent = disk.map(offset, len).map_err(|e| e.with_path(path))?;
    if extent.offset != offset || extent.length == 0 {
        return Err(Error::new(
            ErrorKind::CorruptImage,
            format!(
                "the format mapped the range at {offset} to {} bytes at {}",
                extent.length, extent.offset
            ),
        )
        .with_path(path)
        .with_offset(offset)
        .with_operation(Operation::Map));
    }
    extent.length = extent.length.min(len);
    Ok(extent)
}

/// Refuses to create (truncate) `target` when it is one of `sources`: with `-U` no lock would stop that
/// from destroying the source.
pub fn refuse_overwriting_source(target: &Path, sources: &[impl AsRef<Path>]) -> Result<()> {
    let Ok(canonical) = std::fs::canonicalize(target) else {
        return Ok(());
    };
    if sources
        .iter()
        .any(|s| std::fs::canonicalize(s).is_ok_and(|s| s == canonical))
    {
        return Err(invalid("the target is also a source image").with_path(target));
    }
    Ok(())
}

/// The display form of a path argument (as the user typed it), for messages and `filename` fields.
pub fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lists() {
        let o = parse_options(&["a=1,b=x,,y".into(), "c".into()]).unwrap();
        assert_eq!(
            o,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x,y".into()),
                ("c".into(), "on".into())
            ]
        );
        assert!(parse_options(&["help".into()]).unwrap().is_empty());
        assert_eq!(
            parse_options(&["a=1,b=2".into(), "a=3".into()]).unwrap(),
            vec![("b".into(), "2".into()), ("a".into(), "3".into())]
        );
        assert!(wants_option_help(&["preallocation=full,?".into()]));
        assert!(!wants_option_help(&["preallocation=full".into()]));
    }

    #[test]
    fn cache_modes() {
        assert!(parse_cache("none").unwrap());
        assert!(!parse_cache("writeback").unwrap());
        assert!(parse_cache("bogus").is_err());
    }
}
