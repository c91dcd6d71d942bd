//! `blk demo`: a tour of the tool on a temporary 64 MiB raw image and the QCOW2, VHD and VHDX images made from it. Every step runs the real subcommand
//! through the same command-line entry point a user would, and is printed as the command it runs. The demo
//! works inside its temporary directory (the working directory is restored afterwards), so paths print short.

use std::ffi::OsString;

use blk_core::{Error, ErrorKind, Result};
use clap::Args;

use super::run_cli;

/// Arguments of `blk demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary directory (its path is printed) instead of deleting it.
    #[arg(long = "keep")]
    pub keep: bool,
}

/// Runs one step: prints it shell-style, runs it, and checks its exit code.
fn step(args: &[&str], expect: u8) -> Result<()> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect();
    println!("\n$ blk {}", shown.join(" "));
    let argv = std::iter::once("blk")
        .chain(args.iter().copied())
        .map(OsString::from);
    let code = run_cli(argv);
    if code != expect {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "demo step `blk {}` exited with {code}, expected {expect}",
                shown.join(" ")
            ),
        ));
    }
    Ok(())
}

/// Runs `blk demo`.
pub fn run(args: DemoArgs) -> Result<u8> {
    let tmp = tempfile::Builder::new().prefix("blk-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    println!("blk demo: working in {}", dir.display());
    let steps: &[(&[&str], u8)] = &[
        (&["create", "-f", "raw", "disk.raw", "64M"], 0),
        (
            &[
                "io",
                "-f",
                "raw",
                "-c",
                "write -P 0xa7 0 1M",
                "-c",
                "write -P 0x5c 8M 64k",
                "-c",
                "write -z 9M 1M",
                "-c",
                "write -P 0x3e 33M 4k",
                "-c",
                "discard 8M 32k",
                "-c",
                "write -P 0xf0 60M 512k",
                "-c",
                "write -P 0 16M 4M",
                "-c",
                "flush",
                "disk.raw",
            ],
            0,
        ),
        (
            &[
                "io",
                "-f",
                "raw",
                "-r",
                "-c",
                "read -P 0xa7 0 1M",
                "disk.raw",
            ],
            0,
        ),
        (
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                "-S",
                "4k",
                "disk.raw",
                "sparse.raw",
            ],
            0,
        ),
        (
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                "disk.raw",
                "sparse.raw",
            ],
            0,
        ),
        (&["info", "disk.raw"], 0),
        (&["info", "sparse.raw"], 0),
        (&["map", "disk.raw"], 0),
        (&["map", "sparse.raw"], 0),
        // QCOW2: a compressed copy, an overlay on it, writes into the overlay, and the chain inspected.
        (
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
                "disk.raw",
                "base.qcow2",
            ],
            0,
        ),
        (
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "overlay.qcow2",
            ],
            0,
        ),
        (
            &[
                "io",
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 4k 8k",
                "-c",
                "write -z 0 1M",
                "-c",
                "discard 60M 512k",
                "overlay.qcow2",
            ],
            0,
        ),
        (
            &[
                "io",
                "-f",
                "qcow2",
                "-r",
                "-c",
                "read -P 0x5c 8224k 32k",
                "-c",
                "read -P 0 0 1M",
                "overlay.qcow2",
            ],
            0,
        ),
        (&["info", "--backing-chain", "overlay.qcow2"], 0),
        (&["map", "--output=json", "overlay.qcow2"], 0),
        (&["check", "overlay.qcow2"], 0),
        // Rebase the overlay onto the raw disk (same data: nothing to copy), grow it, snapshot it, check it again.
        (
            &["rebase", "-b", "disk.raw", "-F", "raw", "overlay.qcow2"],
            0,
        ),
        (&["resize", "overlay.qcow2", "+64M"], 0),
        (&["snapshot", "-c", "after-resize", "overlay.qcow2"], 0),
        (&["snapshot", "-l", "overlay.qcow2"], 0),
        (&["check", "overlay.qcow2"], 0),
        (&["info", "overlay.qcow2"], 0),
        // The same guest data as VHD and VHDX, compared with the source.
        (
            &["convert", "-f", "raw", "-O", "vpc", "disk.raw", "disk.vhd"],
            0,
        ),
        (
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "disk.raw",
                "disk.vhdx",
            ],
            0,
        ),
        (&["compare", "disk.raw", "disk.vhd"], 0),
        (&["compare", "disk.raw", "disk.vhdx"], 0),
        (&["compare", "disk.raw", "base.qcow2"], 0),
    ];
    let previous = std::env::current_dir()?;
    std::env::set_current_dir(&dir)?;
    let result = steps
        .iter()
        .try_for_each(|(args, expect)| step(args, *expect));
    std::env::set_current_dir(previous)?;
    result?;
    if args.keep {
        let kept = tmp.keep();
        println!(
            "\nblk demo: done; all steps succeeded. Images kept in {}",
            kept.display()
        );
    } else {
        println!("\nblk demo: done; all steps succeeded (the copies are identical and sparse).");
    }
    Ok(0)
}
