//! [`AioBackend`]: makes [`AioQueue`]s, after checking that the kernel has native AIO at all.

use blk_core::{HostFile, HostQueue, HostQueueBackend, Result};

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
