//! `blk vhost-user-blk`: serves an image to a VMM over a vhost-user socket until SIGTERM or SIGINT (options after
//! qemu-storage-daemon's vhost-user-blk export and Cloud Hypervisor's `vhost_user_block`). An encrypted QCOW2
//! is served with its secret from `--object secret,...` and `--image-opts ...,encrypt.key-secret=ID`, as
//! qemu-storage-daemon's `--object` and `--blockdev` give it.

use std::path::PathBuf;

use blk_core::Result;
use blk_vhost_user::{stop_on_signals, BlkOptions, StopHandle, VhostUserBlk};
use clap::Args;

use super::{open_disk, parse_cache, OpenSpec};

/// Arguments of `blk vhost-user-blk`.
#[derive(Debug, Args)]
pub struct VhostUserBlkArgs {
    /// `--image-opts`: the image is a qemu option string (`driver=qcow2,file.filename=...`, with runtime
    /// options and `encrypt.key-secret`).
    #[command(flatten)]
    pub image_opts: super::image_opts::ImageOptsArgs,
    /// `--object`: secrets the image may name (an encrypted QCOW2's `encrypt.key-secret`).
    #[command(flatten)]
    pub objects: super::objects::ObjectArgs,
    /// The vhost-user socket to listen on (a stale file there is replaced).
    #[arg(long = "socket", value_name = "PATH")]
    pub socket: PathBuf,
    /// Image format (probed when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Export the image read-only (`VIRTIO_BLK_F_RO`).
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// Request queues.
    #[arg(long = "num-queues", default_value_t = 1, value_name = "N")]
    pub num_queues: u16,
    /// The largest virtqueue a frontend may configure (a power of two).
    #[arg(long = "queue-size", default_value_t = 256, value_name = "N")]
    pub queue_size: u16,
    /// The serial number the guest reads (GET_ID; at most 20 bytes are sent).
    #[arg(long = "serial", default_value = "", value_name = "S")]
    pub serial: String,
    /// Cache mode: writeback (default), writethrough, none, directsync or unsafe.
    #[arg(
        short = 't',
        long = "cache",
        default_value = "writeback",
        value_name = "CACHE"
    )]
    pub cache: String,
    /// The logical block size the guest sees (512 to 65536; default: the image's).
    #[arg(long = "logical-block-size", value_name = "N")]
    pub logical_block_size: Option<u32>,
    /// How long an idle queue thread polls for new requests before it sleeps, in nanoseconds (adaptive, as
    /// QEMU's iothread `poll-max-ns`; 0: never poll).
    #[arg(long = "poll-max-ns", default_value_t = 32768, value_name = "NS")]
    pub poll_max_ns: u64,
    /// The image.
    pub filename: PathBuf,
}

/// Runs `blk vhost-user-blk`: 0 after a clean stop.
pub fn run(args: VhostUserBlkArgs) -> Result<u8> {
    let direct = parse_cache(&args.cache)?;
    let writeback = !matches!(args.cache.as_str(), "writethrough" | "directsync");
    let spec = OpenSpec {
        format: args.format.as_deref(),
        read_only: args.read_only,
        direct,
        ..OpenSpec::default()
    };
    let disk = open_disk(&args.filename, spec)?;
    let options = BlkOptions {
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        serial: args.serial,
        logical_block_size: args.logical_block_size,
        writeback,
        poll_max: std::time::Duration::from_nanos(args.poll_max_ns),
    };
    let device = VhostUserBlk::new(disk, &options)?;
    let stop = StopHandle::new()?;
    stop_on_signals(&stop)?;
    device.serve(&args.socket, &stop)?;
    Ok(0)
}
