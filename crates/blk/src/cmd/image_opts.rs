//! `--image-opts`: the image file names are qemu option strings, `driver=FMT,file.filename=PATH[,...]`.
//!
//! Before the subcommand runs, each image name is replaced by the file it names and the format, sharing and
//! cache settings the string gives are carried into the subcommand's own options, so every subcommand opens
//! and names (`image: x.qcow2`) the image as with a plain file name. What blk understands:
//!
//! - `driver` (`raw`, `qcow2`, `vpc`, `vhdx`, or `file` with `filename`; probed when left out),
//!   `file.driver=file`, `file.filename`;
//! - `read-only`, `force-share`, `cache.direct`, `file.locking` (`off` opens without a lock, as `-U`);
//! - QCOW2: `encrypt.key-secret=ID` (the secret must be defined with `--object`);
//! - the format's runtime options (QCOW2: `overlap-check`, `l2-cache-size`, `cache-size`, ...): the names the
//!   format's descriptor lists ([`FormatDescriptor::runtime_options`](blk_core::FormatDescriptor)), passed to
//!   its open ([`runtime_options`]), which checks the values with qemu's messages.
//!
//! Anything else is refused with qemu's message.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blk_core::{Error, ErrorKind, Result};

use super::objects;
use super::option_list::{split_option_list, OptionItem};
use super::Command;

/// The `--image-opts` flag of the subcommands qemu-img takes it on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImageOptsArgs {
    /// The image file names are option strings, `driver=FMT,file.filename=PATH` followed by any of
    /// `,read-only=on|off`, `,force-share=on|off`, `,cache.direct=on|off`, `,encrypt.key-secret=ID` and the
    /// format's runtime options (QCOW2: `,overlap-check=none|constant|cached|all`, `,l2-cache-size=SIZE`, ...).
    #[arg(long = "image-opts")]
    pub image_opts: bool,
}

/// What an option string says about the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// The file.
    pub path: PathBuf,
    /// The format (`driver`); `None` probes.
    pub format: Option<String>,
    /// `read-only`.
    pub read_only: Option<bool>,
    /// `force-share=on` or `file.locking=off`: no lock.
    pub no_lock: bool,
    /// `cache.direct`.
    pub direct: Option<bool>,
    /// `encrypt.key-secret`: the id of the secret (defined, checked) that unlocks an encrypted image.
    pub key_secret: Option<String>,
    /// The format's runtime options, in the order given (names checked when the format is given; a probed
    /// format checks them at open).
    pub runtime_options: Vec<(String, String)>,
}

/// An image name's runtime options: the file, the option string that named it, the options.
type RuntimeEntry = (PathBuf, String, Vec<(String, String)>);

/// The runtime options each resolved image name carries: set by [`resolve`], read by the open helpers
/// ([`with_runtime_options`]) once the option string has become a file name.
static RUNTIME_OPTIONS: Mutex<Vec<RuntimeEntry>> = Mutex::new(Vec::new());

/// The registry, whole even when poisoned (a thread that panicked while holding it pushed or removed whole
/// entries only).
fn registry() -> std::sync::MutexGuard<'static, Vec<RuntimeEntry>> {
    RUNTIME_OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers the runtime options the option string `text` gave the image at `path`, for its open.
fn remember_runtime_options(path: &Path, text: &str, options: Vec<(String, String)>) {
    if options.is_empty() {
        return;
    }
    let mut list = registry();
    list.retain(|(p, _, _)| p != path);
    list.push((path.to_path_buf(), text.to_string(), options));
}

/// The runtime options the `--image-opts` string naming `path` gave (empty when there were none).
pub fn runtime_options(path: &Path) -> Vec<(String, String)> {
    registry()
        .iter()
        .find(|(p, _, _)| p == path)
        .map(|(_, _, options)| options.clone())
        .unwrap_or_default()
}

/// The id of the secret (`encrypt.key-secret`) each resolved image name carries: set by [`resolve`], read by
/// [`with_runtime_options`].
static KEY_SECRETS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// Remembers that the image at `path` is unlocked with the secret `id`.
pub fn remember_key_secret(path: &Path, id: &str) {
    let mut list = KEY_SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(p, _)| p != path);
    list.push((path.to_path_buf(), id.to_string()));
}

/// The id of the secret the option string naming the image at `path` gave (`encrypt.key-secret`), if any.
pub fn key_secret_id(path: &Path) -> Option<String> {
    KEY_SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, id)| id.clone())
}

/// The secret (its bytes) that unlocks the image at `path`, when its option string named one.
pub fn key_secret(path: &Path) -> Result<Option<blk_core::Secret>> {
    match key_secret_id(path) {
        Some(id) => Ok(Some(objects::secret(&id)?.value())),
        None => Ok(None),
    }
}

/// `params` with the runtime options the `--image-opts` string naming its path gave
/// ([`DiskFileParams::runtime_option`](blk_factory::DiskFileParams::runtime_option)) and the secret it named
/// (`encrypt.key-secret`).
pub fn with_runtime_options(params: blk_factory::DiskFileParams) -> blk_factory::DiskFileParams {
    let secret = key_secret(params.path()).ok().flatten();
    let params = match secret {
        Some(secret) => params.key_secret(Some(secret)),
        None => params,
    };
    runtime_options(params.path())
        .into_iter()
        .fold(params, |params, (key, value)| {
            params.runtime_option(key, value)
        })
}

/// An open error of the image at `path` as qemu-img words it when the image was named by an option string with
/// runtime options and the error is about the input (a runtime option's value): `Could not open 'TEXT': ...`.
/// Other errors are returned as they are.
pub fn open_error(path: &Path, err: Error) -> Error {
    if err.kind() != ErrorKind::InvalidInput {
        return err;
    }
    let list = registry();
    match list.iter().find(|(p, _, _)| p == path) {
        Some((_, text, _)) => Error::new(
            ErrorKind::InvalidInput,
            format!("Could not open '{text}': {}", err.message()),
        ),
        None => err,
    }
}

fn parse_bool(key: &str, value: &str) -> std::result::Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// Parses an `--image-opts` string, with qemu's messages (`Could not open 'TEXT': ...`).
pub fn parse(text: &str) -> Result<ImageSpec> {
    parse_inner(text).map_err(|why| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("Could not open '{text}': {why}"),
        )
    })
}

fn parse_inner(text: &str) -> std::result::Result<ImageSpec, String> {
    if text.is_empty() {
        return Err("Must specify either driver or file".to_string());
    }
    let items = split_option_list(text, Some("file"))
        .map_err(|item| format!("Invalid parameter '{item}'"))?;
    let mut driver: Option<String> = None;
    let mut protocol = "file".to_string();
    let mut filename = None;
    let mut rest: Vec<OptionItem> = Vec::new();
    for item in items {
        match item.key.as_str() {
            "driver" => driver = Some(item.value),
            "file.driver" => protocol = item.value,
            "file.filename" => filename = Some(item.value),
            "file" => {
                return Err(format!(
                    "Cannot find device='{0}' nor node-name='{0}'",
                    item.value
                ))
            }
            _ => rest.push(item),
        }
    }
    let mut spec = ImageSpec::default();
    let driver = driver.unwrap_or_default();
    // `driver=file,filename=X`: the file itself, read as raw.
    let format_name = match driver.as_str() {
        "" => None,
        "file" => {
            if let Some(pos) = rest.iter().position(|i| i.key == "filename") {
                filename = Some(rest.remove(pos).value);
            }
            Some("raw")
        }
        "raw" | "qcow2" | "vpc" | "vhdx" => Some(driver.as_str()),
        other => return Err(format!("Unknown driver '{other}'")),
    };
    spec.format = format_name.map(str::to_string);
    if protocol != "file" {
        return Err(format!(
            "Block protocol '{protocol}' is not supported (blk opens local files only)"
        ));
    }
    for OptionItem { key, value } in rest {
        match key.as_str() {
            "read-only" => spec.read_only = Some(parse_bool(&key, &value)?),
            "force-share" => spec.no_lock |= parse_bool(&key, &value)?,
            "cache.direct" => spec.direct = Some(parse_bool(&key, &value)?),
            "file.locking" => match value.as_str() {
                "on" | "auto" => {}
                "off" => spec.no_lock = true,
                _ => {
                    return Err(format!(
                        "Parameter 'locking' does not accept value '{value}'"
                    ))
                }
            },
            "encrypt.key-secret" if format_name == Some("qcow2") => {
                objects::secret(&value).map_err(|e| e.message().to_string())?;
                spec.key_secret = Some(value);
            }
            k if k.starts_with("file.") => {
                return Err(format!(
                    "Block protocol 'file' doesn't support the option '{}'",
                    &k["file.".len()..]
                ))
            }
            _ => spec.runtime_options.push((key, value)),
        }
    }
    // The format's runtime options, by the list its descriptor registers (a probed format checks them at
    // open). A later value for the same key wins, as in qemu.
    let mut runtime: Vec<(String, String)> = Vec::new();
    for (key, value) in std::mem::take(&mut spec.runtime_options) {
        runtime.retain(|(k, _)| *k != key);
        runtime.push((key, value));
    }
    if let Some(format) = format_name.and_then(blk_factory::ImageFormat::by_name) {
        format
            .descriptor()
            .check_runtime_options(&runtime)
            .map_err(|e| e.message().to_string())?;
    }
    spec.runtime_options = runtime;
    let Some(filename) = filename else {
        return Err("A block device must be specified for \"file\"".to_string());
    };
    spec.path = PathBuf::from(filename);
    Ok(spec)
}

/// The settings of one subcommand that an option string may change.
struct Target<'a> {
    path: &'a mut PathBuf,
    format: &'a mut Option<String>,
    /// `-U`, where the subcommand has it.
    force_share: Option<&'a mut bool>,
    /// `-t`/`-T`, where the subcommand has it.
    cache: Option<&'a mut Option<String>>,
    /// Whether the subcommand writes to the image.
    writes: bool,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Replaces the image name of `target` with what its option string says.
fn apply(target: Target<'_>) -> Result<()> {
    if target.format.is_some() {
        return Err(invalid("--image-opts and --format are mutually exclusive"));
    }
    let text = target.path.to_string_lossy().into_owned();
    let spec = parse(&text)?;
    let could_not = |why: &str| invalid(format!("Could not open '{text}': {why}"));
    if spec.read_only == Some(true) && target.writes {
        return Err(could_not("Block node is read-only"));
    }
    if spec.no_lock {
        match target.force_share {
            Some(force_share) if !target.writes => *force_share = true,
            _ => {
                return Err(could_not(
                    "force-share=on can only be used with read-only images",
                ))
            }
        }
    }
    if let Some(direct) = spec.direct {
        match target.cache {
            Some(cache) => *cache = Some(if direct { "none" } else { "writeback" }.to_string()),
            None if direct => {
                return Err(could_not(
                    "cache.direct=on is not supported by this subcommand",
                ))
            }
            None => {}
        }
    }
    if let Some(id) = &spec.key_secret {
        remember_key_secret(&spec.path, id);
    }
    remember_runtime_options(&spec.path, &text, spec.runtime_options);
    *target.path = spec.path;
    *target.format = spec.format;
    Ok(())
}

/// The settings an option string may change: the image name, format, `-U`, cache mode; `writes` says whether the
/// subcommand writes to the image.
fn target<'a>(
    path: &'a mut PathBuf,
    format: &'a mut Option<String>,
    force_share: Option<&'a mut bool>,
    cache: Option<&'a mut Option<String>>,
    writes: bool,
) -> Target<'a> {
    Target {
        path,
        format,
        force_share,
        cache,
        writes,
    }
}

/// Applies `--image-opts` to the subcommand's image names, when it was given.
pub fn resolve(command: &mut Command) -> Result<()> {
    match command {
        Command::Info(a) if a.image_opts.image_opts => apply(target(
            &mut a.filename,
            &mut a.image.format,
            Some(&mut a.image.force_share),
            None,
            false,
        )),
        Command::Map(a) if a.image_opts.image_opts => apply(target(
            &mut a.filename,
            &mut a.image.format,
            Some(&mut a.image.force_share),
            None,
            false,
        )),
        Command::Check(a) if a.image_opts.image_opts => {
            let writes = a.repair.is_some();
            apply(target(
                &mut a.filename,
                &mut a.image.format,
                Some(&mut a.image.force_share),
                Some(&mut a.cache),
                writes,
            ))
        }
        Command::Compare(a) if a.image_opts.image_opts => {
            apply(target(
                &mut a.file_a,
                &mut a.format_a,
                Some(&mut a.force_share),
                Some(&mut a.cache),
                false,
            ))?;
            apply(target(
                &mut a.file_b,
                &mut a.format_b,
                Some(&mut a.force_share),
                Some(&mut a.cache),
                false,
            ))
        }
        Command::Convert(a) if a.image_opts.image_opts => {
            if a.format.is_some() {
                return Err(invalid("--image-opts and --format are mutually exclusive"));
            }
            let sources = a.files.len().saturating_sub(1);
            let mut format = None;
            for (i, path) in a.files[..sources].iter_mut().enumerate() {
                let mut this = None;
                apply(target(
                    path,
                    &mut this,
                    Some(&mut a.force_share),
                    Some(&mut a.source_cache),
                    false,
                ))?;
                if i > 0 && this != format {
                    return Err(invalid(
                        "blk converts several sources only when they have the same driver",
                    ));
                }
                format = this;
            }
            a.format = format;
            Ok(())
        }
        Command::Commit(a) if a.image_opts.image_opts => apply(target(
            &mut a.filename,
            &mut a.format,
            None,
            Some(&mut a.cache),
            true,
        )),
        Command::Rebase(a) if a.image_opts.image_opts => apply(target(
            &mut a.filename,
            &mut a.format,
            None,
            Some(&mut a.cache),
            true,
        )),
        Command::Resize(a) if a.image_opts.image_opts => {
            apply(target(&mut a.filename, &mut a.format, None, None, true))
        }
        Command::Snapshot(a) if a.image_opts.image_opts => {
            let writes = a.create.is_some() || a.apply.is_some() || a.delete.is_some();
            apply(target(
                &mut a.filename,
                &mut a.format,
                Some(&mut a.force_share),
                None,
                writes,
            ))
        }
        Command::Amend(a) if a.image_opts.image_opts => {
            apply(target(&mut a.filename, &mut a.format, None, None, true))
        }
        Command::Measure(a) if a.image_opts.image_opts => match a.filenames.first_mut() {
            Some(path) => apply(target(
                path,
                &mut a.format,
                Some(&mut a.force_share),
                None,
                false,
            )),
            None => Ok(()),
        },
        Command::Bench(a) if a.image_opts.image_opts => {
            let writes = a.write;
            match a.files.first_mut() {
                Some(path) => apply(target(
                    path,
                    &mut a.format,
                    Some(&mut a.force_share),
                    Some(&mut a.cache),
                    writes,
                )),
                None => Ok(()),
            }
        }
        Command::Io(a) if a.image_opts.image_opts => {
            let Some(path) = a.filename.as_mut() else {
                return Ok(());
            };
            if a.format.is_some() {
                return Err(invalid("--image-opts and -f are mutually exclusive"));
            }
            let text = path.to_string_lossy().into_owned();
            let spec = parse(&text)?;
            // qemu-io opens the image as the string says: read-only, shared, direct.
            a.read_only |= spec.read_only == Some(true);
            a.force_share |= spec.no_lock;
            if let Some(direct) = spec.direct {
                a.cache = Some(if direct { "none" } else { "writeback" }.to_string());
            }
            if let Some(id) = &spec.key_secret {
                remember_key_secret(&spec.path, id);
            }
            remember_runtime_options(&spec.path, &text, spec.runtime_options);
            *path = spec.path;
            a.format = spec.format;
            // The operand is a file name now.
            a.image_opts.image_opts = false;
            Ok(())
        }
        Command::VhostUserBlk(a) if a.image_opts.image_opts => {
            let writes = !a.read_only;
            let mut cache = Some(a.cache.clone());
            apply(target(
                &mut a.filename,
                &mut a.format,
                None,
                Some(&mut cache),
                writes,
            ))?;
            if let Some(cache) = cache {
                a.cache = cache;
            }
            Ok(())
        }
        Command::Bitmap(a) if a.image_opts => {
            if a.format.is_some() {
                return Err(invalid("--image-opts and --format are mutually exclusive"));
            }
            // The image only; `-b` names a plain file, as in qemu-img.
            let Some(operand) = a.operands.first_mut() else {
                return Ok(());
            };
            let mut path = PathBuf::from(operand.as_str());
            apply(target(&mut path, &mut a.format, None, None, true))?;
            *operand = path.to_string_lossy().into_owned();
            Ok(())
        }
        Command::Dd(a) if a.image_opts.image_opts => {
            for operand in a.operands.iter_mut() {
                if let Some(text) = operand.strip_prefix("if=") {
                    let mut path = PathBuf::from(text);
                    apply(target(
                        &mut path,
                        &mut a.format,
                        Some(&mut a.force_share),
                        None,
                        false,
                    ))?;
                    *operand = format!("if={}", path.to_string_lossy());
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The `--object` definitions of the subcommand (those that take the option).
pub fn object_definitions(command: &Command) -> &[String] {
    match command {
        Command::Info(a) => &a.objects.objects,
        Command::Map(a) => &a.objects.objects,
        Command::Check(a) => &a.objects.objects,
        Command::Compare(a) => &a.objects.objects,
        Command::Convert(a) => &a.objects.objects,
        Command::Create(a) => &a.objects.objects,
        Command::Commit(a) => &a.objects.objects,
        Command::Rebase(a) => &a.objects.objects,
        Command::Resize(a) => &a.objects.objects,
        Command::Snapshot(a) => &a.objects.objects,
        Command::Amend(a) => &a.objects.objects,
        Command::Measure(a) => &a.objects.objects,
        Command::Io(a) => &a.objects.objects,
        Command::Bitmap(a) => &a.objects,
        Command::VhostUserBlk(a) => &a.objects.objects,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn option_strings_parse_as_qemu_parses_them() {
        let spec =
            parse("driver=qcow2,file.filename=a,,b.qcow2,file.driver=file,force-share=on").unwrap();
        assert_eq!(spec.path, PathBuf::from("a,b.qcow2"));
        assert_eq!(spec.format.as_deref(), Some("qcow2"));
        assert!(spec.no_lock);
        assert_eq!(parse("file.filename=x").unwrap().format, None);
        assert_eq!(
            parse("driver=qcow2,file.filename=x,driver=raw")
                .unwrap()
                .format
                .as_deref(),
            Some("raw")
        );
        assert_eq!(
            parse("driver=file,filename=x").unwrap(),
            ImageSpec {
                path: "x".into(),
                format: Some("raw".into()),
                ..ImageSpec::default()
            }
        );
        assert_eq!(
            parse("driver=qcow2,file.filename=x,l2-cache-size=1M,overlap-check=all,overlap-check=none")
                .unwrap()
                .runtime_options,
            [
                ("l2-cache-size".to_string(), "1M".to_string()),
                ("overlap-check".to_string(), "none".to_string())
            ]
        );
        // A probed format checks the names at open.
        assert_eq!(
            parse("file.filename=x,bogus=1")
                .unwrap()
                .runtime_options
                .len(),
            1
        );
        for (text, why) in [
            ("", "Must specify either driver or file"),
            (
                "x.qcow2",
                "Cannot find device='x.qcow2' nor node-name='x.qcow2'",
            ),
            (
                "driver=qcow2",
                "A block device must be specified for \"file\"",
            ),
            ("driver=bogus,file.filename=x", "Unknown driver 'bogus'"),
            (
                "driver=qcow2,file.filename=x,bogus=1",
                "Block format 'qcow2' does not support the option 'bogus'",
            ),
            (
                "driver=raw,file.filename=x,l2-cache-size=1M",
                "Block format 'raw' does not support the option 'l2-cache-size'",
            ),
            (
                "driver=qcow2,file.filename=x,file.bogus=1",
                "Block protocol 'file' doesn't support the option 'bogus'",
            ),
            (
                "driver=raw,file.filename=x,read-only=maybe",
                "Parameter 'read-only' expects 'on' or 'off'",
            ),
            (
                "driver=qcow2,file.filename=x,encrypt.key-secret=nope",
                "No secret with id 'nope'",
            ),
        ] {
            assert_eq!(refused(text), format!("Could not open '{text}': {why}"));
        }
    }
}
