//! `blk map`: qemu-img map. Walks `DiskFile::map`, merges adjacent runs of equal status as qemu-img does and
//! prints qemu-img's JSON lines or its human table (data runs only, with the file holding them).

use std::io::Write;
use std::path::{Path, PathBuf};

use blk_core::{Error, ErrorKind, Extent, ExtentKind, Result};
use clap::Args;

use super::{display_path, map_extent, open_image, parse_size_arg, ImageArgs, OpenSpec};
use crate::output::{hex_alt, OutputFormat};

/// Arguments of `blk map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// The image and how to show it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Where to start (bytes, k/M/G suffixes allowed).
    #[arg(short = 's', long = "start-offset", value_name = "OFFSET")]
    pub start_offset: Option<String>,
    /// How many bytes to map at most.
    #[arg(short = 'l', long = "max-length", value_name = "LENGTH")]
    pub max_length: Option<String>,
    /// The image.
    pub filename: PathBuf,
}

/// One line of the map: qemu-img's `MapEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Backing layers down (0: the image itself).
    pub depth: u32,
    /// Allocated in some layer.
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Host offset, when the run maps to one host range.
    pub offset: Option<u64>,
    /// Index of the file holding the run (its depth), when it has a host offset.
    pub file: Option<u32>,
}

impl MapEntry {
    /// An empty entry at `start`: what qemu-img prints when there is nothing to map.
    fn empty(start: u64) -> MapEntry {
        MapEntry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        }
    }

    /// The entry for one extent.
    pub fn from_extent(extent: &Extent) -> MapEntry {
        MapEntry {
            start: extent.offset,
            length: extent.length,
            depth: extent.depth,
            present: extent.kind != ExtentKind::Unallocated,
            zero: extent.reads_as_zero(),
            data: extent.is_allocated_data(),
            compressed: extent.compressed,
            offset: extent.host_offset,
            file: extent.host_offset.map(|_| extent.depth),
        }
    }

    /// qemu-img's `entry_mergeable`: whether `next` continues `self` with the same status.
    fn mergeable(&self, next: &MapEntry) -> bool {
        if self.length == 0
            || self.zero != next.zero
            || self.data != next.data
            || self.compressed != next.compressed
            || self.depth != next.depth
            || self.present != next.present
            || self.file != next.file
            || self.offset.is_some() != next.offset.is_some()
        {
            return false;
        }
        match self.offset {
            Some(offset) => next.offset == offset.checked_add(self.length),
            None => true,
        }
    }

    /// The JSON line, without separator.
    pub fn json(&self) -> String {
        let mut line = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            self.start, self.length, self.depth, self.present, self.zero, self.data, self.compressed
        );
        if let Some(offset) = self.offset {
            line.push_str(&format!(", \"offset\": {offset}"));
        }
        line.push('}');
        line
    }
}

/// The names of the files of a backing chain, by depth, found lazily (only the human output needs them).
struct ChainNames {
    names: Vec<String>,
    next: Option<(PathBuf, Option<String>)>,
    force_share: bool,
}

impl ChainNames {
    fn new(
        top: &Path,
        top_info_backing: Option<(PathBuf, Option<String>)>,
        force_share: bool,
    ) -> ChainNames {
        ChainNames {
            names: vec![display_path(top)],
            next: top_info_backing,
            force_share,
        }
    }

    fn name(&mut self, depth: u32) -> Result<String> {
        while self.names.len() <= depth as usize {
            let Some((path, format)) = self.next.take() else {
                return Ok(String::new());
            };
            let image = open_image(
                &path,
                OpenSpec::read_only(format.as_deref(), self.force_share),
            )?;
            let info = image.admin.image_info().map_err(|e| e.with_path(&path))?;
            self.next = info
                .full_backing_filename
                .map(|p| (p, info.backing_format.clone()));
            self.names.push(display_path(&path));
        }
        Ok(self.names[depth as usize].clone())
    }
}

/// Writes one entry: qemu-img's `dump_map_entry`, including its coalescing of `next` in the human format.
fn dump(
    out: &mut impl Write,
    format: OutputFormat,
    entry: &MapEntry,
    next: Option<&mut MapEntry>,
    names: &mut ChainNames,
) -> Result<()> {
    match format {
        OutputFormat::Human => {
            if entry.data && entry.offset.is_none() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "File contains external, encrypted or compressed clusters.",
                ));
            }
            if entry.data && !entry.zero {
                let name = match entry.file {
                    Some(depth) => names.name(depth)?,
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{:<16}{:<16}{:<16}{}",
                    hex_alt(entry.start),
                    hex_alt(entry.length),
                    hex_alt(entry.offset.unwrap_or(0)),
                    name
                )?;
            }
            if let Some(next) = next {
                if (!next.data || next.zero) && (!entry.data || entry.zero) {
                    next.data = false;
                    next.zero = true;
                }
            }
        }
        OutputFormat::Json => {
            write!(out, "{}", entry.json())?;
            if next.is_some() {
                writeln!(out, ",")?;
            }
        }
    }
    Ok(())
}

/// Runs `blk map`.
pub fn run(args: MapArgs) -> Result<u8> {
    let path = &args.filename;
    let start = args
        .start_offset
        .as_deref()
        .map(|s| parse_size_arg("start offset", s))
        .transpose()?
        .unwrap_or(0);
    let max_length = args
        .max_length
        .as_deref()
        .map(|s| parse_size_arg("max length", s))
        .transpose()?;
    let image = open_image(
        path,
        OpenSpec::read_only(args.image.format.as_deref(), args.image.force_share),
    )?;
    let disk = &*image.disk;
    let size = disk.logical_size();
    let end = match max_length {
        Some(max) => start.saturating_add(max).min(size),
        None => size,
    };
    let mut names = ChainNames::new(path, None, args.image.force_share);
    if args.image.output == OutputFormat::Human {
        let info = image.admin.image_info().map_err(|e| e.with_path(path))?;
        names = ChainNames::new(
            path,
            info.full_backing_filename.map(|p| (p, info.backing_format)),
            args.image.force_share,
        );
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.image.output {
        OutputFormat::Human => writeln!(
            out,
            "{:<16}{:<16}{:<16}File",
            "Offset", "Length", "Mapped to"
        )?,
        OutputFormat::Json => write!(out, "[")?,
    }
    let mut curr = MapEntry::empty(start);
    while curr.start + curr.length < end {
        let offset = curr.start + curr.length;
        let extent = map_extent(disk, path, offset, end - offset)?;
        let mut next = MapEntry::from_extent(&extent);
        if curr.mergeable(&next) {
            curr.length += next.length;
            continue;
        }
        if curr.length > 0 {
            dump(
                &mut out,
                args.image.output,
                &curr,
                Some(&mut next),
                &mut names,
            )?;
        }
        curr = next;
    }
    dump(&mut out, args.image.output, &curr, None, &mut names)?;
    if args.image.output == OutputFormat::Json {
        writeln!(out, "]")?;
    }
    out.flush()?;
    Ok(0)
}
