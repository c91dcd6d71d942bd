//! The commands that look at the open image: `length`, `info`, `map`, `alloc`, with qemu-io's lines.
//!
//! "Allocated" is qemu's `bdrv_is_allocated`: the image itself answers for the range (data or zeros it
//! stores), not a backing file; formats without backing files (raw, VHD, VHDX) count every byte allocated.

use blk_core::{ExtentKind, InfoValue};

use super::getopt::parse_num;
use super::image::Image;
use super::report::cvtstr;
use super::{Failure, Outcome};
use crate::cmd::map_extent;
use crate::output::{dump_human_map, map_from_info};

/// `length`: the virtual size, as qemu-io's `cvtstr` writes it.
pub fn length(image: &Image) -> Outcome {
    println!("{}", cvtstr(image.disk().logical_size() as f64));
    Ok(())
}

/// Where qcow2 keeps the VM state: past the guest range the L1 table covers (qemu's `qcow2_vm_state_offset`).
fn vm_state_offset(image: &Image, extended_l2: bool) -> u64 {
    if image.format != "qcow2" || image.cluster_size == 0 {
        return 0;
    }
    let entry = if extended_l2 { 16 } else { 8 };
    let span = image
        .cluster_size
        .saturating_mul(image.cluster_size / entry);
    if span == 0 {
        return 0;
    }
    image
        .disk()
        .logical_size()
        .div_ceil(span)
        .saturating_mul(span)
}

/// `info`: format name, cluster size, VM state offset and the format-specific information.
pub fn info(image: &Image) -> Outcome {
    let info = image
        .opened
        .admin
        .image_info()
        .map_err(|e| Failure::Io("info", e))?;
    let specific = info.format_specific.as_ref().map(|(_, data)| data);
    let extended_l2 = specific.is_some_and(|data| {
        data.iter()
            .any(|(k, v)| k == "extended-l2" && matches!(v, InfoValue::Bool(true)))
    });
    println!("format name: {}", image.format);
    println!("cluster size: {}", cvtstr(image.cluster_size as f64));
    println!(
        "vm state offset: {}",
        cvtstr(vm_state_offset(image, extended_l2) as f64)
    );
    if let Some(data) = specific.filter(|data| !data.is_empty()) {
        let mut out = String::from("Format specific information:\n");
        dump_human_map(&map_from_info(data), 1, &mut out);
        print!("{out}");
    }
    Ok(())
}

/// The first run at `offset` (at most `len` bytes) and whether the image allocates it.
fn allocation(image: &Image, offset: u64, len: u64) -> Result<(u64, bool), Failure> {
    if !image.has_unallocated() {
        return Ok((len, true));
    }
    let extent = map_extent(image.disk(), &image.path, offset, len)
        .map_err(|e| Failure::Io("is_allocated", e))?;
    let allocated = extent.depth == 0 && extent.kind != ExtentKind::Unallocated;
    Ok((extent.length, allocated))
}

/// `map`: the runs of allocated and unallocated bytes.
pub fn map(image: &Image) -> Outcome {
    let size = image.disk().logical_size();
    let mut offset = 0;
    while offset < size {
        let (mut run, allocated) = allocation(image, offset, size - offset)?;
        while offset + run < size {
            let (next, same) = allocation(image, offset + run, size - offset - run)?;
            if same != allocated {
                break;
            }
            run += next;
        }
        let status = if allocated {
            "    allocated"
        } else {
            "not allocated"
        };
        println!(
            "{} (0x{run:x}) bytes {status} at offset {} (0x{offset:x})",
            cvtstr(run as f64),
            cvtstr(offset as f64)
        );
        offset += run;
    }
    Ok(())
}

/// `alloc offset [count]`: how many of `count` bytes (default 512, up to the end of the image) are allocated.
pub fn alloc(image: &Image, args: &[&str]) -> Outcome {
    let start = parse_num(args[0])?;
    let count = match args.get(1) {
        Some(text) => parse_num(text)?,
        None => 512,
    };
    let size = image.disk().logical_size();
    let count = count.min(size.saturating_sub(start));
    let mut allocated = 0;
    let mut offset = start;
    while offset < start + count {
        let (run, here) = allocation(image, offset, start + count - offset)?;
        if here {
            allocated += run;
        }
        offset += run;
    }
    println!(
        "{allocated}/{count} bytes allocated at offset {}",
        cvtstr(start as f64)
    );
    Ok(())
}
