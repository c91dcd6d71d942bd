//! Platform code: the few raw system calls the host-file layer needs, each behind a safe function.
//! This is the only place in blk-core, with `buffer.rs`, that contains `unsafe`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
