//! The blk workspace's task runner, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! | command | module | what it does |
//! |---|---|---|
//! | `cargo xtask ci` | [`ci`] | fmt, clippy, tests, docs, `blk-factory` feature builds, dependency check, parity suite |
//! | `cargo xtask deps` | [`deps`] | the dependency-direction check alone |
//! | `cargo xtask bench` | [`bench`](mod@bench), [`bench_compare`], [`bench_scenarios`], [`bench_images`], [`bench_report`], [`bench_vhost_user`], [`bench_scaling`], [`bench_tmpfs`], [`bench_vhd_vhdx`] | the benchmark suites: criterion, blk bench vs qemu-img bench, queue scaling, O_DIRECT on a tmpfs, VHD and VHDX |
//! | `cargo xtask fuzz` | [`fuzz`] | every cargo-fuzz target under `fuzz/` for a bounded time |
//! | `cargo xtask crash` | [`crash`], [`campaign`] | a writer killed at random points, then every image checked |
//! | `cargo xtask mutate` | [`mutate`], [`campaign`] | seeded mutants of qemu-img-made images through blk's commands |
//! | `cargo xtask guest` | [`guest`] | a Linux guest under QEMU does I/O through `blk vhost-user-blk` |
//! | `cargo xtask parity` | [`parity`] | the differential parity suite: the table's command lines run with qemu-img/qemu-io and with blk on twin images |
//!
//! Every fallible function returns `Result<_, String>`: the message is printed as is by `main`, which exits
//! with status 1.

pub mod bench;
pub mod bench_compare;
pub mod bench_images;
pub mod bench_report;
pub mod bench_scaling;
pub mod bench_scenarios;
pub mod bench_tmpfs;
pub mod bench_vhd_vhdx;
pub mod bench_vhost_user;
pub mod campaign;
pub mod ci;
pub mod cmd;
pub mod crash;
pub mod debian;
pub mod deps;
pub mod fuzz;
pub mod guest;
pub mod mutate;
pub mod parity;
