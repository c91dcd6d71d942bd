//! A vhost-user-blk backend: serves a blk disk image (raw, QCOW2, VHD, VHDX) to a VMM's guest over a
//! vhost-user socket, as qemu-storage-daemon's vhost-user-blk export does.
//!
//! Built on the rust-vmm crates (`vhost`, `vhost-user-backend`, `virtio-queue`) and blk-factory's public API
//! alone, with no `unsafe` of its own. One worker thread per virtqueue, each on its own clone of the disk;
//! `EVENT_IDX`, `FLUSH`, `DISCARD`, `WRITE_ZEROES`, `RO`, `BLK_SIZE`, `TOPOLOGY`, `SEG_MAX`, `SIZE_MAX`,
//! `CONFIG_WCE`, `MQ` and `GET_ID`; dirty-page logging (`LOG_SHMFD`) for migration; a frontend may disconnect
//! and a new one connect; [`StopHandle::stop`] (SIGTERM and SIGINT with [`stop_on_signals`]) serves what the
//! rings hold, flushes and returns.
//!
//! Requests are untrusted: [`request`] checks every chain (addresses inside guest memory, directions, lengths,
//! chain length, range inside the disk) and answers a bad one with an error status, never touching the disk.
//!
//! | module | what it holds |
//! |---|---|
//! | [`request`] | the virtio-blk request parser (the fuzz target's subject) |
//! | [`chain`] | one descriptor chain walked in guest memory, direct and indirect |
//! | [`config`] | feature bits and the config space |
//! | `server` | [`BlkOptions`], [`VhostUserBlk`], [`StopHandle`], [`stop_on_signals`] |
//! | `backend` | the `VhostUserBackend` of one connection |
//! | `queue` | one virtqueue's worker |
//! | `poll` | when a queue thread polls its ring instead of sleeping, and when the driver's kicks are off |
//!
//! # Example
//!
//! ```
//! use blk_factory::{create_disk_file, open_disk_file, CreateParams, DiskFileParams, ImageFormat};
//! use blk_vhost_user::{BlkOptions, StopHandle, VhostUserBlk};
//!
//! # fn main() -> blk_factory::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let image = dir.path().join("disk.qcow2");
//! create_disk_file(&CreateParams::new(&image, ImageFormat::by_name("qcow2").unwrap(), Some(64 << 20)))?;
//!
//! let disk = open_disk_file(&DiskFileParams::new(&image))?;
//! let options = BlkOptions { num_queues: 2, serial: "blk-0".into(), ..BlkOptions::default() };
//! let device = VhostUserBlk::new(disk, &options)?;
//! assert_eq!(device.config().capacity_sectors, (64 << 20) / 512);
//!
//! // Serve until stopped (a VMM connects to the socket meanwhile; `blk vhost-user-blk` stops on SIGTERM).
//! let stop = StopHandle::new()?;
//! let socket = dir.path().join("vhost.sock");
//! std::thread::scope(|s| {
//!     let server = s.spawn(|| device.serve(&socket, &stop));
//!     while !socket.exists() {
//!         std::thread::sleep(std::time::Duration::from_millis(5));
//!     }
//!     stop.stop();
//!     server.join().unwrap()
//! })?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod backend;
pub mod chain;
pub mod config;
mod poll;
mod queue;
pub mod request;
mod server;

pub use backend::{AtomicGuestMemory, GuestMemory, Vring};
pub use config::BlkConfig;
pub use server::{
    stop_on_signals, BlkOptions, StopHandle, VhostUserBlk, DEFAULT_POLL_MAX, MAX_DATA_BYTES,
    MAX_QUEUES, MAX_QUEUE_SIZE, MAX_RANGES, MAX_RANGE_SECTORS, SEG_MAX, SIZE_MAX,
};
