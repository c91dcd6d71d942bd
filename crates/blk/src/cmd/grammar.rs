//! qemu-img's command-line grammar over clap's definitions.
//!
//! clap defines every subcommand's options (and so `--help`, completions and the man page); this module reads a
//! command line the way qemu-img's `getopt_long` does before clap sees it:
//!
//! - options may come before, between and after file names; `--` ends the options;
//! - `-fqcow2` and `-qf qcow2` (clusters, attached values), `--output=json` and `--output json`, long options
//!   abbreviated to any unambiguous prefix (`--out=json`);
//! - an option given twice: the last value wins, lists (`-o`) collect every value;
//! - unknown options, missing values and values given to flags fail with glibc's messages, prefixed by the
//!   command (`blk convert: invalid option -- 'z'`), and qemu-img's `Try 'blk convert --help' for more info`;
//! - too few or too many file names fail with qemu-img's message for that subcommand.
//!
//! The result is a normalized command line (options first, then `--` and the file names) that clap parses
//! without surprises.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use clap::{ArgAction, Command};

/// The name the tool prints where qemu-img prints `qemu-img`.
pub const PROGRAM: &str = "blk";

/// A command line refused before any work: qemu-img's message, and whether its `Try ... --help` line follows.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    /// What precedes the message: `blk` or `blk <subcommand>` (getopt's messages name the subcommand).
    pub prefix: String,
    /// The message.
    pub message: String,
    /// The command whose help the `Try` line names (`blk convert`), when qemu-img prints that line.
    pub try_help: Option<String>,
    /// A usage text printed on stdout after the message, as qemu-io does instead of a `Try` line.
    pub usage_text: Option<&'static str>,
}

impl UsageError {
    /// Prints the error on stderr and returns qemu-img's exit code for usage errors, 1.
    /// An empty message prints nothing on stderr (qemu-io given too many file names prints only its usage).
    pub fn print(&self) -> u8 {
        if !self.message.is_empty() {
            eprintln!("{}: {}", self.prefix, self.message);
        }
        if let Some(command) = &self.try_help {
            eprintln!("Try '{command} --help' for more info");
        }
        if let Some(text) = self.usage_text {
            print!("{text}");
        }
        1
    }

    /// A usage error of `blk io`: qemu-io prints getopt's message (`blk: ...`, or nothing) and its usage text
    /// on stdout.
    fn io_usage(message: String) -> UsageError {
        UsageError {
            prefix: PROGRAM.to_string(),
            message,
            try_help: None,
            usage_text: Some(crate::cmd::io::USAGE),
        }
    }

    /// An error from getopt: prefixed and followed by the `Try` line of `blk <sub>`.
    fn getopt(sub: &str, message: String) -> UsageError {
        UsageError {
            prefix: format!("{PROGRAM} {sub}"),
            message,
            try_help: Some(format!("{PROGRAM} {sub}")),
            usage_text: None,
        }
    }

    /// A subcommand's own usage error (file names): `blk: message`, with or without the `Try` line.
    pub fn usage(sub: &str, message: impl Into<String>, try_line: bool) -> UsageError {
        UsageError {
            prefix: PROGRAM.to_string(),
            message: message.into(),
            try_help: try_line.then(|| format!("{PROGRAM} {sub}")),
            usage_text: None,
        }
    }
}

/// One option of a subcommand, as clap defines it.
#[derive(Debug)]
struct OptSpec {
    id: String,
    shorts: Vec<char>,
    longs: Vec<String>,
    takes_value: bool,
    action: ArgAction,
}

fn option_specs(cmd: &Command) -> Vec<OptSpec> {
    cmd.get_arguments()
        .filter(|a| !a.is_positional())
        .map(|a| OptSpec {
            id: a.get_id().to_string(),
            shorts: a.get_short_and_visible_aliases().unwrap_or_default(),
            longs: a
                .get_long_and_visible_aliases()
                .unwrap_or_default()
                .into_iter()
                .map(str::to_string)
                .collect(),
            takes_value: a.get_action().takes_values(),
            action: a.get_action().clone(),
        })
        .collect()
}

/// A subcommand's command line as getopt read it.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The options in the order given: the spec's id and its value.
    options: Vec<(usize, Option<OsString>)>,
    /// The file names (and other operands), in order.
    pub positionals: Vec<OsString>,
    /// `-h`/`--help` was met (getopt stops there and prints the help).
    help: bool,
}

/// Reads `args` (the words after the subcommand) with getopt_long's rules against `specs`.
fn getopt(sub: &str, specs: &[OptSpec], args: &[OsString]) -> Result<Parsed, UsageError> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    let err = |message: String| UsageError::getopt(sub, message);
    while i < args.len() {
        let word = args[i].as_bytes();
        i += 1;
        if word == b"--" {
            parsed.positionals.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = word.strip_prefix(b"--") {
            let (name, value) = match body.iter().position(|&b| b == b'=') {
                Some(eq) => (&body[..eq], Some(OsStr::from_bytes(&body[eq + 1..]))),
                None => (body, None),
            };
            let typed = String::from_utf8_lossy(word).into_owned();
            let name = String::from_utf8_lossy(name);
            let index = find_long(specs, &name).map_err(|candidates| {
                if candidates.is_empty() {
                    err(format!("unrecognized option '{typed}'"))
                } else {
                    let list: Vec<String> = candidates.iter().map(|c| format!("'--{c}'")).collect();
                    err(format!(
                        "option '--{name}' is ambiguous; possibilities: {}",
                        list.join(" ")
                    ))
                }
            })?;
            let spec = &specs[index];
            let full = spec
                .longs
                .iter()
                .find(|l| l.starts_with(&*name))
                .cloned()
                .unwrap_or_default();
            if matches!(spec.action, ArgAction::Help | ArgAction::HelpLong) {
                if value.is_some() {
                    return Err(err(format!("option '--{full}' doesn't allow an argument")));
                }
                parsed.help = true;
                return Ok(parsed);
            }
            let value = if spec.takes_value {
                match value {
                    Some(v) => Some(v.to_os_string()),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => return Err(err(format!("option '--{full}' requires an argument"))),
                }
            } else if value.is_some() {
                return Err(err(format!("option '--{full}' doesn't allow an argument")));
            } else {
                None
            };
            check_value(sub, spec, value.as_deref())?;
            parsed.options.push((index, value));
        } else if word.len() > 1 && word[0] == b'-' {
            let mut j = 1;
            while j < word.len() {
                let c = word[j] as char;
                j += 1;
                let Some(index) = specs.iter().position(|s| s.shorts.contains(&c)) else {
                    let shown = if word[j - 1].is_ascii() {
                        c.to_string()
                    } else {
                        String::from_utf8_lossy(&word[j - 1..])
                            .chars()
                            .take(1)
                            .collect()
                    };
                    return Err(err(format!("invalid option -- '{shown}'")));
                };
                let spec = &specs[index];
                if matches!(spec.action, ArgAction::Help | ArgAction::HelpShort) {
                    parsed.help = true;
                    return Ok(parsed);
                }
                if spec.takes_value {
                    let value = if j < word.len() {
                        OsStr::from_bytes(&word[j..]).to_os_string()
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(err(format!("option requires an argument -- '{c}'")));
                    };
                    check_value(sub, spec, Some(&value))?;
                    parsed.options.push((index, Some(value)));
                    break;
                }
                parsed.options.push((index, None));
            }
        } else {
            parsed.positionals.push(args[i - 1].clone());
            // qemu-img resize: a word right after the file name that looks like `-N` is the size (a decrease).
            if sub == "resize" && parsed.positionals.len() == 1 {
                if let Some(next) = args.get(i).filter(|w| {
                    let w = w.as_bytes();
                    w.len() > 1 && w[0] == b'-' && w[1].is_ascii_digit()
                }) {
                    parsed.positionals.push(next.clone());
                    i += 1;
                }
            }
        }
    }
    Ok(parsed)
}

/// The subcommands whose `-o` is a qemu option list, checked as it is read.
const OPTION_LIST_COMMANDS: [&str; 4] = ["amend", "convert", "create", "measure"];

/// Checks an option's value where qemu-img does while reading options: `-o` must be a valid option list (not
/// empty, not starting with `,`, and ending in an even number of commas, `,,` being an escaped comma).
fn check_value(sub: &str, spec: &OptSpec, value: Option<&OsStr>) -> Result<(), UsageError> {
    let Some(value) = value else {
        return Ok(());
    };
    if OPTION_LIST_COMMANDS.contains(&sub) && spec.shorts.contains(&'o') {
        let bytes = value.as_bytes();
        let trailing = bytes.iter().rev().take_while(|&&b| b == b',').count();
        if bytes.first().is_none_or(|&b| b == b',') || trailing % 2 == 1 {
            return Err(UsageError::usage(
                sub,
                format!("Invalid option list: {}", value.to_string_lossy()),
                false,
            ));
        }
    }
    Ok(())
}

/// The spec whose long name is `name` or, failing that, the only one it abbreviates; on failure the long
/// names it abbreviates (empty: none).
fn find_long(specs: &[OptSpec], name: &str) -> Result<usize, Vec<String>> {
    if let Some(i) = specs.iter().position(|s| s.longs.iter().any(|l| l == name)) {
        return Ok(i);
    }
    let matching: Vec<usize> = (0..specs.len())
        .filter(|&i| specs[i].longs.iter().any(|l| l.starts_with(name)))
        .collect();
    match matching.as_slice() {
        [one] if !name.is_empty() => Ok(*one),
        [] => Err(Vec::new()),
        _ if name.is_empty() => Err(Vec::new()),
        many => Err(many
            .iter()
            .flat_map(|&i| specs[i].longs.iter().filter(|l| l.starts_with(name)))
            .cloned()
            .collect()),
    }
}

impl Parsed {
    /// Whether the option `id` was given.
    fn has(&self, specs: &[OptSpec], id: &str) -> bool {
        self.options.iter().any(|(i, _)| specs[*i].id == id)
    }
}

/// The command line to hand to clap: the program, the subcommand, the options (a flag once; an option with a
/// value as separate words, which clap takes as they are since every valued option accepts leading hyphens),
/// then `--` and the positionals.
fn normalized(program: &OsStr, sub: &str, specs: &[OptSpec], parsed: &Parsed) -> Vec<OsString> {
    let mut out = vec![program.to_os_string(), OsString::from(sub)];
    if parsed.help {
        out.push("--help".into());
        return out;
    }
    let mut seen_flags = Vec::new();
    for (index, value) in &parsed.options {
        let spec = &specs[*index];
        if matches!(spec.action, ArgAction::SetTrue | ArgAction::SetFalse) {
            if seen_flags.contains(index) {
                continue;
            }
            seen_flags.push(*index);
        }
        let word = match (spec.longs.first(), spec.shorts.first()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            // clap requires a name for every option.
            (None, None) => continue,
        };
        out.push(word.into());
        if let Some(value) = value {
            out.push(value.clone());
        }
    }
    if !parsed.positionals.is_empty() {
        out.push("--".into());
        out.extend(parsed.positionals.iter().cloned());
    }
    out
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Reading {
    /// Let clap parse this normalized command line (which may ask for help or the version).
    Clap(Vec<OsString>),
    /// Refused, with qemu-img's message.
    Refused(UsageError),
    /// `-o help` without the file names: the options of a format (`-f` of create and amend, `-O` of convert),
    /// which qemu-img lists before it looks for file names.
    OptionHelp {
        /// The subcommand.
        sub: String,
        /// The format named, if any.
        format: Option<String>,
    },
}

/// Reads a whole command line (`args[0]` is the program) as qemu-img would, against `cmd` (clap's definition,
/// built).
pub fn read(cmd: &Command, args: &[OsString]) -> Reading {
    let top = |message: String| {
        Reading::Refused(UsageError {
            prefix: PROGRAM.to_string(),
            message,
            try_help: Some(PROGRAM.to_string()),
            usage_text: None,
        })
    };
    let Some(first) = args.get(1) else {
        return top("Not enough arguments".to_string());
    };
    let word = first.as_bytes();
    if word.len() > 1 && word[0] == b'-' {
        // Options of the tool itself: help and version, which clap prints.
        let specs = option_specs(cmd);
        return match getopt("", &specs, &args[1..2]) {
            Ok(_) => Reading::Clap(args.to_vec()),
            Err(e) => top(e.message),
        };
    }
    let name = first.to_string_lossy();
    let Some(sub) = cmd.find_subcommand(first) else {
        return top(format!("Command not found: {name}"));
    };
    let sub_name = sub.get_name().to_string();
    let words = &args[2..];
    let specs = option_specs(sub);
    let parsed = match getopt(&sub_name, &specs, words) {
        Ok(parsed) => parsed,
        Err(e) if sub_name == "io" => return Reading::Refused(UsageError::io_usage(e.message)),
        Err(e) => return Reading::Refused(e),
    };
    if !parsed.help {
        if let Some(format) = option_help(&sub_name, &specs, &parsed) {
            return Reading::OptionHelp {
                sub: sub_name,
                format,
            };
        }
        if let Err(e) = check_operands(&sub_name, &specs, &parsed) {
            return Reading::Refused(e);
        }
    }
    Reading::Clap(normalized(&args[0], &sub_name, &specs, &parsed))
}

/// For `-o help` (or `?`) given without the file names create, convert or amend needs: the format named
/// (`Some(None)` when none was).
fn option_help(sub: &str, specs: &[OptSpec], parsed: &Parsed) -> Option<Option<String>> {
    let (format_id, needed) = match sub {
        "create" | "amend" => ("format", 1),
        "convert" => ("output_format", 2),
        _ => return None,
    };
    let values = |id: &'static str| {
        parsed
            .options
            .iter()
            .filter(move |(i, _)| specs[*i].id == id)
            .filter_map(|(_, v)| v.as_ref())
    };
    let wants_help = values("options").any(|v| {
        v.to_string_lossy()
            .split(',')
            .any(|item| item == "help" || item == "?")
    });
    if !wants_help || parsed.positionals.len() >= needed {
        return None;
    }
    Some(
        values(format_id)
            .next_back()
            .map(|v| v.to_string_lossy().into_owned()),
    )
}

/// qemu-img's checks of the number of file names, per subcommand, in its order.
fn check_operands(sub: &str, specs: &[OptSpec], parsed: &Parsed) -> Result<(), UsageError> {
    let n = parsed.positionals.len();
    let usage = |message: &str, try_line: bool| Err(UsageError::usage(sub, message, try_line));
    let actions = ["list", "create", "apply", "delete"];
    match sub {
        "snapshot" if actions.iter().filter(|a| parsed.has(specs, a)).count() > 1 => {
            usage("Cannot mix '-l', '-a', '-c', '-d'", true)
        }
        "info" | "map" | "check" | "commit" | "snapshot" | "bench" if n != 1 => {
            usage("Expecting one image file name", true)
        }
        "rebase" if n != 1 => usage("Expecting one image file name", true),
        "rebase" if !parsed.has(specs, "backing") && !parsed.has(specs, "unsafe_mode") => usage(
            "Must specify backing file (-b) or use unsafe mode (-u)",
            true,
        ),
        "amend" if !parsed.has(specs, "options") => usage("Must specify options (-o)", true),
        "amend" if n != 1 => usage("Expecting one image file name", false),
        "compare" if n != 2 => usage("Expecting two image file names", true),
        "convert" if n < 2 => usage("Must specify image file name", false),
        "create" if n == 0 => usage("Expecting image file name", true),
        "create" if n > 2 => {
            let size = parsed.positionals[1].to_string_lossy();
            if blk_core::parse_size(&size).is_err() {
                usage(&format!("Invalid image size specified: '{size}'."), false)
            } else {
                let extra = parsed.positionals[2].to_string_lossy();
                usage(&format!("Unexpected argument: {extra}"), true)
            }
        }
        "resize" if n < 2 => usage("Expecting image file name and size", true),
        "resize" if n > 2 => usage("Extra argument(s) in command line", true),
        "io" if n > 1 => Err(UsageError::io_usage(String::new())),
        "measure" if n > 1 => usage("At most one filename argument is allowed.", false),
        "measure" if n == 0 && !parsed.has(specs, "size") => {
            usage("Either --size N or one filename must be specified.", false)
        }
        "dd" => match parsed
            .positionals
            .iter()
            .find(|p| !p.as_bytes().contains(&b'='))
        {
            Some(bad) => usage(
                &format!("unrecognized operand {}", bad.to_string_lossy()),
                false,
            ),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_line(line: &str) -> Reading {
        let cmd = crate::cmd::command();
        let args: Vec<OsString> = std::iter::once("blk")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect();
        read(&cmd, &args)
    }

    fn words(line: &str) -> Vec<String> {
        match read_line(line) {
            Reading::Clap(v) => v.iter().map(|w| w.to_string_lossy().into_owned()).collect(),
            other => panic!("not parsed: {other:?}"),
        }
    }

    fn refused(line: &str) -> (String, bool) {
        match read_line(line) {
            Reading::Refused(e) => (format!("{}: {}", e.prefix, e.message), e.try_help.is_some()),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn options_anywhere() {
        assert_eq!(
            words("convert -f qcow2 in -O raw out"),
            [
                "blk",
                "convert",
                "--source-format",
                "qcow2",
                "--target-format",
                "raw",
                "--",
                "in",
                "out"
            ]
        );
        assert_eq!(
            words("convert -pfqcow2 in out -O=x"),
            [
                "blk",
                "convert",
                "--progress",
                "--source-format",
                "qcow2",
                "--target-format",
                "=x",
                "--",
                "in",
                "out"
            ]
        );
        assert_eq!(
            words("info --out=json -- -x"),
            ["blk", "info", "--output", "json", "--", "-x"]
        );
        assert_eq!(
            words("create -q -q x -o a=1 1M -o b=2"),
            [
                "blk",
                "create",
                "--quiet",
                "--options",
                "a=1",
                "--options",
                "b=2",
                "--",
                "x",
                "1M"
            ]
        );
    }

    #[test]
    fn getopt_messages() {
        let cases = [
            ("convert -z a b", "blk convert: invalid option -- 'z'", true),
            (
                "convert --bogus=1 a b",
                "blk convert: unrecognized option '--bogus=1'",
                true,
            ),
            (
                "convert a b -O",
                "blk convert: option requires an argument -- 'O'",
                true,
            ),
            (
                "info a --output",
                "blk info: option '--output' requires an argument",
                true,
            ),
            (
                "info --force-share=1 a",
                "blk info: option '--force-share' doesn't allow an argument",
                true,
            ),
            ("info", "blk: Expecting one image file name", true),
            ("info a b", "blk: Expecting one image file name", true),
            ("compare a", "blk: Expecting two image file names", true),
            ("convert a", "blk: Must specify image file name", false),
            (
                "create -f raw y 1M 2M",
                "blk: Unexpected argument: 2M",
                true,
            ),
            (
                "create a b c",
                "blk: Invalid image size specified: 'b'.",
                false,
            ),
            ("resize a", "blk: Expecting image file name and size", true),
            (
                "resize a b c",
                "blk: Extra argument(s) in command line",
                true,
            ),
            ("bogus", "blk: Command not found: bogus", true),
            ("-z", "blk: invalid option -- 'z'", true),
            ("", "blk: Not enough arguments", true),
            ("dd a", "blk: unrecognized operand a", false),
            (
                "snapshot -c a -l x",
                "blk: Cannot mix '-l', '-a', '-c', '-d'",
                true,
            ),
            ("amend -o a=1", "blk: Expecting one image file name", false),
            (
                "info --help=x a",
                "blk info: option '--help' doesn't allow an argument",
                true,
            ),
            ("help", "blk: Command not found: help", true),
            (
                "create -f raw y -o , 1M",
                "blk: Invalid option list: ,",
                false,
            ),
            ("amend -o a=1, x", "blk: Invalid option list: a=1,", false),
            (
                "convert -o a,,, x y",
                "blk: Invalid option list: a,,,",
                false,
            ),
        ];
        for (line, message, try_line) in cases {
            assert_eq!(refused(line), (message.to_string(), try_line), "{line}");
        }
    }

    #[test]
    fn option_help_comes_before_file_names() {
        let help = |line: &str| match read_line(line) {
            Reading::OptionHelp { sub, format } => (sub, format),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            help("create -f qcow2 -o help"),
            ("create".into(), Some("qcow2".into()))
        );
        assert_eq!(help("convert -o ? x"), ("convert".into(), None));
        assert_eq!(help("amend -o a=1,help"), ("amend".into(), None));
        assert!(matches!(read_line("create -o help x"), Reading::Clap(_)));
    }

    #[test]
    fn resize_takes_a_negative_size_right_after_the_file_name() {
        assert_eq!(
            words("resize -q x -- -1G"),
            ["blk", "resize", "--quiet", "--", "x", "-1G"]
        );
        assert_eq!(
            words("resize x -1G -q"),
            ["blk", "resize", "--quiet", "--", "x", "-1G"]
        );
        assert_eq!(
            refused("resize x -q -1G").0,
            "blk resize: invalid option -- '1'"
        );
    }
}
