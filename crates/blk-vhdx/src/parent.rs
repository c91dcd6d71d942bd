//! A differencing image's parent: found through the parent locator, opened through the image opener, and
//! checked against the child's parent linkage.

use std::path::{Path, PathBuf};

use blk_core::{
    resolve_relative_to, DiskFile, Error, ErrorKind, HostFile, HostOpenOptions, LockMode,
    NamedImage, NamedImageRole, Result,
};

use crate::error::corrupt;
use crate::guid::Guid;
use crate::header::Headers;
use crate::metadata::DiskParameters;
use crate::options::VhdxOpenOptions;
use crate::parent_locator::host_relative_path;
use crate::FORMAT_NAME;

/// A differencing image's parent.
#[derive(Debug)]
pub(crate) struct Parent {
    /// The open parent.
    pub disk: Box<dyn DiskFile>,
    /// The name recorded in the locator (host separators).
    pub recorded: String,
    /// The resolved path.
    pub path: PathBuf,
}

/// Reads the data write GUID of the VHDX file at `path` from its header, read-only and without a lock.
pub(crate) fn read_data_write_guid(path: &Path) -> Result<Guid> {
    let host = HostFile::open(
        path,
        HostOpenOptions {
            read_only: true,
            direct: false,
            lock: LockMode::None,
        },
    )?;
    Ok(Headers::read(&host)?.current.data_write_guid())
}

/// Opens the parent named by the locator: the paths in the spec's order (relative, volume, absolute; Windows
/// paths that are not host paths are skipped), through the opener, then checks its identity.
pub(crate) fn open_parent(
    child: &Path,
    params: &DiskParameters,
    options: &VhdxOpenOptions,
) -> Result<Parent> {
    let Some(locator) = &params.parent_locator else {
        return Err(corrupt(0, "no parent locator"));
    };
    let mut last_error = None;
    for (key, value) in locator.paths() {
        let recorded = host_relative_path(value);
        if key != "relative_path" && !recorded.starts_with('/') {
            continue;
        }
        let path = resolve_relative_to(child, Path::new(&recorded));
        let request = NamedImage {
            path: path.clone(),
            format: Some(FORMAT_NAME.to_string()),
            role: NamedImageRole::Parent,
            read_only: true,
            depth: options.depth + 1,
        };
        let disk = match options.opener.open_named(&request) {
            Ok(disk) => disk,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                last_error = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let guid = read_data_write_guid(&path)?;
        let linked = [locator.parent_linkage(), locator.parent_linkage2()];
        if !linked.contains(&Some(guid)) {
            return Err(corrupt(
                0,
                format!("the parent {} has data write GUID {guid:?}, not the {} the child was made from", path.display(), locator.get("parent_linkage").unwrap_or("")),
            ));
        }
        if disk.topology().logical_block_size != params.logical_sector_size {
            return Err(corrupt(
                0,
                "the parent's logical sector size differs from the child's",
            ));
        }
        return Ok(Parent {
            disk,
            recorded,
            path,
        });
    }
    Err(last_error.unwrap_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "no parent path in the locator is usable on this host",
        )
    }))
}
