//! Helpers shared by blk-qcow's integration tests: an [`ImageOpener`] for backing files (raw through a minimal
//! raw disk written here, qcow2 through `Qcow2::open`), qemu-img / qemu-io runners and temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blk_core::buffer::{total_len, total_len_mut};
use blk_core::{
    DiskFile, DiskTopology, Error, ErrorKind, HostFile, HostOpenOptions, ImageOpener, IoBuf,
    IoBufMut, MappedDisk, NamedImage, Result,
};
use blk_qcow::{Qcow2, Qcow2OpenOptions};

/// Opens backing files for tests: `raw` through [`TestRaw`], `qcow2` through [`Qcow2::open`] (read-only, with
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
        let host = HostOpenOptions {
            read_only: true,
            ..HostOpenOptions::default()
        };
        match image.format.as_deref() {
            Some("raw") => Ok(Box::new(TestRaw::open(&image.path)?)),
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
    Qcow2OpenOptions::new(
        HostOpenOptions {
            read_only: true,
            ..HostOpenOptions::default()
        },
        opener(),
    )
}

/// A minimal read-only raw disk over a [`HostFile`] (format crates may not depend on blk-raw).
#[derive(Debug)]
pub struct TestRaw {
    file: HostFile,
    size: u64,
}

impl TestRaw {
    /// Opens `path` read-only, without advisory lock.
    pub fn open(path: &Path) -> Result<TestRaw> {
        let file = HostFile::open(
            path,
            HostOpenOptions {
                read_only: true,
                lock: blk_core::LockMode::None,
                ..HostOpenOptions::default()
            },
        )?;
        let size = file.len()?;
        Ok(TestRaw { file, size })
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
        true
    }
    fn try_clone(&self) -> Result<Box<dyn DiskFile>> {
        Ok(Box::new(TestRaw {
            file: self.file.try_clone()?,
            size: self.size,
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
    fn write_at(&self, _offset: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        let _ = total_len(bufs);
        Err(blk_core::read_only_error(blk_core::Operation::Write))
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _may_unmap: bool) -> Result<()> {
        Err(blk_core::read_only_error(blk_core::Operation::WriteZeroes))
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(blk_core::read_only_error(blk_core::Operation::Discard))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A temporary directory on the target's file system.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blk-qcow-test")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory")
}

/// Serializes tests of one binary that spawn processes while holding images open (a child briefly inherits
/// descriptors, and with them OFD locks).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `qemu-img ARGS`, asserts success and returns its stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("running qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-img ARGS` and returns (exit code, stdout), without asserting.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("running qemu-img");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `qemu-io` with each of `cmds` as a `-c` command on `image` (format from the image's `-f` given in
/// `format`), asserting success and that no command printed an error.
pub fn qemu_io(image: &Path, format: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.arg("-f").arg(format);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(image);
    let out = cmd.output().expect("running qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io {cmds:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts that `qemu-img check` finds `image` clean.
pub fn assert_qemu_check_clean(image: &Path) {
    let (code, out) = qemu_img_status(&["check", "--output=json", path_str(image)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", image.display());
}

/// The path as `&str` (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `dir/name` as a `PathBuf`.
pub fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Reads the whole guest disk through `disk`.
pub fn read_all(disk: &dyn DiskFile) -> Vec<u8> {
    let mut buf = vec![0u8; disk.logical_size() as usize];
    disk.read_exact_at(0, &mut buf).expect("reading the disk");
    buf
}

/// Reads a raw file converted by qemu-img from `image` (format `format`): the guest contents as QEMU sees them.
pub fn qemu_contents(image: &Path, format: &str) -> Vec<u8> {
    let dir = tempdir();
    let out = dir.path().join("contents.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        format,
        "-O",
        "raw",
        path_str(image),
        path_str(&out),
    ]);
    std::fs::read(&out).expect("reading qemu-img's conversion")
}

/// Asserts two disk contents are equal, reporting the first difference (not the whole buffers).
#[track_caller]
pub fn assert_same(ours: &[u8], expected: &[u8], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}: lengths differ");
    if let Some(i) = ours.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: ours {} expected {}",
            ours[i], expected[i]
        );
    }
}

/// An opener that opens external data files (`NamedImageRole::DataFile`, raw) writable when asked, through
/// [`TestRawFile`]; everything else as [`TestOpener`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataFileOpener;

impl ImageOpener for DataFileOpener {
    fn open_named(&self, image: &NamedImage) -> Result<Box<dyn DiskFile>> {
        if image.role == blk_core::NamedImageRole::DataFile {
            assert_eq!(image.format.as_deref(), Some("raw"), "data files are raw");
            return Ok(Box::new(TestRawFile::open(&image.path, image.read_only)?));
        }
        TestOpener.open_named(image)
    }
}

/// Open options for a writable open with [`DataFileOpener`].
pub fn rw_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(HostOpenOptions::default(), Arc::new(DataFileOpener))
}

/// Open options for a read-only open with [`DataFileOpener`].
pub fn ro_data() -> Qcow2OpenOptions {
    Qcow2OpenOptions::new(
        HostOpenOptions {
            read_only: true,
            ..HostOpenOptions::default()
        },
        Arc::new(DataFileOpener),
    )
}

/// A minimal raw disk over a [`HostFile`], writable unless opened read-only.
#[derive(Debug)]
pub struct TestRawFile {
    file: HostFile,
    size: u64,
}

impl TestRawFile {
    /// Opens `path` without advisory lock.
    pub fn open(path: &Path, read_only: bool) -> Result<TestRawFile> {
        let file = HostFile::open(
            path,
            HostOpenOptions {
                read_only,
                lock: blk_core::LockMode::None,
                ..HostOpenOptions::default()
            },
        )?;
        let size = file.len()?;
        Ok(TestRawFile { file, size })
    }
}

impl DiskFile for TestRawFile {
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
        Ok(Box::new(TestRawFile {
            file: self.file.try_clone()?,
            size: self.size,
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
        blk_core::check_range(offset, total_len(bufs), self.size)?;
        self.file.write_vectored_at(offset, bufs)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
        blk_core::check_range(offset, len, self.size)?;
        let zeros = vec![0u8; len as usize];
        self.file.write_all_at(offset, &zeros)
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.file.sync_data()
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
