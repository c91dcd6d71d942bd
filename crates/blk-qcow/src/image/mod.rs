//! The open image: [`Qcow2`] (one handle: its own descriptor, the shared state), opening it, its header and
//! options, the files it names, and the description and administration it answers ([`blk_core::ImageAdmin`]).
//!
//! Handles from [`Mapper::duplicate`](blk_core::Mapper::duplicate) share one `Arc<Shared>`: the fixed
//! layout, the metadata behind the one metadata lock (see `metadata` for the locking rules), the link signal
//! writers of a cluster being allocated wait on, and the backing and data files. Closing the last
//! handle of a writable image writes the caches back, clears the dirty bit this open set and cuts the file
//! back to its used end.
//!
//! | module | what it holds |
//! |---|---|
//! | `open` | [`Qcow2::open`]: the header checked, the tables read, named files opened, a dirty image repaired |
//! | `admin` | `impl ImageAdmin for Qcow2`: `info`, and the administration each room implements |
//! | `options` | [`Qcow2OpenOptions`], [`Qcow2CreateOptions`], `CREATE_OPTIONS` |
//! | `header` | the header: parsing, validation against QEMU's caps, serializing |
//! | `header_update` | rewriting the header cluster (for `rebase` and `amend`) |
//! | `extensions` | header extensions (backing format, feature names, unknown ones kept byte for byte) |
//! | `features` | incompatible / compatible / autoclear feature bits |
//! | `backing` | the backing file |
//! | `data_file` | the external data file |
//! | `vm_state` | the VM state area past the guest range (`qemu-io read -b`) |

mod admin;
pub(crate) mod backing;
pub(crate) mod data_file;
pub(crate) mod extensions;
pub(crate) mod features;
pub(crate) mod header;
pub(crate) mod header_update;
mod open;
pub(crate) mod options;
mod vm_state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use blk_core::{Error, HostFile, ImageOpener, Operation, Result};

use crate::image::backing::Backing;
use crate::image::data_file::DataFile;
use crate::image::features::INCOMPAT_DIRTY;
use crate::image::options::Qcow2CreateOptions;
use crate::metadata::{Geometry, Metadata};
use crate::FORMAT_NAME;

/// State shared by every clone of one open image.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) geometry: Geometry,
    /// The metadata file handle (metadata I/O and the final flush).
    pub(crate) file: HostFile,
    /// The metadata lock: shared by the I/O path's cache hits, exclusive for everything else (see
    /// `metadata`). Sharded: a reader takes the read side of its thread's shard only (its own cache line),
    /// a writer every shard.
    pub(crate) meta: ShardedLock<Metadata>,
    /// Signalled when an in-flight cluster is linked.
    pub(crate) linked: LinkSignal,
    pub(crate) backing: Option<Backing>,
    /// The external data file, when the image has one.
    pub(crate) data_file: Option<DataFile>,
    pub(crate) backing_name: Option<String>,
    pub(crate) backing_format: Option<String>,
    pub(crate) read_only: bool,
    /// Whether this open writes refcounts lazily: it sets the dirty bit before its first refcount change
    /// (see `metadata`) and clears it on close.
    pub(crate) set_dirty: bool,
    /// Whether clusters freed by guest discards and write-zeroes are punched from the file
    /// ([`Qcow2OpenOptions::pass_discard_request`](crate::Qcow2OpenOptions::pass_discard_request)).
    pub(crate) pass_discard_request: bool,
    /// Whether the image looks metadata-preallocated (decided on the first `map`, as QEMU does).
    pub(crate) metadata_preallocated: OnceLock<bool>,
    /// The repair of a dirty image this open made ([`blk_core::ImageAdmin::repaired_on_open`]).
    pub(crate) open_repair: OnceLock<blk_core::CheckReport>,
    /// LUKS encryption of guest data (`crypt_method` 2), unlocked at open when a secret was given.
    pub(crate) encryption: Option<Box<crate::encryption::Encryption>>,
}

/// The exclusive metadata lock, as held by every path that may change metadata.
pub(crate) type MetadataGuard<'a> = ShardedLockWriteGuard<'a, Metadata>;

/// The signal that in-flight clusters were linked (or given back): a counter under its own mutex, which a
/// writer waiting for a cluster reads while it still holds the metadata lock, so that no link between its
/// check and its wait is missed. Lock order: the metadata lock, then this one.
#[derive(Debug, Default)]
pub(crate) struct LinkSignal {
    links: Mutex<u64>,
    changed: Condvar,
}

impl LinkSignal {
    /// Wakes every writer waiting for a cluster: call after taking clusters out of flight.
    pub(crate) fn notify_all(&self) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        *links = links.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Releases `meta`, waits until a link is signalled after this call began, and takes the metadata lock
    /// of `image` again.
    pub(crate) fn wait<'a>(&self, meta: MetadataGuard<'a>, image: &'a Qcow2) -> MetadataGuard<'a> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *links;
        drop(meta);
        let links = self
            .changed
            .wait_while(links, |links| *links == seen)
            .unwrap_or_else(|p| p.into_inner());
        drop(links);
        image.lock_metadata()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let meta = self.meta.get_mut().unwrap_or_else(|p| p.into_inner());
        // Bitmaps not stored stay marked in use: inconsistent, as after a crash.
        let _ = meta.store_bitmaps(&self.file);
        // Everything, deferred refcount blocks included, before the dirty bit of lazy refcounts goes.
        if meta.flush_all(&self.file).is_ok() {
            if self.set_dirty {
                let _ = meta.update_incompatible(&self.file, 0, INCOMPAT_DIRTY);
            }
            // The part grown ahead of need (see `allocator`): nothing past the used end is referenced.
            let _ = meta.cut_to_used_end(&self.file);
        }
    }
}

/// An open QCOW2 image: its [`blk_core::Mapper`] (guest I/O, through [`blk_core::MappedDisk`]) and its
/// [`blk_core::ImageAdmin`].
///
/// Handles from [`blk_core::Mapper::duplicate`] share the metadata (one `Arc`) and each own a descriptor.
#[derive(Debug)]
pub struct Qcow2 {
    pub(crate) shared: Arc<Shared>,
    /// This handle's host files ([`blk_core::Mapper::host_files`]): its descriptor of the image file, and of
    /// the external data file when that is a host file byte for byte (`DATA_HOST_FILE`; see
    /// [`blk_core::DiskFile::identity_file`]), so that data-file pieces are served on the queue's host queue.
    pub(crate) files: Vec<HostFile>,
}

impl Qcow2 {
    /// Creates (overwrites) a qcow2 image at `path`, laid out as `qemu-img create` does. With a backing file
    /// and no size, the size is the backing file's, opened through `opener`.
    pub fn create(
        path: impl AsRef<Path>,
        options: &Qcow2CreateOptions,
        opener: &dyn ImageOpener,
    ) -> Result<()> {
        crate::offline::create::create(path.as_ref(), options, opener)
    }

    /// The image's host file (the shared descriptor: metadata I/O and the final flush).
    pub(crate) fn host_file(&self) -> &HostFile {
        &self.shared.file
    }

    /// The image's fixed layout.
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.shared.geometry
    }

    /// Takes the metadata lock, exclusively.
    pub(crate) fn lock_metadata(&self) -> MetadataGuard<'_> {
        self.shared.meta.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the metadata lock's shared side: for lookups that only hit the caches (see `metadata`).
    pub(crate) fn read_metadata(&self) -> ShardedLockReadGuard<'_, Metadata> {
        self.shared.meta.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This handle's descriptor of the image file.
    pub(crate) fn file(&self) -> &HostFile {
        &self.files[0]
    }

    /// The path of the image file.
    pub fn path(&self) -> &Path {
        self.file().path()
    }

    /// Adds format, path, operation and offset to an error.
    pub(crate) fn context(&self, err: Error, operation: Operation, offset: Option<u64>) -> Error {
        let err = err
            .with_format(FORMAT_NAME)
            .with_path(self.file().path())
            .with_operation(operation);
        match offset {
            Some(o) => err.with_offset(o),
            None => err,
        }
    }

    /// Refuses `operation` (at `offset`) on a read-only open.
    pub(crate) fn writable(&self, operation: Operation, offset: u64) -> Result<()> {
        if self.shared.read_only {
            return Err(self.context(
                blk_core::read_only_error(operation),
                operation,
                Some(offset),
            ));
        }
        Ok(())
    }

    /// Another handle: its own descriptor, the same metadata.
    pub(crate) fn duplicate(&self) -> Result<Qcow2> {
        let files = self
            .files
            .iter()
            .map(HostFile::try_clone)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| self.context(e, Operation::Open, None))?;
        Ok(Qcow2 {
            shared: Arc::clone(&self.shared),
            files,
        })
    }

    /// The backing file's path as the image names it, resolved against the image's directory.
    pub(crate) fn full_backing_filename(&self) -> Option<PathBuf> {
        self.shared
            .backing_name
            .as_ref()
            .map(|n| backing::backing_path(self.file().path(), n))
    }
}
