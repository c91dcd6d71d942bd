//! Offline operations: creating, measuring and resizing images, and the administration that rewrites
//! metadata of an open image while no guest I/O runs (amend, the recorded backing file, emptying for
//! `commit`). Each holds the metadata lock for its whole run and takes no other lock.
//!
//! | module | what it holds |
//! |---|---|
//! | `create` | a new image with qemu-img's layout and preallocation modes |
//! | `measure` | `qemu-img measure -O qcow2`: the size of a new image |
//! | `resize` | [`resize()`](crate::resize): grow or shrink an image that is not in use |
//! | `amend` | `qemu-img amend` (compat, lazy_refcounts) |
//! | `change_backing` | the recorded backing file, as `qemu-img rebase` sets it |
//! | `make_empty` | every cluster unmapped, for `commit` |

pub(crate) mod amend;
pub(crate) mod change_backing;
pub(crate) mod create;
pub(crate) mod make_empty;
pub(crate) mod measure;
pub(crate) mod resize;
