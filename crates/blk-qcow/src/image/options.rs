//! Open and create options: [`Qcow2OpenOptions`], [`Qcow2CreateOptions`] (qemu-img's `-o` keys) and
//! [`CREATE_OPTIONS`].

use std::sync::Arc;

use blk_core::{
    parse_bool_param, parse_size_param, CreateOptionInfo, Error, ErrorKind, HostOpenOptions,
    ImageOpener, Operation, Result, SnapshotSelector,
};

use crate::metadata::overlap::{OverlapCheck, OverlapStructure};
use crate::FORMAT_NAME;

/// The default L2 cache size: QEMU's maximum default (32 MiB, 256 GiB of guest space at 64 KiB clusters).
pub const DEFAULT_L2_CACHE_SIZE: u64 = 32 << 20;

/// How to open a QCOW2 image.
#[derive(Debug, Clone)]
pub struct Qcow2OpenOptions {
    /// How to open the image file.
    pub host: HostOpenOptions,
    /// Opens the backing file (the gate for files named inside the image).
    pub opener: Arc<dyn ImageOpener>,
    /// The backing file's format, overriding the one recorded in the image (qemu's `backing.driver`); `None`
    /// uses the recorded one.
    pub backing_format: Option<String>,
    /// Bytes of L2 tables to cache (rounded down to whole tables, at least 2).
    pub l2_cache_size: u64,
    /// qemu's `BDRV_O_CHECK`: skip the dirty-bit repair and allow a writable open of a corrupt image (for
    /// `check -r`).
    pub check_mode: bool,
    /// This image's depth in a backing chain (0: the image the caller opens; an opener opening a backing file
    /// passes [`NamedImage::depth`](blk_core::NamedImage::depth)). The backing file is requested at
    /// `depth + 1`, so the opener can cap chains.
    pub depth: u32,
    /// Open this internal snapshot instead of the current disk (read-only opens only; qemu-img's `-l`).
    pub snapshot: Option<SnapshotSelector>,
    /// Which metadata every write is checked against (QEMU's `overlap-check` runtime option; default
    /// [`OverlapCheck::Cached`], QEMU's default).
    pub overlap_check: OverlapCheck,
    /// QEMU's `overlap-check.<structure>` runtime options: each structure's check switched on or off on top of
    /// [`overlap_check`](Qcow2OpenOptions::overlap_check), in the order given.
    pub overlap_check_switches: Vec<(OverlapStructure, bool)>,
    /// QEMU's `pass-discard-request` runtime option: whether host clusters that guest discards and
    /// write-zeroes free are discarded (punched) from the image file too (default `true`, as qemu-io opens
    /// images, with unmapping on). `false` leaves their old bytes allocated in the file.
    pub pass_discard_request: bool,
    /// QEMU's `lazy-refcounts` runtime option: `Some` overrides the image's `lazy_refcounts` compatible bit
    /// for this open (a v3 image only); `None` follows the bit.
    pub lazy_refcounts: Option<bool>,
    /// The secret unlocking a LUKS-encrypted image (QEMU's `encrypt.key-secret`, its bytes). Without it an
    /// encrypted image opens only read-only without its backing file (`info`'s open, when the opener
    /// [skips backing files](blk_core::ImageOpener::skips_backing)), for `info` (guest data and maps refused);
    /// other opens fail with QEMU's message.
    pub key_secret: Option<blk_core::Secret>,
}

impl Qcow2OpenOptions {
    /// Options with the defaults: recorded backing format, 32 MiB L2 cache, normal open.
    pub fn new(host: HostOpenOptions, opener: Arc<dyn ImageOpener>) -> Qcow2OpenOptions {
        Qcow2OpenOptions {
            host,
            opener,
            backing_format: None,
            l2_cache_size: DEFAULT_L2_CACHE_SIZE,
            check_mode: false,
            depth: 0,
            snapshot: None,
            overlap_check: OverlapCheck::default(),
            overlap_check_switches: Vec::new(),
            pass_discard_request: true,
            lazy_refcounts: None,
            key_secret: None,
        }
    }
}

/// The runtime options QCOW2 takes at open ([`Qcow2OpenOptions::apply_runtime_options`]), by QEMU's names.
/// `encrypt.key-secret` arrives as its secret's bytes ([`Qcow2OpenOptions::key_secret`]).
pub const RUNTIME_OPTIONS: &[&str] = &[
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
    "overlap-check",
    "overlap-check.template",
    "overlap-check.main-header",
    "overlap-check.active-l1",
    "overlap-check.active-l2",
    "overlap-check.refcount-table",
    "overlap-check.refcount-block",
    "overlap-check.snapshot-table",
    "overlap-check.inactive-l1",
    "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory",
    "l2-cache-size",
    "l2-cache-entry-size",
    "refcount-cache-size",
    "cache-size",
    "cache-clean-interval",
];

/// QEMU's smallest refcount cache, in clusters (`MIN_REFCOUNT_CACHE_SIZE`).
const MIN_REFCOUNT_CACHE_TABLES: u64 = 4;
/// QEMU's smallest cluster, and so the smallest L2 cache entry.
const MIN_CLUSTER_SIZE: u64 = 512;

fn runtime_invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
        .with_format(FORMAT_NAME)
        .with_operation(Operation::Open)
}

/// QEMU's number option (`qemu_opt_get_number`): an unsigned 64-bit integer, a negative one wrapping.
fn parse_number(name: &str, value: &str) -> Result<u64> {
    let parsed = match value.strip_prefix('-') {
        Some(magnitude) => magnitude.parse::<u64>().map(u64::wrapping_neg),
        None => value.parse::<u64>(),
    };
    parsed.map_err(|_| runtime_invalid(format!("Parameter '{name}' expects a number")))
}

impl Qcow2OpenOptions {
    /// Applies QEMU's qcow2 runtime options ([`RUNTIME_OPTIONS`]) with QEMU's rules and messages, for an image
    /// whose clusters are `cluster_size` bytes (`None` when the header could not be read: the rules that need
    /// it are skipped, and the open reports the header).
    ///
    /// - `overlap-check` (and `overlap-check.template`, which must agree with it): `none`, `constant`,
    ///   `cached`, `all`, into [`overlap_check`](Qcow2OpenOptions::overlap_check); `overlap-check.<structure>`
    ///   (`main-header`, `active-l1`, `active-l2`, `refcount-table`, `refcount-block`, `snapshot-table`,
    ///   `inactive-l1`, `inactive-l2`, `bitmap-directory`; `on`/`off`) into
    ///   [`overlap_check_switches`](Qcow2OpenOptions::overlap_check_switches).
    /// - `l2-cache-size`, `refcount-cache-size`, `cache-size`: QEMU's sizes and its rules for combining them
    ///   (at most two given, neither part above `cache-size`, `cache-size` alone giving the L2 cache all but
    ///   the refcount cache's minimum of 4 clusters), the L2 share into
    ///   [`l2_cache_size`](Qcow2OpenOptions::l2_cache_size). blk sizes its refcount cache from the L2 cache, so
    ///   `refcount-cache-size` is checked and has no other effect.
    /// - `lazy-refcounts` (`on`/`off`): into [`lazy_refcounts`](Qcow2OpenOptions::lazy_refcounts); the open
    ///   refuses `on` for a version 2 image, as QEMU does.
    /// - `pass-discard-request` (`on`/`off`): into
    ///   [`pass_discard_request`](Qcow2OpenOptions::pass_discard_request). `pass-discard-snapshot=on`,
    ///   `pass-discard-other=off` and `discard-no-unref=off` (QEMU's defaults, blk's fixed behaviour) are
    ///   taken; their other values are refused (`UnsupportedFeature`).
    /// - `l2-cache-entry-size` (a power of two from 512 to the cluster size) and `cache-clean-interval` (at
    ///   most `UINT_MAX` seconds): checked, without effect (blk caches whole tables and never drops clean ones
    ///   on a timer).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use blk_core::{DenyNamedImages, HostOpenOptions};
    /// use blk_qcow::{OverlapCheck, Qcow2OpenOptions};
    /// let mut options = Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DenyNamedImages));
    /// let given = [("overlap-check", "none"), ("cache-size", "2M"), ("refcount-cache-size", "256k")];
    /// let given: Vec<(String, String)> =
    ///     given.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    /// options.apply_runtime_options(&given, Some(65536)).unwrap();
    /// assert_eq!(options.overlap_check, OverlapCheck::None);
    /// assert_eq!(options.l2_cache_size, (2 << 20) - (256 << 10));
    /// ```
    pub fn apply_runtime_options(
        &mut self,
        options: &[(String, String)],
        cluster_size: Option<u64>,
    ) -> Result<()> {
        let mut overlap = None;
        let mut template = None;
        let mut l2_cache = None;
        let mut entry_size = None;
        let mut refcount_cache = None;
        let mut combined = None;
        let mut clean_interval = 0;
        let mut switches = Vec::new();
        for (key, value) in options {
            let size = || parse_size_param(key, value).map_err(|e| e.with_format(FORMAT_NAME));
            match key.as_str() {
                "lazy-refcounts" => {
                    let on = parse_bool_param(key, value)
                        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Open))?;
                    self.lazy_refcounts = Some(on);
                }
                "pass-discard-request" => {
                    self.pass_discard_request = parse_bool_param(key, value)
                        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Open))?;
                }
                // blk's fixed behaviour is QEMU's default for these: other values are refused rather than
                // ignored.
                "pass-discard-snapshot" | "pass-discard-other" | "discard-no-unref" => {
                    let on = parse_bool_param(key, value)
                        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Open))?;
                    if on != (key == "pass-discard-snapshot") {
                        return Err(Error::new(
                            ErrorKind::UnsupportedFeature,
                            format!("blk supports only {key}={}", if on { "off" } else { "on" }),
                        )
                        .with_format(FORMAT_NAME)
                        .with_operation(Operation::Open));
                    }
                }
                "overlap-check" => overlap = Some(value.as_str()),
                "overlap-check.template" => template = Some(value.as_str()),
                _ if key.starts_with("overlap-check.")
                    && OverlapStructure::parse(&key["overlap-check.".len()..]).is_some() =>
                {
                    let on = parse_bool_param(key, value)
                        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Open))?;
                    if let Some(structure) = OverlapStructure::parse(&key["overlap-check.".len()..])
                    {
                        switches.push((structure, on));
                    }
                }
                "l2-cache-size" => l2_cache = Some(size()?),
                "l2-cache-entry-size" => entry_size = Some(size()?),
                "refcount-cache-size" => refcount_cache = Some(size()?),
                "cache-size" => combined = Some(size()?),
                "cache-clean-interval" => clean_interval = parse_number(key, value)?,
                _ => {
                    return Err(runtime_invalid(format!(
                        "Block format '{FORMAT_NAME}' does not support the option '{key}'"
                    )))
                }
            }
        }
        // QEMU's read_cache_sizes.
        let min_refcount_cache = cluster_size.map_or(0, |cs| MIN_REFCOUNT_CACHE_TABLES * cs);
        let mut l2_bytes = l2_cache.unwrap_or(DEFAULT_L2_CACHE_SIZE);
        let mut refcount_bytes = refcount_cache.unwrap_or(0);
        if let Some(combined) = combined {
            match (l2_cache, refcount_cache) {
                (Some(_), Some(_)) => return Err(runtime_invalid(
                    "cache-size, l2-cache-size and refcount-cache-size may not be set at the same \
                         time",
                )),
                (Some(l2), _) if l2 > combined => {
                    return Err(runtime_invalid("l2-cache-size may not exceed cache-size"))
                }
                (_, Some(refcount)) if refcount > combined => {
                    return Err(runtime_invalid(
                        "refcount-cache-size may not exceed cache-size",
                    ))
                }
                (Some(l2), None) => refcount_bytes = combined - l2,
                (None, Some(refcount)) => l2_bytes = combined - refcount,
                (None, None) => {
                    // All to the L2 cache but the refcount cache's minimum (QEMU gives the L2 cache at most
                    // what the whole disk needs; blk's fills only as tables are used, to the same effect).
                    refcount_bytes = combined.min(min_refcount_cache);
                    l2_bytes = combined - refcount_bytes;
                }
            }
        }
        if let Some(cs) = cluster_size {
            let entry = entry_size.unwrap_or(cs);
            if entry < MIN_CLUSTER_SIZE || entry > cs || !entry.is_power_of_two() {
                return Err(runtime_invalid(format!(
                    "L2 cache entry size must be a power of two between {MIN_CLUSTER_SIZE} and the \
                     cluster size ({cs})"
                )));
            }
            if refcount_bytes / cs > i32::MAX as u64 {
                return Err(runtime_invalid("Refcount cache size too big"));
            }
        }
        if clean_interval > u64::from(u32::MAX) {
            return Err(runtime_invalid("Cache clean interval too big"));
        }
        // QEMU's qcow2_update_options_prepare: the template must agree, cached by default.
        if let (Some(overlap), Some(template)) = (overlap, template) {
            if overlap != template {
                return Err(runtime_invalid(format!(
                    "Conflicting values for qcow2 options 'overlap-check' ('{overlap}') and \
                     'overlap-check.template' ('{template}')"
                )));
            }
        }
        if let Some(mode) = overlap.or(template) {
            self.overlap_check = OverlapCheck::parse(mode).ok_or_else(|| {
                runtime_invalid(format!(
                    "Unsupported value '{mode}' for qcow2 option 'overlap-check'. Allowed are any of the \
                     following: none, constant, cached, all"
                ))
            })?;
        }
        self.overlap_check_switches = switches;
        self.l2_cache_size = l2_bytes;
        Ok(())
    }
}

/// The compression method of a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Raw deflate (qemu's `zlib`).
    #[default]
    Zlib,
    /// Zstandard.
    Zstd,
}

/// How much of a new image to allocate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing beyond the header and tables.
    #[default]
    Off,
    /// L2 tables and data clusters allocated (refcounted), not written.
    Metadata,
    /// As metadata, and the file's blocks reserved with `fallocate`.
    Falloc,
    /// As metadata, and zeros written.
    Full,
}

/// What a new QCOW2 image looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2CreateOptions {
    /// Virtual size; `None` takes the backing file's.
    pub size: Option<u64>,
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`, the default).
    pub version: u32,
    /// Cluster size (a power of two, 512 B to 2 MiB; default 64 KiB).
    pub cluster_size: u64,
    /// Refcount width in bits (1 to 64, a power of two; default 16; v2 needs 16).
    pub refcount_bits: u64,
    /// The lazy-refcounts compatible bit (v3 only).
    pub lazy_refcounts: bool,
    /// The compression type (zstd needs v3).
    pub compression_type: CompressionType,
    /// Preallocation.
    pub preallocation: Preallocation,
    /// The backing file name, stored as given.
    pub backing_file: Option<String>,
    /// The backing file's format.
    pub backing_format: Option<String>,
    /// Extended L2 entries (32 subclusters per cluster; v3, clusters of at least 16 KiB).
    pub extended_l2: bool,
    /// The external data file's name, stored as given; created (raw, the virtual size) next to the image.
    pub data_file: Option<String>,
    /// The `data_file_raw` autoclear bit: the data file is a raw image of the guest (forces metadata
    /// preallocation, as qemu-img does).
    pub data_file_raw: bool,
    /// LUKS encryption (`encrypt.format=luks` and the other `encrypt.*` options), with its secret.
    pub encryption: Option<crate::encryption::create_options::LuksCreateOptions>,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Qcow2CreateOptions {
        Qcow2CreateOptions {
            size: None,
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            lazy_refcounts: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            extended_l2: false,
            data_file: None,
            data_file_raw: false,
            encryption: None,
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
        .with_format(FORMAT_NAME)
        .with_operation(Operation::Create)
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsupportedFeature, message)
        .with_format(FORMAT_NAME)
        .with_operation(Operation::Create)
}

/// qemu's boolean option values, with this format's error context.
fn parse_bool(name: &str, value: &str) -> Result<bool> {
    parse_bool_param(name, value)
        .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Create))
}

const fn opt(name: &'static str, value_type: &'static str, help: &'static str) -> CreateOptionInfo {
    CreateOptionInfo {
        name,
        value_type,
        help,
    }
}

/// The options `create -f qcow2 -o ...` accepts, in qemu-img's `-o help` order and words.
pub static CREATE_OPTIONS: &[CreateOptionInfo] = &[
    opt("backing_file", "str", "File name of a base image"),
    opt("backing_fmt", "str", "Image format of the base image"),
    opt("cluster_size", "size", "qcow2 cluster size"),
    opt(
        "compat",
        "str",
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    opt(
        "compression_type",
        "str",
        "Compression method used for image cluster compression",
    ),
    opt("data_file", "str", "File name of an external data file"),
    opt(
        "data_file_raw",
        "bool (on/off)",
        "The external data file must stay valid as a raw image",
    ),
    opt(
        "encrypt.cipher-alg",
        "str",
        "Name of encryption cipher algorithm",
    ),
    opt(
        "encrypt.cipher-mode",
        "str",
        "Name of encryption cipher mode",
    ),
    opt(
        "encrypt.format",
        "str",
        "Encrypt the image, format choices: 'aes', 'luks'",
    ),
    opt(
        "encrypt.hash-alg",
        "str",
        "Name of encryption hash algorithm",
    ),
    opt(
        "encrypt.iter-time",
        "num",
        "Time to spend in PBKDF in milliseconds",
    ),
    opt("encrypt.ivgen-alg", "str", "Name of IV generator algorithm"),
    opt(
        "encrypt.ivgen-hash-alg",
        "str",
        "Name of IV generator hash algorithm",
    ),
    opt(
        "encrypt.key-secret",
        "str",
        "ID of secret providing qcow AES key or LUKS passphrase",
    ),
    opt(
        "encryption",
        "bool (on/off)",
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    ),
    opt("extended_l2", "bool (on/off)", "Extended L2 tables"),
    opt(
        "lazy_refcounts",
        "bool (on/off)",
        "Postpone refcount updates",
    ),
    opt(
        "preallocation",
        "str",
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    opt(
        "refcount_bits",
        "num",
        "Width of a reference count entry in bits",
    ),
    opt("size", "size", "Virtual disk size"),
];

impl Qcow2CreateOptions {
    /// Parses qemu-img's `-o` options for qcow2, with `size` the positional size if one was given.
    ///
    /// Keys as [`CREATE_OPTIONS`] lists them. `encrypt.format=luks` with the other `encrypt.*` options (the secret `encrypt.key-secret` names looked up with [`blk_core::Secret::lookup`]); AES encryption (`encrypt.format=aes`, `encryption=on`) is refused with [`ErrorKind::UnsupportedFeature`]; unknown keys with [`ErrorKind::InvalidInput`]
    /// "Invalid parameter 'KEY'".
    ///
    /// ```
    /// use blk_qcow::Qcow2CreateOptions;
    /// let o = [("compat".to_string(), "0.10".to_string()), ("cluster_size".into(), "4k".into())];
    /// let parsed = Qcow2CreateOptions::from_key_values(Some(1 << 20), &o).unwrap();
    /// assert_eq!((parsed.version, parsed.cluster_size), (2, 4096));
    /// ```
    pub fn from_key_values(
        size: Option<u64>,
        options: &[(String, String)],
    ) -> Result<Qcow2CreateOptions> {
        let mut o = Qcow2CreateOptions {
            size,
            ..Qcow2CreateOptions::default()
        };
        let mut size_given = size.is_some();
        let mut refcount_given = false;
        let mut compression_given = false;
        for (key, value) in options {
            match key.as_str() {
                "size" => {
                    if size_given && size.is_some() {
                        return Err(invalid("The image size must be specified only once"));
                    }
                    o.size = Some(parse_size_param(key, value)?);
                    size_given = true;
                }
                "compat" => {
                    o.version = match value.as_str() {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => return Err(invalid(format!("Invalid parameter '{value}'"))),
                    }
                }
                "cluster_size" => {
                    let cs = parse_size_param(key, value)?;
                    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
                        return Err(invalid(
                            "Cluster size must be a power of two between 512 and 2048k",
                        ));
                    }
                    o.cluster_size = cs;
                }
                "refcount_bits" => {
                    let bits: u64 = value
                        .parse()
                        .map_err(|_| invalid("Parameter 'refcount_bits' expects a number"))?;
                    if !bits.is_power_of_two() || bits > 64 {
                        return Err(invalid(
                            "Refcount width must be a power of two and may not exceed 64 bits",
                        ));
                    }
                    o.refcount_bits = bits;
                    refcount_given = true;
                }
                "lazy_refcounts" => o.lazy_refcounts = parse_bool(key, value)?,
                "compression_type" => {
                    o.compression_type = match value.as_str() {
                        "zlib" => CompressionType::Zlib,
                        "zstd" => CompressionType::Zstd,
                        _ => return Err(invalid(format!("Invalid parameter '{value}'"))),
                    };
                    compression_given = true;
                }
                "preallocation" => {
                    o.preallocation = match value.as_str() {
                        "off" => Preallocation::Off,
                        "metadata" => Preallocation::Metadata,
                        "falloc" => Preallocation::Falloc,
                        "full" => Preallocation::Full,
                        _ => return Err(invalid(format!("Invalid parameter '{value}'"))),
                    }
                }
                "backing_file" => o.backing_file = Some(value.clone()),
                "backing_fmt" => o.backing_format = Some(value.clone()),
                "extended_l2" => o.extended_l2 = parse_bool(key, value)?,
                "data_file" => o.data_file = Some(value.clone()),
                "data_file_raw" => o.data_file_raw = parse_bool(key, value)?,
                // Parsed together below.
                "encryption" => {
                    parse_bool(key, value)?;
                }
                k if k.starts_with("encrypt.") => {}
                _ => return Err(invalid(format!("Invalid parameter '{key}'"))),
            }
        }
        let pairs: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        o.encryption = crate::encryption::create_options::LuksCreateOptions::parse(&pairs)
            .map_err(|e| e.with_format(FORMAT_NAME).with_operation(Operation::Create))?;
        if o.encryption.is_some() && o.preallocation != Preallocation::Off {
            return Err(unsupported(
                "preallocation of encrypted images is not supported",
            ));
        }
        if o.encryption.is_some() && o.data_file.is_some() {
            return Err(unsupported(
                "encrypted qcow2 images with an external data file are not supported",
            ));
        }
        if o.version == 2 {
            if o.lazy_refcounts {
                return Err(invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
            }
            if refcount_given && o.refcount_bits != 16 {
                return Err(invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
            }
            if compression_given && o.compression_type != CompressionType::Zlib {
                return Err(invalid(
                    "Compression type 'zstd' requires compatibility level 1.1 or above",
                ));
            }
        }
        if o.extended_l2 {
            if o.version < 3 {
                return Err(invalid("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if o.cluster_size < 16384 {
                return Err(invalid(
                    "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
                ));
            }
        }
        if o.data_file.is_some() && o.version < 3 {
            return Err(invalid("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if o.data_file_raw && o.data_file.is_none() {
            return Err(invalid("data-file-raw requires data-file"));
        }
        if o.data_file_raw && o.backing_file.is_some() {
            return Err(invalid(
                "Backing file and data-file-raw cannot be used at the same time",
            ));
        }
        if o.data_file_raw && o.preallocation == Preallocation::Off {
            // qemu-img: a raw data file needs every L2 entry to map the guest offset to itself.
            o.preallocation = Preallocation::Metadata;
        }
        if o.backing_format.is_some() && o.backing_file.is_none() {
            return Err(invalid(
                "Backing format cannot be used without backing file",
            ));
        }
        if o.backing_file.is_some() && o.preallocation != Preallocation::Off && !o.extended_l2 {
            return Err(invalid("Backing file and preallocation can only be used at the same time if extended_l2 is on"));
        }
        if o.size.is_none() && o.backing_file.is_none() {
            return Err(invalid("Image creation needs a size parameter"));
        }
        Ok(o)
    }
}
