//! `blk bitmap`: qemu-img bitmap. Adds, removes, clears, enables, disables and merges the persistent dirty
//! bitmaps of an image; several actions in one command run in the order given, each stored before the next
//! (an action that fails leaves the earlier ones done, as qemu-img).
//!
//! The actions are read from clap's matches by hand (not derived) because their order across different
//! options matters: `--add --disable` adds then disables. One flag given twice (`--add ... --add`) counts
//! once (clap keeps one position per flag), where qemu-img would run it twice.

use std::path::PathBuf;

use blk_core::{BitmapAction, Error, ErrorKind, Result};
use clap::{Arg, ArgAction, ArgMatches};

use super::{invalid, open_image, OpenSpec};

/// One action of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `--add`.
    Add,
    /// `--remove`.
    Remove,
    /// `--clear`.
    Clear,
    /// `--enable`.
    Enable,
    /// `--disable`.
    Disable,
    /// `--merge SOURCE`.
    Merge(String),
}

impl Action {
    /// The word qemu-img's error names the action by.
    fn verb(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Clear => "clear",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Merge(_) => "merge",
        }
    }
}

/// Arguments of `blk bitmap`.
#[derive(Debug, Clone, Default)]
pub struct BitmapArgs {
    /// The actions, in the order given.
    pub actions: Vec<Action>,
    /// `-g`: the granularity of the bitmaps `--add` creates.
    pub granularity: Option<String>,
    /// `-b`: the image `--merge` reads its source bitmap from.
    pub source_file: Option<PathBuf>,
    /// `-F`: that image's format.
    pub source_format: Option<String>,
    /// `-f`: the image's format (probed when omitted).
    pub format: Option<String>,
    /// `--image-opts`: the image is a qemu option string (`driver=qcow2,file.filename=...`).
    pub image_opts: bool,
    /// `--object`: secrets the image may name (`encrypt.key-secret`).
    pub objects: Vec<String>,
    /// The file names and bitmap names given: the image and the bitmap when there are two.
    pub operands: Vec<String>,
}

/// The flags that are actions, with their help.
const FLAGS: [(&str, &str); 5] = [
    (
        "add",
        "Add the bitmap (persistent, enabled unless --disable follows)",
    ),
    ("remove", "Remove the bitmap"),
    ("clear", "Clear every bit of the bitmap"),
    ("enable", "Make guest writes set the bitmap's bits"),
    (
        "disable",
        "Stop guest writes from setting the bitmap's bits",
    ),
];

impl clap::Args for BitmapArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd;
        for (id, help) in FLAGS {
            cmd = cmd.arg(Arg::new(id).long(id).action(ArgAction::Count).help(help));
        }
        cmd.arg(
            Arg::new("merge")
                .long("merge")
                .value_name("SOURCE")
                .action(ArgAction::Append)
                .help("Set in the bitmap every granule dirty in bitmap SOURCE"),
        )
        .arg(
            Arg::new("granularity")
                .short('g')
                .value_name("GRANULARITY")
                .help("Granularity of the bitmaps --add creates (default: the cluster size, at least 4 KiB)"),
        )
        .arg(
            Arg::new("source_file")
                .short('b')
                .value_name("SOURCE_FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Read --merge's source bitmap from this image"),
        )
        .arg(
            Arg::new("source_format")
                .short('F')
                .value_name("SOURCE_FMT")
                .help("Format of the -b image"),
        )
        .arg(
            Arg::new("format")
                .short('f')
                .long("format")
                .value_name("FMT")
                .help("Image format (probed when omitted)"),
        )
        .arg(
            Arg::new("image_opts")
                .long("image-opts")
                .action(ArgAction::SetTrue)
                .help("The image is an option string, driver=FMT,file.filename=PATH[,...]"),
        )
        .arg(
            Arg::new("object")
                .long("object")
                .value_name("OBJECTDEF")
                .action(ArgAction::Append)
                .help("Define a secret: secret,id=ID,data=STRING or secret,id=ID,file=PATH"),
        )
        .arg(
            Arg::new("operands")
                .value_name("FILENAME BITMAP")
                .num_args(0..)
                .action(ArgAction::Append)
                .help("The image and the bitmap"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for BitmapArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut ordered: Vec<(usize, Action)> = Vec::new();
        for (id, _) in FLAGS {
            let action = match id {
                "add" => Action::Add,
                "remove" => Action::Remove,
                "clear" => Action::Clear,
                "enable" => Action::Enable,
                _ => Action::Disable,
            };
            // A flag not given still has its default count (0) at some index.
            if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            if let Some(indices) = matches.indices_of(id) {
                ordered.extend(indices.map(|i| (i, action.clone())));
            }
        }
        if let (Some(indices), Some(values)) = (
            matches.indices_of("merge"),
            matches.get_many::<String>("merge"),
        ) {
            ordered.extend(
                indices
                    .zip(values)
                    .map(|(i, v)| (i, Action::Merge(v.clone()))),
            );
        }
        ordered.sort_by_key(|(i, _)| *i);
        let text = |id: &str| matches.get_one::<String>(id).cloned();
        let path = |id: &str| matches.get_one::<PathBuf>(id).cloned();
        Ok(BitmapArgs {
            actions: ordered.into_iter().map(|(_, a)| a).collect(),
            granularity: text("granularity"),
            source_file: path("source_file"),
            source_format: text("source_format"),
            format: text("format"),
            image_opts: matches.get_flag("image_opts"),
            objects: matches
                .get_many::<String>("object")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            operands: matches
                .get_many::<String>("operands")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
        })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// `-g`: a size as qemu-img's `cvtnum` reads it; 0 means the default, as in qemu-img.
fn parse_granularity(text: &str) -> Result<Option<u64>> {
    let value = blk_core::parse_size(text).map_err(|e| {
        if e.message().contains("out of range") || text.trim_start().starts_with('-') {
            invalid(format!(
                "Invalid granularity specified. Must be between 0 and {}.",
                i64::MAX
            ))
        } else {
            invalid(format!("Invalid granularity specified: '{text}'."))
        }
    })?;
    if value > i64::MAX as u64 {
        return Err(invalid(format!(
            "Invalid granularity specified. Must be between 0 and {}.",
            i64::MAX
        )));
    }
    Ok((value != 0).then_some(value))
}

/// Runs `blk bitmap`.
pub fn run(args: BitmapArgs) -> Result<u8> {
    // qemu-img's checks, in its order.
    if args.actions.is_empty() {
        return Err(invalid(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    let granularity = match &args.granularity {
        Some(text) => parse_granularity(text)?,
        None => None,
    };
    if granularity.is_some() && !args.actions.contains(&Action::Add) {
        return Err(invalid("granularity only supported with --add"));
    }
    if args.source_format.is_some() && args.source_file.is_none() {
        return Err(invalid("-F only supported with -b"));
    }
    let merges = args.actions.iter().any(|a| matches!(a, Action::Merge(_)));
    if args.source_file.is_some() && !merges {
        return Err(invalid(
            "Merge bitmap source file only supported with --merge",
        ));
    }
    let [path, bitmap] = args.operands.as_slice() else {
        return Err(invalid("Expecting filename and bitmap name"));
    };
    let path = &PathBuf::from(path);
    let image = open_image(
        path,
        OpenSpec {
            read_only: false,
            ..OpenSpec::read_only(args.format.as_deref(), false)
        },
    )?;
    let source = match &args.source_file {
        Some(file) => Some(open_image(
            file,
            OpenSpec {
                skip_backing: true,
                ..OpenSpec::read_only(args.source_format.as_deref(), false)
            },
        )?),
        None => None,
    };
    for action in &args.actions {
        let failed = |e: Error| {
            Error::new(
                e.kind(),
                format!(
                    "Operation {} on bitmap {bitmap} failed: {}",
                    action.verb(),
                    e.message()
                ),
            )
        };
        let bitmaps = image.admin.dirty_bitmaps().ok_or_else(|| {
            failed(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "Can't store persistent bitmaps to {}: Operation not supported",
                    super::display_path(path)
                ),
            ))
        })?;
        let name = bitmap.clone();
        let request = match action {
            Action::Add => BitmapAction::Add {
                name,
                granularity,
                enabled: true,
            },
            Action::Remove => BitmapAction::Remove { name },
            Action::Clear => BitmapAction::Clear { name },
            Action::Enable => BitmapAction::Enable { name },
            Action::Disable => BitmapAction::Disable { name },
            Action::Merge(from) => match &source {
                None => BitmapAction::Merge {
                    source: from.clone(),
                    target: name,
                },
                Some(source) => {
                    // The target is looked up first, as qemu-img's merge does.
                    if !bitmaps
                        .bitmaps()
                        .map_err(failed)?
                        .iter()
                        .any(|b| b.name == name)
                    {
                        return Err(failed(Error::new(
                            ErrorKind::NotFound,
                            format!("Dirty bitmap '{name}' not found"),
                        )));
                    }
                    let extents = source
                        .admin
                        .dirty_bitmaps()
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::NotFound,
                                format!("Dirty bitmap '{from}' not found"),
                            )
                        })
                        .and_then(|b| b.dirty_extents(from))
                        .map_err(failed)?;
                    BitmapAction::MarkDirty { name, extents }
                }
            },
        };
        bitmaps.apply(&[request]).map_err(failed)?;
    }
    Ok(0)
}
