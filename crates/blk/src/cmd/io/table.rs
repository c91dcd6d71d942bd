//! qemu-io 10.0.2's command table: every command's name, short name, usage, one-line and long help, operand
//! counts and needs, and `help`'s output from it.

/// When a command may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// An open image (`no file open, try 'help open'` otherwise).
    File,
    /// An open image that takes writes (`Block node is read-only` otherwise).
    WritableFile,
    /// Nothing (`sleep`, `open`, `abort`, `sigraise`).
    NoFile,
    /// Nothing, and runs in any state (`help`, `quit`).
    Global,
}

/// One command, as qemu-io's `cmdinfo_t`.
#[derive(Debug)]
pub struct Command {
    /// Its name.
    pub name: &'static str,
    /// Its one-letter alias.
    pub altname: Option<&'static str>,
    /// The usage after the name.
    pub args: Option<&'static str>,
    /// `help`'s one-line description.
    pub oneline: &'static str,
    /// `help NAME`'s text after the usage line.
    pub help: Option<&'static str>,
    /// Fewest operands (options included, as qemu-io counts).
    pub argmin: usize,
    /// Most operands; `None` for any number.
    pub argmax: Option<usize>,
    /// When it may run.
    pub needs: Needs,
}

const fn cmd(
    name: &'static str,
    altname: Option<&'static str>,
    args: Option<&'static str>,
    oneline: &'static str,
    help: Option<&'static str>,
    (argmin, argmax): (usize, Option<usize>),
    needs: Needs,
) -> Command {
    Command {
        name,
        altname,
        args,
        oneline,
        help,
        argmin,
        argmax,
        needs,
    }
}

/// Every command qemu-io 10.0.2 lists, sorted by name as it lists them.
pub const COMMANDS: &[Command] = &[
    cmd(
        "abort",
        None,
        None,
        "simulate a program crash using abort(3)",
        None,
        (0, Some(0)),
        Needs::NoFile,
    ),
    cmd(
        "aio_flush",
        None,
        None,
        "completes all outstanding aio requests",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "aio_read",
        None,
        Some("[-Ciqrv] [-P pattern] off len [len..]"),
        "asynchronously reads a number of bytes",
        Some(include_str!("help/aio_read.txt")),
        (2, None),
        Needs::File,
    ),
    cmd(
        "aio_write",
        None,
        Some("[-Cfiqruz] [-P pattern] off len [len..]"),
        "asynchronously writes a number of bytes",
        Some(include_str!("help/aio_write.txt")),
        (2, None),
        Needs::WritableFile,
    ),
    cmd(
        "alloc",
        Some("a"),
        Some("offset [count]"),
        "checks if offset is allocated in the file",
        None,
        (1, Some(2)),
        Needs::File,
    ),
    cmd(
        "break",
        None,
        Some("event tag"),
        "sets a breakpoint on event and tags the stopped request as tag",
        None,
        (2, Some(2)),
        Needs::File,
    ),
    cmd(
        "close",
        Some("c"),
        None,
        "close the current open file",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "discard",
        Some("d"),
        Some("[-Cq] off len"),
        "discards a number of bytes at a specified offset",
        Some(include_str!("help/discard.txt")),
        (2, None),
        Needs::WritableFile,
    ),
    cmd(
        "flush",
        Some("f"),
        None,
        "flush all in-core file state to disk",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "help",
        Some("?"),
        Some("[command]"),
        "help for one or all commands",
        None,
        (0, Some(1)),
        Needs::Global,
    ),
    cmd(
        "info",
        Some("i"),
        None,
        "prints information about the current file",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "length",
        Some("l"),
        None,
        "gets the length of the current file",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "map",
        None,
        Some(""),
        "prints the allocated areas of a file",
        None,
        (0, Some(0)),
        Needs::File,
    ),
    cmd(
        "open",
        Some("o"),
        Some("[-rsCnkU] [-t cache] [-d discard] [-o options] [path]"),
        "open the file specified by path",
        Some(include_str!("help/open.txt")),
        (1, None),
        Needs::NoFile,
    ),
    cmd(
        "quit",
        Some("q"),
        None,
        "exit the program",
        None,
        (0, None),
        Needs::Global,
    ),
    cmd(
        "read",
        Some("r"),
        Some("[-abCqrv] [-P pattern [-s off] [-l len]] off len"),
        "reads a number of bytes at a specified offset",
        Some(include_str!("help/read.txt")),
        (2, None),
        Needs::File,
    ),
    cmd(
        "readv",
        None,
        Some("[-Cqrv] [-P pattern] off len [len..]"),
        "reads a number of bytes at a specified offset",
        Some(include_str!("help/readv.txt")),
        (2, None),
        Needs::File,
    ),
    cmd(
        "remove_break",
        None,
        Some("tag"),
        "remove a breakpoint by tag",
        None,
        (1, Some(1)),
        Needs::File,
    ),
    cmd(
        "reopen",
        None,
        Some("[(-r|-w)] [-c cache] [-o options]"),
        "reopens an image with new options",
        Some(include_str!("help/reopen.txt")),
        (0, None),
        Needs::File,
    ),
    cmd(
        "resume",
        None,
        Some("tag"),
        "resumes the request tagged as tag",
        None,
        (1, Some(1)),
        Needs::File,
    ),
    cmd(
        "sigraise",
        None,
        Some("signal"),
        "raises a signal",
        Some(include_str!("help/sigraise.txt")),
        (1, Some(1)),
        Needs::NoFile,
    ),
    cmd(
        "sleep",
        None,
        None,
        "waits for the given value in milliseconds",
        None,
        (1, Some(1)),
        Needs::NoFile,
    ),
    cmd(
        "truncate",
        Some("t"),
        Some("[-m prealloc_mode] off"),
        "truncates the current file at the given offset",
        None,
        (1, Some(3)),
        Needs::WritableFile,
    ),
    cmd(
        "wait_break",
        None,
        Some("tag"),
        "waits for the suspension of a request",
        None,
        (1, Some(1)),
        Needs::File,
    ),
    cmd(
        "write",
        Some("w"),
        Some("[-bcCfnqruz] [-P pattern | -s source_file] off len"),
        "writes a number of bytes at a specified offset",
        Some(include_str!("help/write.txt")),
        (2, None),
        Needs::WritableFile,
    ),
    cmd(
        "writev",
        None,
        Some("[-Cfqr] [-P pattern] off len [len..]"),
        "writes a number of bytes at a specified offset",
        Some(include_str!("help/writev.txt")),
        (2, None),
        Needs::WritableFile,
    ),
    cmd(
        "zone_append",
        Some("zap"),
        Some("offset len [len..]"),
        "append write a number of bytes at a specified offset",
        None,
        (3, Some(4)),
        Needs::WritableFile,
    ),
    cmd(
        "zone_close",
        Some("zc"),
        Some("offset len"),
        "close a range of zones in zone block device",
        None,
        (2, Some(2)),
        Needs::WritableFile,
    ),
    cmd(
        "zone_finish",
        Some("zf"),
        Some("offset len"),
        "finish a range of zones in zone block device",
        None,
        (2, Some(2)),
        Needs::WritableFile,
    ),
    cmd(
        "zone_open",
        Some("zo"),
        Some("offset len"),
        "explicit open a range of zones in zone block device",
        None,
        (2, Some(2)),
        Needs::WritableFile,
    ),
    cmd(
        "zone_report",
        Some("zrp"),
        Some("offset number"),
        "report zone information",
        None,
        (2, Some(2)),
        Needs::File,
    ),
    cmd(
        "zone_reset",
        Some("zrs"),
        Some("offset len"),
        "reset a zone write pointer in zone block device",
        None,
        (2, Some(2)),
        Needs::WritableFile,
    ),
];

/// The command named `name` or aliased so.
pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.altname == Some(name))
}

/// `NAME ARGS -- ONELINE`, the name as the user typed it.
pub fn oneline(typed: &str, command: &Command) -> String {
    match command.args {
        Some(args) => format!("{typed} {args} -- {}", command.oneline),
        None => format!("{typed} -- {}", command.oneline),
    }
}

/// qemu-io's `qemuio_command_usage`: the usage line, on stdout.
pub fn print_usage(command: &Command) {
    println!("{}", oneline(command.name, command));
}

/// `help`: every command's line, then the hint.
pub fn print_help_all() {
    for command in COMMANDS {
        println!("{}", oneline(command.name, command));
    }
    println!("\nUse 'help commandname' for extended help.");
}

/// `help NAME`: the command's line (as typed) and its long help.
pub fn print_help_one(typed: &str, command: &Command) {
    println!("{}", oneline(typed, command));
    if let Some(help) = command.help {
        print!("{help}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_unique() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(find("r").map(|c| c.name), Some("read"));
        assert_eq!(find("?").map(|c| c.name), Some("help"));
        assert!(find("bogus").is_none());
    }
}
