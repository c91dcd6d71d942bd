//! The external data file (incompatible bit 2, named by header extension 0x44415441): guest data clusters
//! live there at their L2 host offsets, the metadata stays in the qcow2 file. As QEMU does, a data cluster is
//! allocated at its guest offset (so with `data_file_raw` the data file is a raw image of the guest), is not
//! counted in the qcow2 file's refcounts, and is zeroed in the data file when freed. Compressed clusters are
//! refused.
//!
//! Guest data I/O goes through [`Qcow2::read_data`] and friends, which pick the data file or the image file.

use std::path::{Path, PathBuf};

use blk_core::{
    resolve_relative_to, DiskFile, ImageOpener, IoBuf, IoBufMut, NamedImage, NamedImageRole, Result,
};

use crate::metadata::read_zero_filled;
use crate::qcow2::Qcow2;
use blk_core::buffer::range_mut;

/// An open external data file.
#[derive(Debug)]
pub(crate) struct DataFile {
    /// The open data file (raw).
    pub(crate) disk: Box<dyn DiskFile>,
    /// The name recorded in the image.
    pub(crate) name: String,
}

/// The data file's path: the recorded name resolved against the image's directory.
pub(crate) fn data_file_path(image: &Path, name: &str) -> PathBuf {
    resolve_relative_to(image, Path::new(name))
}

/// Opens the data file named `name` by the image at `image` as raw, writable unless `read_only`.
pub(crate) fn open(
    opener: &dyn ImageOpener,
    image: &Path,
    name: &str,
    read_only: bool,
) -> Result<DataFile> {
    let disk = opener.open_named(&NamedImage {
        path: data_file_path(image, name),
        format: Some("raw".to_string()),
        role: NamedImageRole::DataFile,
        read_only,
        depth: 1,
    })?;
    Ok(DataFile {
        disk,
        name: name.to_string(),
    })
}

impl Qcow2 {
    /// Reads guest data at host offset `host` into `bufs`, zeros past the end of the file holding it.
    pub(crate) fn read_data(&self, host: u64, bufs: &[IoBufMut<'_>]) -> Result<()> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let got = match &self.shared.data_file {
            Some(data) => {
                let inside = data.disk.logical_size().saturating_sub(host).min(len);
                if inside > 0 {
                    data.disk.read_at(host, &range_mut(bufs, 0, inside))?;
                }
                inside
            }
            None => self.file.read_vectored_at(host, bufs)? as u64,
        };
        if got < len {
            for b in range_mut(bufs, got, len - got) {
                b.fill_zero_from(0);
            }
        }
        Ok(())
    }

    /// Reads `len` bytes of guest data at host offset `host`, zeros past the end.
    pub(crate) fn read_data_vec(&self, host: u64, len: usize) -> Result<Vec<u8>> {
        if self.shared.data_file.is_none() {
            return read_zero_filled(&self.file, host, len);
        }
        let mut buf = vec![0u8; len];
        self.read_data(host, &[IoBufMut::from(&mut buf[..])])?;
        Ok(buf)
    }

    /// Writes guest data at host offset `host`.
    pub(crate) fn write_data(&self, host: u64, bufs: &[IoBuf<'_>]) -> Result<()> {
        match &self.shared.data_file {
            Some(data) => data.disk.write_at(host, bufs),
            None => self.file.write_vectored_at(host, bufs),
        }
    }

    /// Writes `buf` as guest data at host offset `host`.
    pub(crate) fn write_data_all(&self, host: u64, buf: &[u8]) -> Result<()> {
        self.write_data(host, &[IoBuf::from(buf)])
    }

    /// Zeroes a freed data cluster in the data file (QEMU discards it there), so a raw data file keeps
    /// reading as the guest does. Errors are ignored: the qcow2 metadata already says the range is zero.
    pub(crate) fn zero_data_cluster(&self, host: u64) {
        if let Some(data) = &self.shared.data_file {
            let cs = self.shared.geometry.cluster_size;
            let len = cs.min(data.disk.logical_size().saturating_sub(host));
            if len > 0 {
                let _ = data.disk.write_zeroes(host, len, true);
            }
        }
    }
}

impl Qcow2 {
    /// Host clusters for `n` new data clusters from guest cluster `gc`: at the guest offset in an external
    /// data file (not refcounted, as QEMU does), else allocated in the image file. Returns the host offset and
    /// whether refcounts were taken (to give back on failure).
    pub(crate) fn allocate_data(
        &self,
        meta: &mut crate::metadata::Metadata,
        gc: u64,
        n: u64,
    ) -> Result<(u64, bool)> {
        if self.shared.data_file.is_some() {
            return Ok((gc << self.shared.geometry.cluster_bits, false));
        }
        Ok((meta.allocate_clusters(&self.shared.file, n)?, true))
    }
}
