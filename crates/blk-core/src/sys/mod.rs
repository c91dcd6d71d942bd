//! Platform code: the few raw system calls the host-file layer needs, each behind a safe function.
//! With `buffer.rs`, this is the only place in blk-core that calls into the kernel or handles raw pointers.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
