//! The images the mutants come from: qemu-img makes one of every format and feature, small, with data at a
//! few places (and, for compression, compressed clusters).

use std::path::Path;
use std::process::Command;

use super::mutation::Layout;

/// One base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// Its name (the file is `NAME.img` in the bases directory).
    pub name: &'static str,
    /// The format, as qemu-img names it.
    pub format: &'static str,
    /// `qemu-img create -o` options.
    pub options: &'static str,
    /// Where its metadata is and which checksums it has.
    pub layout: Layout,
    /// How it is made beyond `create` and a few writes.
    pub extra: Extra,
}

/// What a base has beyond a plain image with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Nothing.
    None,
    /// Its data written compressed (`qemu-img convert -c`).
    Compressed,
    /// An internal snapshot, then more writes.
    Snapshot,
    /// A persistent dirty bitmap.
    Bitmap,
    /// A backing file, `base.qcow2`, next to it.
    Backing,
}

/// Virtual size of the bases.
pub const SIZE: &str = "4M";
/// The backing file's name, next to the image.
pub const BACKING: &str = "base.qcow2";

const fn base(
    name: &'static str,
    format: &'static str,
    options: &'static str,
    layout: Layout,
    extra: Extra,
) -> Base {
    Base {
        name,
        format,
        options,
        layout,
        extra,
    }
}

/// Every base.
pub const BASES: &[Base] = &[
    base(
        "qcow2-v2",
        "qcow2",
        "compat=0.10",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-v3",
        "qcow2",
        "compat=1.1",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-small-clusters",
        "qcow2",
        "cluster_size=4096,refcount_bits=1",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-refcount64",
        "qcow2",
        "cluster_size=8192,refcount_bits=64",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-lazy",
        "qcow2",
        "lazy_refcounts=on",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-extl2",
        "qcow2",
        "extended_l2=on,cluster_size=32768",
        Layout::Qcow2,
        Extra::None,
    ),
    base(
        "qcow2-deflate",
        "qcow2",
        "compression_type=zlib",
        Layout::Qcow2,
        Extra::Compressed,
    ),
    base(
        "qcow2-zstd",
        "qcow2",
        "compression_type=zstd",
        Layout::Qcow2,
        Extra::Compressed,
    ),
    base(
        "qcow2-snapshot",
        "qcow2",
        "compat=1.1",
        Layout::Qcow2,
        Extra::Snapshot,
    ),
    base(
        "qcow2-bitmap",
        "qcow2",
        "compat=1.1",
        Layout::Qcow2,
        Extra::Bitmap,
    ),
    base(
        "qcow2-backing",
        "qcow2",
        "compat=1.1",
        Layout::Qcow2,
        Extra::Backing,
    ),
    base(
        "vhd-dynamic",
        "vpc",
        "subformat=dynamic",
        Layout::Vhd,
        Extra::None,
    ),
    base(
        "vhd-fixed",
        "vpc",
        "subformat=fixed",
        Layout::Vhd,
        Extra::None,
    ),
    base(
        "vhdx-dynamic",
        "vhdx",
        "subformat=dynamic,block_size=1M",
        Layout::Vhdx,
        Extra::None,
    ),
    base(
        "vhdx-zero-blocks-off",
        "vhdx",
        "subformat=dynamic,block_size=1M,block_state_zero=off",
        Layout::Vhdx,
        Extra::None,
    ),
    base(
        "vhdx-fixed",
        "vhdx",
        "subformat=fixed",
        Layout::Vhdx,
        Extra::None,
    ),
];

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The writes every base gets (qemu-io commands).
const WRITES: [&str; 4] = [
    "write -P 0x11 0 64k",
    "write -P 0x22 1M 192k",
    "write -P 0x33 3M 8k",
    "write -z 2M 64k",
];

/// Makes `base` as `dir/NAME.img` (and `dir/base.qcow2` when it has a backing file).
pub fn make(dir: &Path, base: &Base) -> Result<(), String> {
    let path = dir.join(format!("{}.img", base.name));
    let p = path.to_string_lossy().into_owned();
    let io = |file: &str, commands: &[&str]| {
        let mut args = vec!["-f", base.format];
        for c in commands {
            args.extend(["-c", c]);
        }
        args.push(file);
        run("qemu-io", &args)
    };
    match base.extra {
        Extra::Compressed => {
            let raw = dir.join(format!("{}.raw", base.name));
            let r = raw.to_string_lossy().into_owned();
            run("qemu-img", &["create", "-q", "-f", "raw", &r, SIZE])?;
            let mut args = vec!["-f", "raw"];
            for c in WRITES {
                args.extend(["-c", c]);
            }
            args.push(&r);
            run("qemu-io", &args)?;
            run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    base.options,
                    &r,
                    &p,
                ],
            )?;
            let _ = std::fs::remove_file(&raw);
            return Ok(());
        }
        Extra::Backing => {
            let b = dir.join(BACKING).to_string_lossy().into_owned();
            run("qemu-img", &["create", "-q", "-f", "qcow2", &b, SIZE])?;
            io(&b, &["write -P 0x44 0 1M", "write -P 0x55 3M 1M"])?;
            run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    base.options,
                    "-b",
                    BACKING,
                    "-F",
                    "qcow2",
                    &p,
                ],
            )?;
        }
        _ => run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                base.format,
                "-o",
                base.options,
                &p,
                SIZE,
            ],
        )?,
    }
    io(&p, &WRITES)?;
    match base.extra {
        Extra::Snapshot => {
            run("qemu-img", &["snapshot", "-c", "snap1", &p])?;
            io(&p, &["write -P 0x66 512k 64k"])?;
        }
        Extra::Bitmap => run("qemu-img", &["bitmap", "--add", &p, "bitmap0"])?,
        _ => {}
    }
    Ok(())
}
