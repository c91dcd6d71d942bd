//! The images of the `blk bench` suites (`cargo xtask bench --suite compare|scaling|tmpfs|vhd-vhdx`): the ones a suite's
//! scenarios use, made once per run in `<target>/bench-images/` (on the target's file system, which supports
//! O_DIRECT) or, for the tmpfs suite, in a directory on a tmpfs; deleted when the suite ends.
//!
//! | image | how it is made | used by |
//! |---|---|---|
//! | `data.raw` | written here: non-zero, distinct 4 KiB blocks (always made: the others are converted from it) | reads and writes on raw |
//! | `data.qcow2` | `qemu-img convert -O qcow2 -o cluster_size=64k data.raw` (every cluster allocated) | reads, overwrites |
//! | `data.vhd` | `qemu-img convert -O vpc -o subformat=dynamic,force_size=on data.raw` (every block allocated, the exact size) | scaling, VHD reads |
//! | `data.vhdx` | `qemu-img convert -O vhdx data.raw` (dynamic, 8 MiB blocks, every block allocated) | scaling |
//! | `zstd.qcow2` | `qemu-img convert -c -O qcow2 -o compression_type=zstd` of compressible data | compressed reads |
//! | `empty.qcow2`, `empty.raw`, `empty.vhd`, `empty.vhdx` | `qemu-img create` (the VHD as `data.vhd`: dynamic, the exact size), again before every run that writes them | allocating writes |

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;

/// The images a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// Raw, every byte written.
    DataRaw,
    /// QCOW2 (64 KiB clusters) with the same data, every cluster allocated.
    DataQcow2,
    /// Dynamic VHD (`vpc`) with the same data, every block allocated.
    DataVhd,
    /// Dynamic VHDX with the same data, every block allocated.
    DataVhdx,
    /// QCOW2 with zstd-compressed clusters.
    ZstdQcow2,
    /// A new, empty QCOW2 (made again before each run).
    EmptyQcow2,
    /// A new, empty (sparse) raw file (made again before each run).
    EmptyRaw,
    /// A new, empty dynamic VHD (made again before each run).
    EmptyVhd,
    /// A new, empty dynamic VHDX (made again before each run).
    EmptyVhdx,
}

impl Image {
    /// The file name under the image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Image::DataRaw => "data.raw",
            Image::DataQcow2 => "data.qcow2",
            Image::DataVhd => "data.vhd",
            Image::DataVhdx => "data.vhdx",
            Image::ZstdQcow2 => "zstd.qcow2",
            Image::EmptyQcow2 => "empty.qcow2",
            Image::EmptyRaw => "empty.raw",
            Image::EmptyVhd => "empty.vhd",
            Image::EmptyVhdx => "empty.vhdx",
        }
    }

    /// The `-f` format name.
    pub fn format(self) -> &'static str {
        match self {
            Image::DataRaw | Image::EmptyRaw => "raw",
            Image::DataQcow2 | Image::ZstdQcow2 | Image::EmptyQcow2 => "qcow2",
            Image::DataVhd | Image::EmptyVhd => "vpc",
            Image::DataVhdx | Image::EmptyVhdx => "vhdx",
        }
    }

    /// Whether the image is made anew before each run (runs write into it).
    pub fn is_fresh_per_run(self) -> bool {
        matches!(
            self,
            Image::EmptyQcow2 | Image::EmptyRaw | Image::EmptyVhd | Image::EmptyVhdx
        )
    }

    /// `qemu-img` `-o` options the image is made with (`convert` or `create`), if any.
    fn options(self) -> &'static [&'static str] {
        match self {
            Image::DataQcow2 => &["-o", "cluster_size=64k"],
            // Dynamic, and exactly the size asked for (not rounded to a CHS geometry).
            Image::DataVhd | Image::EmptyVhd => &["-o", "subformat=dynamic,force_size=on"],
            _ => &[],
        }
    }
}

/// The image directory; removed with everything in it when dropped.
#[derive(Debug)]
pub struct ImageSet {
    dir: PathBuf,
    size: u64,
    qemu_img: PathBuf,
}

impl ImageSet {
    /// Makes `images` (and `data.raw`, their source), each of `size` bytes (a multiple of 1 MiB), in `dir`,
    /// which is emptied first.
    pub fn create(
        dir: &Path,
        size: u64,
        qemu_img: &Path,
        images: &[Image],
    ) -> Result<ImageSet, String> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
        }
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let set = ImageSet {
            dir: dir.to_path_buf(),
            size,
            qemu_img: qemu_img.to_path_buf(),
        };
        let data = set.path(Image::DataRaw);
        write_data(&data, size, DataKind::Distinct)?;
        for &image in images {
            match image {
                Image::DataRaw => continue,
                _ if image.is_fresh_per_run() => {
                    set.make_fresh(image)?;
                    continue;
                }
                Image::ZstdQcow2 => {
                    set.make_zstd()?;
                    continue;
                }
                _ => {}
            }
            let mut args = vec!["convert", "-f", "raw", "-O", image.format()];
            args.extend_from_slice(image.options());
            set.qemu_img(&args, &[&data, &set.path(image)])?;
        }
        Ok(set)
    }

    /// Makes `zstd.qcow2` from compressible data.
    fn make_zstd(&self) -> Result<(), String> {
        let compressible = self.dir.join("compressible.raw");
        write_data(&compressible, self.size, DataKind::Compressible)?;
        self.qemu_img(
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
            ],
            &[&compressible, &self.path(Image::ZstdQcow2)],
        )?;
        fs::remove_file(&compressible)
            .map_err(|e| format!("cannot remove {}: {e}", compressible.display()))
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes per image.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path of `image`.
    pub fn path(&self, image: Image) -> PathBuf {
        self.dir.join(image.file_name())
    }

    /// Makes `image` anew, empty (only for [`Image::is_fresh_per_run`] images; others are left alone).
    pub fn make_fresh(&self, image: Image) -> Result<(), String> {
        if !image.is_fresh_per_run() {
            return Ok(());
        }
        let path = self.path(image);
        let _ = fs::remove_file(&path);
        let size = self.size.to_string();
        let mut args = vec!["create", "-q", "-f", image.format()];
        args.extend_from_slice(image.options());
        self.qemu_img(&args, &[&path, Path::new(&size)])
    }

    /// Drops `image` from the host page cache, then reads it once, sequentially, so that all of it is in the
    /// cache, and cached alike whatever wrote it: the kernel's readahead then picks the page-cache folios'
    /// sizes, where the writes (`qemu-img convert`'s, or this module's) left others. With large folios a 4 KiB
    /// read looks up and copies from fewer of them, which made one image's page-cache reads up to 15% faster
    /// than another's with the same data.
    pub fn warm_cache(&self, image: Image) -> Result<(), String> {
        self.drop_cache(image)?;
        let path = self.path(image);
        let mut file =
            File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
    }

    /// Writes `image`'s dirty pages back (`fsync`).
    pub fn sync(&self, image: Image) -> Result<(), String> {
        let path = self.path(image);
        let err = |e: std::io::Error| format!("cannot sync {}: {e}", path.display());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(err)?;
        file.sync_all().map_err(err)
    }

    /// Drops `image`'s pages from the host page cache (written back first), so that the next access fills
    /// the cache anew.
    pub fn drop_cache(&self, image: Image) -> Result<(), String> {
        self.sync(image)?;
        let path = self.path(image);
        let err =
            |e: std::io::Error| format!("cannot drop {} from the page cache: {e}", path.display());
        let file = File::open(&path).map_err(err)?;
        // SAFETY: a plain syscall on a descriptor `file` keeps open for the call; no memory is passed.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        match rc {
            0 => Ok(()),
            errno => Err(err(std::io::Error::from_raw_os_error(errno))),
        }
    }

    fn qemu_img(&self, args: &[&str], paths: &[&Path]) -> Result<(), String> {
        let mut command = Command::new(&self.qemu_img);
        command.args(args).args(paths);
        cmd::output(&mut command).map(|_| ())
    }
}

impl Drop for ImageSet {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the bytes of a generated image look like.
#[derive(Debug, Clone, Copy)]
enum DataKind {
    /// Pseudo-random, every 4 KiB block distinct and non-zero: what fully allocated images hold.
    Distinct,
    /// A quarter pseudo-random, three quarters text: compresses about 3:1, like ordinary file-system data.
    Compressible,
}

/// Writes `size` bytes of `kind` data to a new file at `path`.
fn write_data(path: &Path, size: u64, kind: DataKind) -> Result<(), String> {
    const CHUNK: usize = 1 << 20;
    const BLOCK: usize = 4096;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = File::create(path).map_err(err)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for byte in chunk.iter_mut() {
        // xorshift64: fast, reproducible bytes; `| 1` keeps them non-zero.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 24) as u8 | 1;
    }
    if let DataKind::Compressible = kind {
        let text = b"blk bench: compressible text for the zstd image, about three quarters of each block. ";
        for block in chunk.chunks_mut(BLOCK) {
            for (i, byte) in block.iter_mut().skip(BLOCK / 4).enumerate() {
                *byte = text[i % text.len()];
            }
        }
    }
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        // Make every 4 KiB block of the image distinct: its number in its first 8 bytes, 7 bits per byte
        // with the top bit set (so no byte is zero).
        for (i, block) in chunk.chunks_mut(BLOCK).enumerate() {
            let number = index * (CHUNK / BLOCK) as u64 + i as u64;
            for (k, byte) in block.iter_mut().take(8).enumerate() {
                *byte = ((number >> (7 * k)) & 0x7f) as u8 | 0x80;
            }
        }
        let len = (size - written).min(CHUNK as u64) as usize;
        file.write_all(&chunk[..len]).map_err(err)?;
        written += len as u64;
        index += 1;
    }
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_non_zero_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        write_data(&path, 3 << 20, DataKind::Distinct).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert!(bytes.iter().all(|&b| b != 0));
        let mut blocks: Vec<&[u8]> = bytes.chunks(4096).collect();
        blocks.sort_unstable();
        blocks.dedup();
        assert_eq!(blocks.len(), (3 << 20) / 4096);
    }
}
