//! `impl blk_core::ImageAdmin for Qcow2`: the image's description for `info`, and the administration
//! operations, each done by its own room (`check`, compressed writes in `io`, `snapshots`, `offline`).
//!
//! `image_info` lists internal snapshots and persistent bitmaps as `qemu-img info` does, reading them when
//! called (not at open; QEMU fails the open where `image_info` fails), within the caps of the snapshot table
//! (`snapshots::table`) and of the bitmap directory (`bitmaps`); a violation is `CorruptImage` naming the
//! field's offset.

use blk_core::{
    CheckReport, Error, ImageAdmin, ImageInfo, InfoValue, Mapper, Operation, RepairMode, Result,
    SnapshotSelector,
};

use crate::bitmaps::{self, BitmapDirectory};
use crate::image::features::{COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::image::Qcow2;
use crate::offline::amend::amend;
use crate::offline::change_backing::change_backing_file;
use crate::offline::make_empty::make_empty;
use crate::snapshots;
use crate::snapshots::table::{Snapshot, SnapshotTable};
use crate::FORMAT_NAME;

impl Qcow2 {
    /// The image's description (`qemu-img info`): internal snapshots and persistent bitmaps are read now.
    fn info(&self) -> Result<ImageInfo> {
        let meta = self.lock_metadata();
        let h = meta.header().clone();
        drop(meta);
        let file = self.file();
        let file_len = file.len()?;
        let g = &self.shared.geometry;
        let cluster_size = g.cluster_size;
        let snapshots = SnapshotTable::read(
            file,
            file_len,
            u64::from(h.nb_snapshots),
            h.snapshots_offset,
            cluster_size,
        )?
        .entries
        .iter()
        .map(Snapshot::info)
        .collect();
        let bitmaps = match BitmapDirectory::from_header(file, file_len, &h)? {
            Some(dir) => dir.read(file, cluster_size, g.size)?,
            None => Vec::new(),
        };
        let mut data = vec![
            (
                "compat".to_string(),
                InfoValue::String(if h.version >= 3 { "1.1" } else { "0.10" }.to_string()),
            ),
            (
                "compression-type".to_string(),
                InfoValue::String(
                    if h.compression_type == 1 {
                        "zstd"
                    } else {
                        "zlib"
                    }
                    .to_string(),
                ),
            ),
        ];
        if h.version >= 3 {
            data.push((
                "lazy-refcounts".to_string(),
                InfoValue::Bool(h.compatible & COMPAT_LAZY_REFCOUNTS != 0),
            ));
        }
        data.push((
            "refcount-bits".to_string(),
            InfoValue::U64(1 << h.refcount_order),
        ));
        if let Some(data_file) = &self.shared.data_file {
            data.push((
                "data-file".to_string(),
                InfoValue::String(data_file.name.clone()),
            ));
            data.push((
                "data-file-raw".to_string(),
                InfoValue::Bool(g.data_file_raw),
            ));
        }
        if let Some(encryption) = &self.shared.encryption {
            data.push(("encrypt".to_string(), encryption.info()));
        }
        if h.version >= 3 {
            data.push((
                "corrupt".to_string(),
                InfoValue::Bool(h.incompatible & INCOMPAT_CORRUPT != 0),
            ));
            data.push(("extended-l2".to_string(), InfoValue::Bool(g.extended_l2)));
        }
        if !bitmaps.is_empty() {
            data.push(("bitmaps".to_string(), bitmaps::info_value(&bitmaps)));
        }
        let dirty = h.incompatible & INCOMPAT_DIRTY != 0 && !self.shared.set_dirty;
        Ok(ImageInfo {
            format: FORMAT_NAME,
            filename: file.path().to_path_buf(),
            virtual_size: g.size,
            actual_size: self.physical_size()?,
            cluster_size: Some(cluster_size),
            dirty,
            backing_filename: self.shared.backing_name.clone(),
            full_backing_filename: self.full_backing_filename(),
            backing_format: self.shared.backing_format.clone(),
            snapshots,
            format_specific: Some(("qcow2".to_string(), data)),
        })
    }
}

impl ImageAdmin for Qcow2 {
    fn image_info(&self) -> Result<ImageInfo> {
        self.info()
            .map_err(|e: Error| self.context(e, Operation::Info, None))
    }

    fn read_vm_state(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.load_vm_state(pos, buf)
            .map_err(|e| self.context(e, Operation::Read, Some(pos)))
    }

    fn repaired_on_open(&self) -> Option<CheckReport> {
        self.shared.open_repair.get().cloned()
    }

    fn check(&self, repair: RepairMode) -> Result<CheckReport> {
        crate::check::run(self, repair).map_err(|e| self.context(e, Operation::Check, None))
    }

    fn compressed_write_size(&self) -> Option<u64> {
        Some(self.shared.geometry.cluster_size)
    }

    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.writable(Operation::Write, offset)?;
        self.track_write(Operation::Write, offset, buf.len() as u64)?;
        self.write_compressed_impl(offset, buf)
            .map_err(|e| self.context(e, Operation::Write, Some(offset)))
    }

    fn has_zero_init(&self) -> bool {
        // A raw data file may hold anything.
        self.shared.backing.is_none() && !self.shared.geometry.data_file_raw
    }

    fn make_empty(&self) -> Result<()> {
        self.writable(Operation::Discard, 0)?;
        make_empty(self).map_err(|e| self.context(e, Operation::Discard, None))
    }

    fn create_snapshot(&self, name: &str) -> Result<()> {
        snapshots::create::create_snapshot(self, name)
            .map_err(|e| self.context(e, Operation::Write, None))
    }

    fn delete_snapshot(&self, snapshot: &SnapshotSelector) -> Result<()> {
        snapshots::delete::delete_snapshot(self, snapshot)
            .map_err(|e| self.context(e, Operation::Write, None))
    }

    fn apply_snapshot(&self, snapshot: &SnapshotSelector) -> Result<()> {
        snapshots::apply::apply_snapshot(self, snapshot)
            .map_err(|e| self.context(e, Operation::Write, None))
    }

    fn snapshot_disk_size(&self, snapshot: &SnapshotSelector) -> Result<u64> {
        snapshots::apply::snapshot_disk_size(self, snapshot)
            .map_err(|e| self.context(e, Operation::Open, None))
    }

    fn amend(&self, options: &[(String, String)]) -> Result<()> {
        self.amend_with_force(options, false)
    }

    fn amend_with_force(&self, options: &[(String, String)], force: bool) -> Result<()> {
        self.writable(Operation::Write, 0)?;
        amend(self, options, force).map_err(|e| self.context(e, Operation::Write, None))
    }

    /// Version 3 images only: QEMU cannot store bitmaps in v2 images.
    fn dirty_bitmaps(&self) -> Option<&dyn blk_core::DirtyBitmaps> {
        (self.geometry().version >= 3).then_some(self as &dyn blk_core::DirtyBitmaps)
    }

    fn change_backing_file(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        self.writable(Operation::ChangeBacking, 0)?;
        change_backing_file(self, name, format)
            .map_err(|e| self.context(e, Operation::ChangeBacking, None))
    }
}
