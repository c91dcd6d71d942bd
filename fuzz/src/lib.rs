//! Fuzz harnesses: each takes arbitrary bytes and drives blk the way a hostile image would.
//!
//! One module a target. The cargo-fuzz targets in `fuzz_targets/` call these, and each format crate's
//! `tests/fuzz_corpus.rs` includes its module (by path) to replay every input of `corpus/<target>/` as a plain
//! test in CI. The write-path targets (`write_qcow2`, `write_vhd`, `write_vhdx`, module [`write_path`]) create
//! their image themselves; `crates/blk-factory/tests/write_fuzz_corpus.rs` replays their corpora.

pub mod luks_header;
pub mod open_image;
pub mod qcow2;
pub mod qcow2_bitmaps;
pub mod vhd;
pub mod vhdx;
pub mod vhost_user_blk_request;
pub mod write_path;

pub use open_image::open_image;
