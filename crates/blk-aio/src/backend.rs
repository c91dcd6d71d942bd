//! [`AioBackend`]: makes [`AioQueue`]s, after checking that the kernel has native AIO at all; [`BACKEND`], its
//! registration with the factory.

use std::sync::Arc;

use blk_core::{BackendDescriptor, HostFile, HostQueue, HostQueueBackend, Result};

use crate::context::AioContext;
use crate::queue::AioQueue;

/// The Linux native AIO backend: [`HostQueueBackend::create_queue`] gives an [`AioQueue`].
#[derive(Debug, Clone, Copy)]
pub struct AioBackend {
    _probed: (),
}

impl AioBackend {
    /// Checks that an AIO context can be made (a one-event `io_setup`, then `io_destroy`).
    ///
    /// Fails with [`ErrorKind::Unsupported`](blk_core::ErrorKind::Unsupported) ("Linux AIO is not available:
    /// ...") when the kernel refuses, so the factory falls back to the synchronous backend.
    pub fn new() -> Result<AioBackend> {
        AioContext::new(1).map_err(crate::queue::unavailable)?;
        Ok(AioBackend { _probed: () })
    }
}

impl HostQueueBackend for AioBackend {
    fn name(&self) -> &'static str {
        crate::BACKEND_NAME
    }

    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        Ok(Box::new(AioQueue::new(files, depth)?))
    }
}

/// The Linux AIO backend's registration: `aio`, also `native` (qemu-img's `-i native`). Its probe is
/// [`AioBackend::new`].
pub const BACKEND: &dyn BackendDescriptor = &AioDescriptor;

/// What [`BACKEND`] points at.
#[derive(Debug)]
struct AioDescriptor;

impl BackendDescriptor for AioDescriptor {
    fn name(&self) -> &'static str {
        crate::BACKEND_NAME
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["native"]
    }

    fn probe(&self) -> Result<Arc<dyn HostQueueBackend>> {
        Ok(Arc::new(AioBackend::new()?))
    }
}
