//! A toy I/O backend, as a newcomer would add one following `docs/adding-a-backend.md`: it counts the queues it
//! makes and runs their operations as blk-core's synchronous backend does.
//!
//! ```
//! use blk_core::BackendDescriptor;
//! assert_eq!(blk_toyq::BACKEND.name(), "toyq");
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blk_core::{BackendDescriptor, HostFile, HostQueue, HostQueueBackend, Result, SyncHostBackend};

/// The toy backend's registration.
pub const BACKEND: &dyn BackendDescriptor = &ToyDescriptor;

/// Queues made so far by this process.
pub static QUEUES_MADE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
struct ToyDescriptor;

/// The toy backend.
#[derive(Debug)]
pub struct ToyBackend;

impl HostQueueBackend for ToyBackend {
    fn name(&self) -> &'static str {
        "toyq"
    }

    fn create_queue(&self, files: &[&HostFile], depth: u32) -> Result<Box<dyn HostQueue>> {
        QUEUES_MADE.fetch_add(1, Ordering::Relaxed);
        SyncHostBackend.create_queue(files, depth)
    }
}

impl BackendDescriptor for ToyDescriptor {
    fn name(&self) -> &'static str {
        "toyq"
    }

    fn probe(&self) -> Result<Arc<dyn HostQueueBackend>> {
        Ok(Arc::new(ToyBackend))
    }
}
