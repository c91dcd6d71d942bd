//! LUKS-encrypted QCOW2 images (`encrypt.format=luks`) against QEMU: images qemu-img made and qemu-io wrote
//! (ciphers, modes, IV generators, hashes, cluster sizes, a backing file) read back through blk on the
//! synchronous and the asynchronous path; writes through blk (allocating, in place, partial sectors,
//! copy-on-write from the backing file, zeros) decrypted by qemu-img equal to QEMU's own; a wrong, missing or
//! hostile header refused with clear errors in bounded time.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use blk_core::{AsyncDiskFile, DiskFile, ErrorKind, IoBufMut, Secret};
use blk_test_support::{arena, read_through, write_through};
use support::*;

const PASSWORD: &str = "blk-luks-test";

fn object() -> String {
    format!("secret,id=sec0,data={PASSWORD}")
}

fn image_opts(image: &Path) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=sec0",
        path_str(image)
    )
}

/// `qemu-img create` of an encrypted image with `extra` options (and a qcow2 backing file).
fn qemu_create_encrypted(image: &Path, extra: &str, backing: Option<&Path>, size: &str) {
    let options = format!("encrypt.format=luks,encrypt.key-secret=sec0{extra}");
    let object = object();
    let mut args = vec![
        "create", "-q", "-f", "qcow2", "--object", &object, "-o", &options,
    ];
    if let Some(b) = backing {
        args.extend(["-b", path_str(b), "-F", "qcow2"]);
    }
    args.extend([path_str(image), size]);
    qemu_img(&args);
}

/// qemu-io `commands` on the encrypted `image`.
fn qemu_io_encrypted(image: &Path, commands: &[&str]) {
    let object = object();
    let opts = image_opts(image);
    let mut args = vec!["--object", &object, "--image-opts", &opts];
    for c in commands {
        args.extend(["-c", c]);
    }
    blk_test_support::run("qemu-io", &args);
}

/// What qemu-img decrypts `image` to (`convert -O raw`).
fn qemu_plain(image: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join(format!(
        "{}.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    let object = object();
    let opts = image_opts(image);
    qemu_img(&[
        "convert",
        "--object",
        &object,
        "--image-opts",
        &opts,
        "-O",
        "raw",
        path_str(&raw),
    ]);
    std::fs::read(raw).unwrap()
}

fn with_secret(
    mut options: blk_qcow::Qcow2OpenOptions,
    password: &str,
) -> blk_qcow::Qcow2OpenOptions {
    options.key_secret = Some(Secret::new(password.as_bytes().to_vec()));
    options
}

/// The writes both QEMU and blk do in the write tests: unaligned, partial sectors, across clusters, zeros.
const WRITES: &[&str] = &[
    "write -P 0xab 0 100k",
    "write -P 0x11 200k 1000",
    "write -P 0x22 300 700",
    "write -P 0x44 70000 10",
    "write -z 512k 64k",
    "write -P 0x55 900k 4k",
    "write -P 0x66 1000k 24k",
];

/// Parses `write [-z] [-P byte] offset len` (sizes with a `k` suffix).
fn parse_write(command: &str) -> (bool, u8, u64, u64) {
    let words: Vec<&str> = command.split_whitespace().collect();
    let num = |w: &str| match w.strip_suffix('k') {
        Some(k) => k.parse::<u64>().unwrap() * 1024,
        None => w.parse::<u64>().unwrap(),
    };
    let n = words.len();
    let zero = words.contains(&"-z");
    let byte = words
        .iter()
        .position(|w| *w == "-P")
        .map(|i| u8::from_str_radix(words[i + 1].trim_start_matches("0x"), 16).unwrap())
        .unwrap_or(0);
    (zero, byte, num(words[n - 2]), num(words[n - 1]))
}

/// Opens `image` with the password, reads it whole on both paths and compares with qemu-img's decryption.
#[track_caller]
fn assert_reads_like_qemu(image: &Path, dir: &Path, what: &str) {
    let expected = qemu_plain(image, dir);
    let disk = open_disk(image, &with_secret(ro(), PASSWORD)).unwrap();
    assert_same(&read_all(&disk), &expected, what);
    // Unaligned chunks: partial sectors at both ends of requests.
    let mut chunked = vec![0u8; expected.len()];
    for (i, chunk) in chunked.chunks_mut(3001).enumerate() {
        disk.read_exact_at(i as u64 * 3001, chunk).unwrap();
    }
    assert_same(&chunked, &expected, &format!("{what} (3001-byte reads)"));
    // The asynchronous path (decryption on the queue's workers).
    let mut queue = disk.create_async_io(32).unwrap();
    let size = disk.logical_size();
    let got = read_through(queue.as_mut(), size, arena(size));
    assert_same(&got, &expected, &format!("{what} (queue)"));
}

#[test]
fn qemu_made_images_read_back_through_blk() {
    let _serial = serial();
    let dir = tempdir();
    let cases: &[(&str, &str)] = &[
        ("default", ""),
        ("aes128", ",encrypt.cipher-alg=aes-128"),
        // (QEMU cannot make aes-192 images: its key material is no whole number of sectors.)
        ("cbc-plain64", ",encrypt.cipher-mode=cbc"),
        (
            "cbc-essiv",
            ",encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256",
        ),
        ("plain", ",encrypt.ivgen-alg=plain"),
        ("sha1", ",encrypt.hash-alg=sha1"),
        ("sha512", ",encrypt.hash-alg=sha512"),
        ("cluster512", ",cluster_size=512"),
        ("cluster2m", ",cluster_size=2M"),
        // The other 128-bit block ciphers this QEMU creates.
        ("twofish", ",encrypt.cipher-alg=twofish-256"),
        (
            "serpent-cbc-essiv",
            ",encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv",
        ),
        ("extended-l2", ",extended_l2=on"),
    ];
    for (name, extra) in cases {
        let image = dir.path().join(format!("{name}.qcow2"));
        qemu_create_encrypted(&image, &format!(",encrypt.iter-time=10{extra}"), None, "3M");
        qemu_io_encrypted(
            &image,
            &[
                "write -P 0x5a 0 64k",
                "write -P 0xc3 65535 3",
                "write -P 0x17 1M 300k",
                "write -z 1500k 64k",
                "write -P 0x99 2900k 100k",
            ],
        );
        assert_reads_like_qemu(&image, dir.path(), name);
        // Encrypted on the host: the plain pattern is nowhere in the file.
        let file = std::fs::read(&image).unwrap();
        assert!(
            !file.windows(64).any(|w| w.iter().all(|&b| b == 0x5a)),
            "{name}: plain data in the file"
        );
    }
}

#[test]
fn an_encrypted_image_over_a_backing_file_reads_back() {
    let _serial = serial();
    let dir = tempdir();
    let base = dir.path().join("base.qcow2");
    qemu_create(&base, "", "2M");
    qemu_io("qcow2", &base, &["write -P 0x33 0 2M"]);
    let image = dir.path().join("top.qcow2");
    qemu_create_encrypted(&image, ",encrypt.iter-time=10", Some(&base), "2M");
    qemu_io_encrypted(&image, &["write -P 0x44 100k 200k", "write -z 1M 64k"]);
    assert_reads_like_qemu(&image, dir.path(), "over a backing file");
}

#[test]
fn blk_writes_decrypt_in_qemu_as_qemus_own() {
    let _serial = serial();
    let dir = tempdir();
    let base = dir.path().join("base.qcow2");
    qemu_create(&base, "", "2M");
    qemu_io("qcow2", &base, &["write -P 0x33 0 2M"]);
    for (name, extra, backing) in [
        ("plain", ",encrypt.iter-time=10", None),
        ("cow", ",encrypt.iter-time=10", Some(&base)),
        ("essiv-512", ",encrypt.iter-time=10,cluster_size=512,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256", None),
        ("extended-l2", ",encrypt.iter-time=10,extended_l2=on", Some(&base)),
        ("twofish", ",encrypt.iter-time=10,encrypt.cipher-alg=twofish-192", None),
        ("serpent", ",encrypt.iter-time=10,encrypt.cipher-alg=serpent-256", Some(&base)),
    ] {
        let ours = dir.path().join(format!("{name}-blk.qcow2"));
        let theirs = dir.path().join(format!("{name}-qemu.qcow2"));
        for image in [&ours, &theirs] {
            qemu_create_encrypted(image, extra, backing.map(|b| b.as_path()), "2M");
        }
        qemu_io_encrypted(&theirs, WRITES);
        let disk = open_disk(&ours, &with_secret(rw(), PASSWORD)).unwrap();
        for w in WRITES {
            let (zero, byte, offset, len) = parse_write(w);
            if zero {
                disk.write_zeroes(offset, len, false).unwrap();
            } else {
                disk.write_all_at(offset, &vec![byte; len as usize]).unwrap();
            }
        }
        // Overwrites in place, whole sectors and a partial one.
        disk.write_all_at(4096, &[0x77; 8192]).unwrap();
        disk.write_all_at(1001, &[0x78; 3]).unwrap();
        disk.flush().unwrap();
        drop(disk);
        qemu_io_encrypted(&theirs, &["write -P 0x77 4k 8k", "write -P 0x78 1001 3"]);
        assert_same(
            &qemu_plain(&ours, dir.path()),
            &qemu_plain(&theirs, dir.path()),
            name,
        );
        let object = object();
        let opts = image_opts(&ours);
        qemu_img(&["check", "--object", &object, "--image-opts", &opts]);
        // And blk reads back what it wrote.
        assert_reads_like_qemu(&ours, dir.path(), name);
    }
}

#[test]
fn queue_writes_decrypt_in_qemu() {
    let _serial = serial();
    let dir = tempdir();
    let image = dir.path().join("queue.qcow2");
    qemu_create_encrypted(&image, ",encrypt.iter-time=10", None, "2M");
    let disk = open_disk(&image, &with_secret(rw(), PASSWORD)).unwrap();
    let writes = [
        (0, 0x21, 65536),
        (70_000, 0x22, 10_000),
        (1 << 20, 0x23, 4096),
    ];
    let mut queue = disk.create_async_io(32).unwrap();
    write_through(queue.as_mut(), &writes);
    drop(queue);
    drop(disk);
    let mut expected = vec![0u8; 2 << 20];
    for (offset, byte, len) in writes {
        expected[offset as usize..(offset + len) as usize].fill(byte);
    }
    assert_same(&qemu_plain(&image, dir.path()), &expected, "queue writes");
}

#[test]
fn wrong_or_missing_secrets_are_refused() {
    let _serial = serial();
    let dir = tempdir();
    let image = dir.path().join("locked.qcow2");
    qemu_create_encrypted(&image, ",encrypt.iter-time=10", None, "1M");
    let e = open_disk(&image, &with_secret(ro(), "not the password")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(
        e.to_string()
            .contains("Invalid password, cannot unlock any keyslot"),
        "{e}"
    );
    assert!(!e.to_string().contains("not the password"));
    let e = open_disk(&image, &rw()).unwrap_err();
    assert!(
        e.to_string()
            .contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{e}"
    );
    let e = open_disk(&image, &ro()).unwrap_err();
    assert!(
        e.to_string()
            .contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{e}"
    );
    // Opened as `info` opens (read-only, without the backing file): the image opens, described, its guest
    // data and map refused.
    let info =
        blk_qcow::Qcow2OpenOptions::new(blk_test_support::ro(), std::sync::Arc::new(InfoOpener));
    let disk = open_disk(&image, &info).unwrap();
    let described = blk_core::ImageAdmin::image_info(&*disk).unwrap();
    assert!(format!("{:?}", described.format_specific).contains("encrypt"));
    assert!(disk.map(0, 4096).is_err());
    let mut buf = [0u8; 512];
    let e = disk.read_exact_at(0, &mut buf).unwrap_err();
    assert!(e.to_string().contains("encrypt.key-secret"), "{e}");
    let e = disk
        .read_at(0, &[IoBufMut::from(&mut buf[..])])
        .unwrap_err();
    assert!(e.to_string().contains("encrypt.key-secret"), "{e}");
}

/// An opener as `info` has one: no backing files (QEMU's `BDRV_O_NO_BACKING`).
#[derive(Debug)]
struct InfoOpener;

impl blk_core::ImageOpener for InfoOpener {
    fn open_named(&self, image: &blk_core::NamedImage) -> blk_core::Result<Box<dyn DiskFile>> {
        Err(
            blk_core::Error::new(ErrorKind::PermissionDenied, "no backing files")
                .with_path(&image.path),
        )
    }

    fn skips_backing(&self) -> bool {
        true
    }
}

/// The LUKS header's offset in the file (from the crypto header extension).
fn luks_offset(image: &Path) -> u64 {
    let bytes = std::fs::read(image).unwrap();
    let mut at = 112;
    loop {
        let kind = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if kind == 0x0537_be77 {
            return u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        }
        assert_ne!(kind, 0, "no crypto header extension");
        at += 8 + len.div_ceil(8) * 8;
    }
}

#[test]
fn hostile_luks_headers_are_refused_quickly() {
    let _serial = serial();
    let dir = tempdir();
    let pristine = dir.path().join("pristine.qcow2");
    qemu_create_encrypted(&pristine, ",encrypt.iter-time=10", None, "1M");
    let luks = luks_offset(&pristine);
    // (what, offset in the LUKS header, bytes, expected message part)
    let patches: &[(&str, u64, &[u8], &str)] = &[
        (
            "slot iterations",
            208 + 4,
            &u32::MAX.to_be_bytes(),
            "PBKDF2 iterations",
        ),
        (
            "digest iterations",
            164,
            &u32::MAX.to_be_bytes(),
            "PBKDF2 iterations",
        ),
        ("key bytes", 108, &4096u32.to_be_bytes(), "key length"),
        ("stripes", 208 + 44, &4_000_000u32.to_be_bytes(), "stripes"),
        (
            "key offset",
            208 + 40,
            &0x00ff_ffffu32.to_be_bytes(),
            "outside",
        ),
        ("slot state", 208, &7u32.to_be_bytes(), "corrupted"),
        ("magic", 0, b"XUKS", "LUKS"),
        ("cipher", 8, b"cast5\0\0\0", "not supported"),
        ("hash", 72, b"md5\0\0\0", "not supported"),
        ("version", 6, &2u16.to_be_bytes(), "version"),
    ];
    for (what, at, bytes, message) in patches {
        let image = dir.path().join("hostile.qcow2");
        std::fs::copy(&pristine, &image).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        file.write_all_at(bytes, luks + at).unwrap();
        let start = Instant::now();
        let e = open_disk(&image, &with_secret(ro(), PASSWORD)).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            start.elapsed()
        );
        assert!(e.to_string().contains(message), "{what}: {e}");
    }
    // The extension: a length past the cap, an offset past the end of the file.
    let bytes = std::fs::read(&pristine).unwrap();
    let ext = bytes
        .windows(4)
        .position(|w| w == [0x05, 0x37, 0xbe, 0x77])
        .unwrap() as u64;
    for (what, at, value, message) in [
        ("length", ext + 16, 1u64 << 40, "cap"),
        ("offset", ext + 8, 1u64 << 40, "past the end"),
        ("unaligned", ext + 8, luks + 512, "multiple of cluster size"),
    ] {
        let image = dir.path().join("hostile.qcow2");
        std::fs::copy(&pristine, &image).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        file.write_all_at(&value.to_be_bytes(), at).unwrap();
        let e = open_disk(&image, &with_secret(ro(), PASSWORD)).unwrap_err();
        assert!(e.to_string().contains(message), "{what}: {e}");
    }
}

#[test]
fn blk_check_counts_the_luks_header() {
    let _serial = serial();
    let dir = tempdir();
    let image = dir.path().join("check.qcow2");
    qemu_create_encrypted(&image, ",encrypt.iter-time=10", None, "1M");
    qemu_io_encrypted(&image, &["write -P 1 0 128k"]);
    let disk = open_disk(&image, &with_secret(ro(), PASSWORD)).unwrap();
    let report = blk_core::ImageAdmin::check(&*disk, blk_core::RepairMode::None).unwrap();
    assert_eq!((report.leaks, report.corruptions), (0, 0), "{report:?}");
}

#[test]
fn an_image_at_qemus_default_iteration_time_opens() {
    let _serial = serial();
    let dir = tempdir();
    let image = dir.path().join("default-iter-time.qcow2");
    // qemu-img's default: PBKDF2 calibrated to 2 s per key slot.
    qemu_create_encrypted(&image, "", None, "1M");
    qemu_io_encrypted(&image, &["write -P 0x42 4k 8k"]);
    let disk = open_disk(&image, &with_secret(ro(), PASSWORD)).unwrap();
    let mut buf = vec![0u8; 8192];
    disk.read_exact_at(4096, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
}
