//! What the tests of blk's crates share, instead of a copy per crate: driving `AsyncIo` queues and executing a
//! `Mapper`'s answers, running QEMU's tools and scripted writes, temporary directories on the target's file
//! system, memory ending in a guard page, fuzz corpus replays. A dev-dependency only (`publish = false`); it
//! depends on `blk-core` alone, so formats, backends and `blk-core`'s own integration tests may all use it.
//!
//! ```
//! use blk_test_support::{pieces, qemu_io_commands, tempdir_in, GuardedMapping, REFERENCE_WRITES};
//!
//! // A whole-disk read in requests of mixed sizes covers the disk once.
//! let all = pieces(3 << 20);
//! assert_eq!(all.iter().map(|&(_, len)| len).sum::<u64>(), 3 << 20);
//! // The reference script as qemu-io runs it.
//! assert_eq!(qemu_io_commands(&REFERENCE_WRITES[..1]), ["write -P 0xa7 0 131072"]);
//! // Integration tests use `target_tempdir!("prefix")`, inside Cargo's CARGO_TARGET_TMPDIR.
//! let dir = tempdir_in(std::env::temp_dir(), "blk-test-support-example");
//! assert!(dir.path().is_dir());
//! // One page to read into, then a page the kernel refuses to write.
//! let memory = GuardedMapping::new(1);
//! assert!(memory.accessible().iter().all(|&b| b == 0));
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | [`async_queue`] | requests, submitting and reaping batches, whole-disk reads and batched writes through an `AsyncIo` |
//! | [`mapper_execution`] | [`try_read_via_mapper`]/[`try_write_via_mapper`] (and panicking [`read_via_mapper`]/[`write_via_mapper`]): a `Mapper`'s answers executed directly, [`Mapped`] |
//! | [`qemu`] | running `qemu-img`/`qemu-io`: [`run`], [`run_status`], [`run_output`], [`qemu_io`] ([`qemu_io_args`]), [`qemu_raw`], [`qemu_compare`] |
//! | [`write_step`] | [`WriteStep`]: scripted writes for qemu-io and a `DiskFile`, [`REFERENCE_WRITES`] |
//! | [`fault_injection`] | [`FaultInjector`] (rules: EIO/ENOSPC/short at the nth read, write, flush, allocation) as a `HostFile` hook, [`FaultyBackend`] wrapping a backend's queues |
//! | [`disk_contents`] | [`read_all`], [`full_map`], [`assert_same_bytes`], deterministic [`pattern`] bytes |
//! | [`host_options`] | the `HostOpenOptions` tests open with: [`ro`], [`rw`], [`direct`], [`unlocked`] |
//! | [`temp_dir`] | [`tempdir_in`] and [`target_tempdir!`] |
//! | [`spawn_lock`] | [`serial`]: one lock for tests that spawn processes while holding images open |
//! | [`host_queue`] | testing a backend: [`unless_unsupported`] (its probe), [`host_read`]/[`host_write`], [`take_counting_pending`] |
//! | [`guarded_mapping`] | [`GuardedMapping`]: pages followed by a guard page, [`page_size`] |
//! | [`probe`] | [`probe_file`]: a format descriptor's probe on a file |
//! | [`fuzz_corpus`] | [`replay_corpus`]: a fuzz corpus through its harness |

pub mod async_queue;
pub mod disk_contents;
pub mod fault_injection;
pub mod fuzz_corpus;
pub mod guarded_mapping;
pub mod host_options;
pub mod host_queue;
pub mod mapper_execution;
pub mod probe;
pub mod qemu;
pub mod spawn_lock;
pub mod temp_dir;
pub mod write_step;

pub use async_queue::{
    arena, assert_queue_write_reads_back, complete, pieces, read_request, read_through, reap,
    write_request, write_through, DEPTH, SIZES,
};
pub use disk_contents::{assert_same_bytes, full_map, pattern, read_all};
pub use fault_injection::{FaultInjector, FaultRule, FaultyBackend, EIO, ENOSPC};
pub use fuzz_corpus::{corpus_dir, replay_corpus};
pub use guarded_mapping::{page_size, GuardedMapping};
pub use host_options::{direct, ro, rw, unlocked};
pub use host_queue::{
    assert_pending_counts_the_backlog, host_read, host_write, take_counting_pending,
    unless_unsupported,
};
pub use mapper_execution::{
    read_via_mapper, try_read_via_mapper, try_write_via_mapper, write_via_mapper, Mapped,
};
pub use probe::{probe_file, PROBE_HEAD};
pub use qemu::{
    have_qemu, path_str, qemu_commands, qemu_compare, qemu_io, qemu_io_args, qemu_raw, run,
    run_output, run_status,
};
pub use spawn_lock::serial;
pub use temp_dir::tempdir_in;
pub use write_step::{model, qemu_io_commands, replay, WriteStep, REFERENCE_WRITES};
