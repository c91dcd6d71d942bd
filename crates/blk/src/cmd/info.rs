//! `blk info`: qemu-img info, in its human and JSON forms, optionally for the whole backing chain.
//!
//! The JSON has qemu-img's structure: the image's node (from [`ImageInfo`]) with one `file` child describing
//! the host file, keys in qemu's order (see [`crate::output`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use blk_core::{Error, ErrorKind, ImageInfo, Operation, Result};
use clap::Args;

use super::{display_path, open_image, ImageArgs, OpenSpec};
use crate::output::{
    dump_human_map, map_from_info, size_to_str, snapshot_json, snapshot_list, to_json_pretty, Json,
    OutputFormat,
};

/// The most images `--backing-chain` shows: the image and `MAX_CHAIN_DEPTH` backing levels, the factory's rule.
const MAX_CHAIN: usize = blk_factory::MAX_CHAIN_DEPTH as usize + 1;

/// Arguments of `blk info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// `--image-opts`: the image names are qemu option strings.
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name.
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// The image and how to show it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Show every image of the backing chain.
    #[arg(short = 'b', long = "backing-chain")]
    pub backing_chain: bool,
    /// The image.
    pub filename: PathBuf,
}

/// The name qemu gives an image node opened from `filename`: the file name, unless an `--image-opts` string gave
/// a strong runtime option (qcow2's `encrypt.key-secret`, `key_secret`), which qemu keeps in the name as
/// `json:{"encrypt.key-secret": ID, "driver": "qcow2", "file": {"driver": "file", "filename": FILE}}`
/// (`bdrv_refresh_filename`).
fn node_name(filename: &str, format: &str, key_secret: Option<String>) -> String {
    match key_secret {
        Some(id) if format == "qcow2" => {
            let name = Json::Map(vec![
                ("encrypt.key-secret".into(), Json::Str(id)),
                ("driver".into(), Json::Str(format.into())),
                (
                    "file".into(),
                    Json::Map(vec![
                        ("driver".into(), Json::Str("file".into())),
                        ("filename".into(), Json::Str(filename.into())),
                    ]),
                ),
            ]);
            format!("json:{}", crate::output::to_json_compact(&name))
        }
        _ => filename.to_string(),
    }
}

/// The host file under an image: qemu's `file` child node.
#[derive(Debug, Clone, Copy)]
pub struct FileNode {
    /// The file's length in bytes, rounded up to whole 512-byte sectors as QEMU reports it.
    pub length: u64,
    /// Bytes allocated to it on the host.
    pub allocated: u64,
}

impl FileNode {
    /// Describes the host file at `path`.
    pub fn stat(path: &Path) -> Result<FileNode> {
        let ctx = |e: std::io::Error| Error::io(e).with_path(path).with_operation(Operation::Open);
        let meta = std::fs::metadata(path).map_err(ctx)?;
        let length = if meta.is_file() {
            meta.len()
        } else {
            // A block device: its size is where seeking to the end lands.
            File::open(path)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(ctx)?
        };
        Ok(FileNode {
            // QEMU's file driver counts whole sectors: a 1000-byte file is 1024 bytes long to it.
            length: length.div_ceil(512) * 512,
            allocated: meta.blocks() * 512,
        })
    }

    fn json(&self, filename: &str) -> Json {
        Json::Map(vec![
            ("filename".into(), Json::Str(filename.to_string())),
            ("format".into(), Json::Str("file".into())),
            ("dirty-flag".into(), Json::Bool(false)),
            ("actual-size".into(), Json::U64(self.allocated)),
            ("virtual-size".into(), Json::U64(self.length)),
            (
                "format-specific".into(),
                Json::Map(vec![
                    ("type".into(), Json::Str("file".into())),
                    ("data".into(), Json::Map(vec![])),
                ]),
            ),
            ("children".into(), Json::List(vec![])),
        ])
    }
}

/// One image of the chain, as `info` prints it.
#[derive(Debug, Clone)]
pub struct Described {
    /// The image node's name as qemu-img prints it (`image:`, the top-level `filename`): the file name, or
    /// qemu's `json:{...}` name for an image whose `--image-opts` string named a secret.
    pub node_name: String,
    /// The file's name (the argument as given, or the resolved backing file name).
    pub filename: String,
    /// What the format reports.
    pub info: ImageInfo,
    /// The host file.
    pub file: FileNode,
}

impl Described {
    /// Opens `path` read-only without its backing file (as qemu-img info: the backing file need not exist or
    /// have a recorded format) and describes it.
    pub fn load(path: &Path, format: Option<&str>, force_share: bool) -> Result<Described> {
        let spec = OpenSpec {
            skip_backing: true,
            ..OpenSpec::read_only(format, force_share)
        };
        let image = open_image(path, spec)?;
        let info = image.admin.image_info().map_err(|e| e.with_path(path))?;
        let file = FileNode::stat(path)?;
        let filename = display_path(path);
        Ok(Described {
            node_name: node_name(
                &filename,
                info.format,
                super::image_opts::key_secret_id(path),
            ),
            filename,
            info,
            file,
        })
    }

    /// The qemu-img info JSON object.
    pub fn json(&self) -> Json {
        let info = &self.info;
        let mut m: Vec<(String, Json)> = vec![
            ("filename".into(), Json::Str(self.node_name.clone())),
            ("format".into(), Json::Str(info.format.to_string())),
            ("dirty-flag".into(), Json::Bool(info.dirty)),
            ("actual-size".into(), Json::U64(info.actual_size)),
            ("virtual-size".into(), Json::U64(info.virtual_size)),
        ];
        if let Some(cluster_size) = info.cluster_size {
            m.push(("cluster-size".into(), Json::U64(cluster_size)));
        }
        if let Some(backing) = &info.backing_filename {
            m.push(("backing-filename".into(), Json::Str(backing.clone())));
        }
        if let Some(full) = &info.full_backing_filename {
            m.push((
                "full-backing-filename".into(),
                Json::Str(display_path(full)),
            ));
        }
        if let Some(format) = &info.backing_format {
            m.push(("backing-filename-format".into(), Json::Str(format.clone())));
        }
        if !info.snapshots.is_empty() {
            m.push((
                "snapshots".into(),
                Json::List(info.snapshots.iter().map(snapshot_json).collect()),
            ));
        }
        if let Some((kind, data)) = &info.format_specific {
            m.push((
                "format-specific".into(),
                Json::Map(vec![
                    ("type".into(), Json::Str(kind.clone())),
                    ("data".into(), Json::Map(map_from_info(data))),
                ]),
            ));
        }
        if is_encrypted(info) {
            m.push(("encrypted".into(), Json::Bool(true)));
        }
        let child = Json::Map(vec![
            ("name".into(), Json::Str("file".into())),
            ("info".into(), self.file.json(&self.filename)),
        ]);
        m.push(("children".into(), Json::List(vec![child])));
        Json::Map(m)
    }

    /// The qemu-img info human text.
    pub fn human(&self) -> String {
        let info = &self.info;
        let mut out = String::new();
        out.push_str(&format!("image: {}\n", self.node_name));
        out.push_str(&format!("file format: {}\n", info.format));
        out.push_str(&format!(
            "virtual size: {} ({} bytes)\n",
            size_to_str(info.virtual_size),
            info.virtual_size
        ));
        out.push_str(&format!("disk size: {}\n", size_to_str(info.actual_size)));
        if is_encrypted(info) {
            out.push_str("encrypted: yes\n");
        }
        if let Some(cluster_size) = info.cluster_size {
            out.push_str(&format!("cluster_size: {cluster_size}\n"));
        }
        if info.dirty {
            out.push_str("cleanly shut down: no\n");
        }
        if let Some(backing) = &info.backing_filename {
            out.push_str(&format!("backing file: {backing}"));
            match &info.full_backing_filename {
                None => out.push_str(" (cannot determine actual path)"),
                Some(full) if display_path(full) != *backing => {
                    out.push_str(&format!(" (actual path: {})", full.display()))
                }
                Some(_) => {}
            }
            out.push('\n');
            if let Some(format) = &info.backing_format {
                out.push_str(&format!("backing file format: {format}\n"));
            }
        }
        out.push_str(&snapshot_list(&info.snapshots));
        if let Some((_, data)) = &info.format_specific {
            if !data.is_empty() {
                out.push_str("Format specific information:\n");
                dump_human_map(&map_from_info(data), 1, &mut out);
            }
        }
        out.push_str("Child node '/file':\n");
        out.push_str(&format!("    filename: {}\n", self.filename));
        out.push_str("    protocol type: file\n");
        out.push_str(&format!(
            "    file length: {} ({} bytes)\n",
            size_to_str(self.file.length),
            self.file.length
        ));
        out.push_str(&format!(
            "    disk size: {}\n",
            size_to_str(self.file.allocated)
        ));
        out
    }
}

/// Whether the image is encrypted (qemu-img's `encrypted`): its format-specific data describes the encryption
/// (QCOW2's `encrypt`).
fn is_encrypted(info: &ImageInfo) -> bool {
    info.format_specific
        .as_ref()
        .is_some_and(|(_, data)| data.iter().any(|(k, _)| k == "encrypt"))
}

/// Runs `blk info`.
pub fn run(args: InfoArgs) -> Result<u8> {
    let mut images = vec![Described::load(
        &args.filename,
        args.image.format.as_deref(),
        args.image.force_share,
    )?];
    if args.backing_chain {
        let mut seen: HashSet<PathBuf> = HashSet::new();
        seen.insert(canonical(&args.filename));
        while let Some(last) = images.last() {
            let Some(backing) = last.info.full_backing_filename.clone() else {
                break;
            };
            let format = last.info.backing_format.clone();
            if images.len() >= MAX_CHAIN {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the backing chain is longer than {} images below it (blk's cap)",
                        MAX_CHAIN - 1
                    ),
                )
                .with_path(&args.filename));
            }
            if !seen.insert(canonical(&backing)) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "Backing file '{}' creates an infinite loop.",
                        backing.display()
                    ),
                )
                .with_path(&args.filename));
            }
            images.push(Described::load(
                &backing,
                format.as_deref(),
                args.image.force_share,
            )?);
        }
    }
    match args.image.output {
        OutputFormat::Json => {
            let value = if args.backing_chain {
                Json::List(images.iter().map(Described::json).collect())
            } else {
                images[0].json()
            };
            println!("{}", to_json_pretty(&value));
        }
        OutputFormat::Human => {
            let texts: Vec<String> = images.iter().map(Described::human).collect();
            print!("{}", texts.join("\n"));
        }
    }
    Ok(0)
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
