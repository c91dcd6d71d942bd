//! Helpers shared by blk-qcow's integration tests: an [`ImageOpener`] for backing files (raw through a minimal
//! raw disk written here, qcow2 through `Qcow2::open`), qemu-img runners, qemu-io commands done through blk,
//! header patching, maps in qemu-img's shape; and the workspace's shared test support (qemu-io, temporary
//! directories, the spawn lock, byte comparisons).
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[allow(unused_imports)]
pub use blk_test_support::{assert_same_bytes as assert_same, path_str, qemu_io, read_all, serial};
use blk_test_support::{qemu_raw, run, run_output, target_tempdir};

use blk_core::buffer::{total_len, total_len_mut};
use blk_core::{
    DiskFile, DiskTopology, Error, ErrorKind, HostFile, HostOpenOptions, ImageAdmin, ImageOpener,
    IoBuf, IoBufMut, MappedDisk, NamedImage, Result,
};
use blk_qcow::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};

/// Opens backing files for tests: `raw` through [`TestRaw`] (read-only), `qcow2` through [`Qcow2::open`] (read-only, with
/// this opener for its own backing file). Any other or missing format is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestOpener;

/// Deepest backing chain [`TestOpener`] opens (a backing loop ends here instead of overflowing the stack).
pub const MAX_CHAIN_DEPTH: u32 = 64;

impl ImageOpener for TestOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if image.depth > MAX_CHAIN_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "test opener: backing chain deeper than {MAX_CHAIN_DEPTH} at {}",
                    image.path.display()
                ),
            ));
        }
        let host = blk_test_support::ro();
        match image.format.as_deref() {
            Some("raw") => Ok(Box::new(TestRaw::open(&image.path, true)?)),
            Some("qcow2") => {
                let mut options = Qcow2OpenOptions::new(host, Arc::new(TestOpener));
                options.depth = image.depth;
                Ok(Box::new(open_disk(&image.path, &options)?))
            }
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("test opener: unsupported backing format {other:?}"),
            )),
        }
    }
}

/// A QCOW2 image served for guest I/O, as the tests hold it (it derefs to [`Qcow2`]).
pub type Disk = MappedDisk<Qcow2>;

/// Opens the image at `path` with `options` and serves it: `MappedDisk::new(Qcow2::open(..)?)`.
pub fn open_disk(path: impl AsRef<Path>, options: &Qcow2OpenOptions) -> Result<Disk> {
    Qcow2::open(path, options).map(MappedDisk::new)
}

/// The opener as the `Arc` open options want.
pub fn opener() -> Arc<dyn ImageOpener> {
    Arc::new(TestOpener)
}

/// Open options for a writable open with [`TestOpener`].
pub fn rw() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(HostOpenOptions::default(), opener())
}

/// Open options for a read-only open with [`TestOpener`].
pub fn ro() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(blk_test_support::ro(), opener())
}

/// A temporary directory on the target's file system.
pub fn tempdir() -> tempfile::TempDir {
    target_tempdir!("blk-qcow-test")
}

/// Runs `qemu-img ARGS`, asserts success and returns its stdout.
pub fn qemu_img(args: &[&str]) -> String {
    String::from_utf8_lossy(&run("qemu-img", args).stdout).into_owned()
}

/// Runs `qemu-img ARGS` and returns (exit code, stdout), without asserting.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = run_output("qemu-img", args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `qemu-img create -q -f qcow2 [-o opts] path size`.
pub fn qemu_create(path: &Path, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path_str(path), size]);
    qemu_img(&args);
}

/// `qemu-img convert -c -f raw -O qcow2 -o opts raw image`: `image`, a compressed copy of the raw file `raw`.
pub fn qemu_convert_compressed(raw: &Path, image: &Path, opts: &str) {
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        opts,
        path_str(raw),
        path_str(image),
    ]);
}

/// `qemu-img rebase -u`: makes `image` name `backing` (a qcow2 image, relative to `image`) as its backing
/// file without looking at either.
pub fn qemu_rebase_unsafe(image: &Path, backing: &str) {
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        "qcow2",
        path_str(image),
    ]);
}

/// Asserts that blk reads `image` (opened with `options`) as `qemu-img convert` does and maps it as
/// `qemu-img map` does.
#[track_caller]
pub fn assert_reads_and_maps_like_qemu(image: &Path, options: &Qcow2OpenOptions, what: &str) {
    let disk = open_disk(image, options).unwrap();
    assert_same(&read_all(&disk), &qemu_contents(image, "qcow2"), what);
    assert_eq!(blk_map(&disk), qemu_map(image), "map of {what}");
}

/// Asserts that `qemu-img check` finds `image` clean.
pub fn assert_qemu_check_clean(image: &Path) {
    let (code, out) = qemu_img_status(&["check", "--output=json", path_str(image)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", image.display());
}

/// `dir/name` as a `PathBuf`.
pub fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Reads a raw file converted by qemu-img from `image` (format `format`): the guest contents as QEMU sees them.
pub fn qemu_contents(image: &Path, format: &str) -> Vec<u8> {
    let dir = tempdir();
    qemu_raw(format, image, dir.path())
}

/// `key=value,key=value` options (as `qemu-img create -o` takes them) as pairs.
pub fn option_pairs(opts: &str) -> Vec<(&str, &str)> {
    opts.split(',')
        .map(|p| p.split_once('=').expect("key=value"))
        .collect()
}

/// `(key, value)` pairs as [`Qcow2CreateOptions::from_key_values`] takes them.
pub fn key_values(opts: &[(&str, &str)]) -> Vec<(String, String)> {
    opts.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Create options for an image of `size` bytes from `(key, value)` pairs.
pub fn create_options(size: u64, opts: &[(&str, &str)]) -> Result<Qcow2CreateOptions> {
    Qcow2CreateOptions::from_key_values(Some(size), &key_values(opts))
}

/// Creates an image of `size` bytes at `path` with blk, its backing file opened by [`TestOpener`].
pub fn blk_create(path: impl AsRef<Path>, size: u64, opts: &[(&str, &str)]) {
    let options = create_options(size, opts).unwrap();
    Qcow2::create(path, &options, &TestOpener).unwrap();
}

/// A size of a qemu-io command: bytes, or with a `k` or `M` suffix.
pub fn size_arg(s: &str) -> u64 {
    match s.strip_suffix('k') {
        Some(n) => n.parse::<u64>().unwrap() << 10,
        None => match s.strip_suffix('M') {
            Some(n) => n.parse::<u64>().unwrap() << 20,
            None => s.parse().unwrap(),
        },
    }
}

/// Does one qemu-io command (`write [-c] -P v`, `write -z [-u]`, `discard`, each `OFFSET LEN`) through blk.
pub fn run_blk(disk: &Disk, cmd: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (off, len) = (
        size_arg(words[words.len() - 2]),
        size_arg(words[words.len() - 1]),
    );
    match words[..words.len() - 2] {
        ["write", "-P", v] => disk
            .write_all_at(off, &vec![v.parse::<u8>().unwrap(); len as usize])
            .unwrap(),
        ["write", "-c", "-P", v] => {
            let cs = disk.compressed_write_size().unwrap();
            let buf = vec![v.parse::<u8>().unwrap(); cs as usize];
            let mut o = off;
            while o < off + len {
                disk.write_compressed(o, &buf).unwrap();
                o += cs;
            }
        }
        ["write", "-z"] => disk.write_zeroes(off, len, false).unwrap(),
        ["write", "-z", "-u"] => disk.write_zeroes(off, len, true).unwrap(),
        ["discard"] => disk.discard(off, len).unwrap(),
        _ => panic!("unknown command {cmd}"),
    }
}

/// Reads a big-endian integer of `n` bytes at `offset` of the file.
pub fn read_be(path: &Path, offset: u64, n: usize) -> u64 {
    let mut buf = vec![0u8; n];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// Writes `bytes` at `offset` of the file.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// Writes `value` as a big-endian integer of `n` bytes at `offset` of the file.
pub fn write_be(path: &Path, offset: u64, n: usize, value: u64) {
    patch(path, offset, &value.to_be_bytes()[8 - n..]);
}

/// An opener that opens external data files (`NamedImageRole::DataFile`, raw) writable when asked, through
/// [`TestRaw`]; everything else as [`TestOpener`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataFileOpener;

impl ImageOpener for DataFileOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if image.role == blk_core::NamedImageRole::DataFile {
            assert_eq!(image.format.as_deref(), Some("raw"), "data files are raw");
            return Ok(Box::new(TestRaw::open(&image.path, image.read_only)?));
        }
        TestOpener.open_named(image)
    }
}

/// [`DataFileOpener`] whose data files say they are their host file byte for byte
/// ([`DiskFile::identity_file`], as the factory's raw disks do): the image then serves data-file pieces as
/// host pieces of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostDataFileOpener;

impl ImageOpener for HostDataFileOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if image.role == blk_core::NamedImageRole::DataFile {
            assert_eq!(image.format.as_deref(), Some("raw"), "data files are raw");
            let mut disk = TestRaw::open(&image.path, image.read_only)?;
            disk.identity = true;
            return Ok(Box::new(disk));
        }
        TestOpener.open_named(image)
    }
}

/// Open options for a writable open with [`HostDataFileOpener`].
pub fn rw_host_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(HostDataFileOpener))
}

/// Open options for a read-only open with [`HostDataFileOpener`].
pub fn ro_host_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(blk_test_support::ro(), Arc::new(HostDataFileOpener))
}

/// Open options for a writable open with [`DataFileOpener`].
pub fn rw_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DataFileOpener))
}

/// Open options for a read-only open with [`DataFileOpener`].
pub fn ro_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(blk_test_support::ro(), Arc::new(DataFileOpener))
}

/// A minimal raw disk over a [`HostFile`], writable unless opened read-only (format crates may not depend on
/// blk-raw).
#[derive(Debug)]
pub struct TestRaw {
    file: HostFile,
    size: u64,
    /// Whether [`DiskFile::identity_file`] gives the file.
    identity: bool,
}

impl TestRaw {
    /// Opens `path` without advisory lock.
    pub fn open(path: &Path, read_only: bool) -> Result<TestRaw> {
        let file = HostFile::open(
            path,
            HostOpenOptions {
                read_only,
                lock: blk_core::LockMode::None,
                ..HostOpenOptions::default()
            },
        )?;
        let size = file.len()?;
        Ok(TestRaw {
            file,
            size,
            identity: false,
        })
    }

    /// Refuses `operation` when the disk is read-only.
    fn writable(&self, operation: blk_core::Operation) -> Result<()> {
        if self.file.is_read_only() {
            return Err(blk_core::read_only_error(operation));
        }
        Ok(())
    }
}

impl DiskFile for TestRaw {
    fn logical_size(&self) -> u64 {
        self.size
    }
    fn physical_size(&self) -> Result<u64> {
        self.file.allocated_size()
    }
    fn topology(&self) -> DiskTopology {
        self.file.topology()
    }
    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }
    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(TestRaw {
            file: self.file.try_clone()?,
            size: self.size,
            identity: self.identity,
        }))
    }
    fn read_at(&self, offset: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        blk_core::check_range(offset, total_len_mut(bufs), self.size)?;
        let got = self.file.read_vectored_at(offset, bufs)?;
        let mut skip = got;
        for buf in bufs {
            if skip >= buf.len() {
                skip -= buf.len();
            } else {
                buf.fill_zero_from(skip);
                skip = 0;
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        self.writable(blk_core::Operation::Write)?;
        blk_core::check_range(offset, total_len(bufs), self.size)?;
        self.file.write_vectored_at(offset, bufs)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
        self.writable(blk_core::Operation::WriteZeroes)?;
        blk_core::check_range(offset, len, self.size)?;
        let zeros = vec![0u8; len as usize];
        self.file.write_all_at(offset, &zeros)
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        self.writable(blk_core::Operation::Discard)
    }
    fn flush(&self) -> Result<()> {
        if self.file.is_read_only() {
            return Ok(());
        }
        self.file.sync_data()
    }
    fn identity_file(&self) -> Option<&HostFile> {
        self.identity.then_some(&self.file)
    }
}

/// blk's map runs, merged as qemu-img merges them, in qemu-img's JSON shape with offsets.
pub fn blk_map(disk: &dyn DiskFile) -> Vec<serde_json::Value> {
    let size = disk.logical_size();
    let mut runs: Vec<serde_json::Value> = Vec::new();
    let mut host_end: Option<u64> = None;
    let mut pos = 0;
    while pos < size {
        let e = disk.map(pos, size - pos).unwrap();
        let mut v = serde_json::json!({
            "start": e.offset, "length": e.length, "depth": e.depth,
            "present": e.kind != blk_core::ExtentKind::Unallocated, "zero": e.kind != blk_core::ExtentKind::Data,
            "data": e.kind == blk_core::ExtentKind::Data, "compressed": e.compressed,
        });
        if let Some(h) = e.host_offset {
            v["offset"] = serde_json::Value::from(h);
        }
        let merged = runs.last_mut().is_some_and(|last| {
            let same = ["depth", "present", "zero", "data", "compressed"]
                .iter()
                .all(|k| last[k] == v[k])
                && last.get("offset").is_some() == e.host_offset.is_some()
                && host_end == e.host_offset;
            if same {
                last["length"] =
                    serde_json::Value::from(last["length"].as_u64().unwrap() + e.length);
            }
            same
        });
        if !merged {
            runs.push(v);
        }
        pos += e.length;
        host_end = e.host_offset.map(|h| h + e.length);
    }
    runs
}

/// Map runs in qemu-img's JSON shape without their host offsets (for images whose layouts legitimately differ).
pub fn without_host_offsets(mut runs: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for run in &mut runs {
        run.as_object_mut().unwrap().remove("offset");
    }
    runs
}

/// `qemu-img map --output=json` of `img`, without the host offsets of backing-file runs (the test opener's
/// raw backing file does not report them).
pub fn qemu_map(img: &Path) -> Vec<serde_json::Value> {
    let mut runs: Vec<serde_json::Value> =
        serde_json::from_str(&qemu_img(&["map", "--output=json", "-U", path_str(img)])).unwrap();
    for run in &mut runs {
        if run["depth"].as_u64() != Some(0) {
            run.as_object_mut().unwrap().remove("offset");
        }
    }
    runs
}
