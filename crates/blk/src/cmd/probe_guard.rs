//! QEMU's guard for images whose format was probed as raw: a write that would make the first sector look like
//! another format's image is refused (`Operation not permitted`), so a guest cannot turn its raw disk into,
//! say, a QCOW2 image naming a host file as backing file the next time the image is probed. qemu-io warns
//! about this on open.

use blk_core::DiskFile;

/// The bytes QEMU probes a write to the start of a probed raw image with.
const SECTOR: usize = 512;

/// QEMU's warning when it probed an image as raw.
pub fn warn_probed_raw(path: &std::path::Path) {
    eprintln!(
        "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will \
         be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.",
        path.display()
    );
}

/// Whether the first sector `head` is recognised by one of QEMU's format probes (those that look at the
/// first sector only).
pub fn looks_like_image(head: &[u8]) -> bool {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let be32 = |offset: usize| {
        head.get(offset..offset + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le32 = |offset: usize| {
        head.get(offset..offset + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // QCOW (version 1) and QCOW2 (version 2 and later).
    (at(0, b"QFI\xfb") && be32(4).is_some_and(|v| v >= 1))
        || at(0, b"QED\0")
        || at(0, b"vhdxfile")
        || at(0, b"conectix")
        || at(0, b"KDMV")
        || at(0, b"COWD")
        || (at(0, b"LUKS\xba\xbe") && matches!(head.get(6..8), Some([0, 1]) | Some([0, 2])))
        || ((at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt")) && le32(16) == Some(2))
        || (le32(0x40) == Some(0xbeda_107f) && le32(0x44) == Some(0x0001_0001))
        || at(0, b"Bochs Virtual HD Image")
        || at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n")
}

/// Whether writing `data(i)` for the bytes `offset..offset + len` of `disk` leaves a first sector that probes
/// as another format; `data` gives the byte written at guest offset `i`.
pub fn write_changes_format(
    disk: &dyn DiskFile,
    offset: u64,
    len: u64,
    data: impl Fn(u64) -> u8,
) -> blk_core::Result<bool> {
    if offset >= SECTOR as u64 || len == 0 {
        return Ok(false);
    }
    let head_len = (SECTOR as u64).min(disk.logical_size());
    let mut head = vec![0u8; head_len as usize];
    disk.read_exact_at(0, &mut head)?;
    let end = offset.saturating_add(len).min(head_len);
    for i in offset..end {
        head[i as usize] = data(i);
    }
    Ok(looks_like_image(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert!(looks_like_image(b"QFI\xfb\0\0\0\x03"));
        assert!(!looks_like_image(b"QFI\xfb\0\0\0\0"));
        assert!(looks_like_image(b"conectix"));
        assert!(looks_like_image(b"vhdxfile"));
        assert!(!looks_like_image(&[0xcd; 512]));
        assert!(!looks_like_image(b""));
    }
}
