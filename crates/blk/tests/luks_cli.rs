//! LUKS-encrypted QCOW2 through the CLI, against qemu-img: `info` as qemu-img prints it, reads and writes with
//! the secret from `--object secret,...` and `--image-opts ...,encrypt.key-secret=ID` (io_uring queues
//! included), `create -o encrypt.*` and `convert -O qcow2 -o encrypt.*` making images qemu-img opens, and the
//! errors for a wrong or missing secret.
#![cfg(feature = "qcow2")]

mod common;

use common::{code, ok, stderr, stdout, Scratch};

const OBJECT: &str = "secret,id=sec0,data=correct horse";

fn opts(name: &str) -> String {
    format!("driver=qcow2,file.filename={name},encrypt.key-secret=sec0")
}

/// qemu-img create of an encrypted image (PBKDF2 at 10 ms) with `extra` options.
fn qemu_create(s: &Scratch, name: &str, extra: &str, size: &str) {
    s.create_luks_qcow2(OBJECT, "sec0", extra, name, size);
}

/// What qemu-img decrypts `name` to.
fn qemu_plain(s: &Scratch, name: &str) -> Vec<u8> {
    let raw = format!("{name}.qemu.raw");
    ok(&s.qemu_img(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &opts(name),
        "-O",
        "raw",
        &raw,
    ]));
    s.read(&raw)
}

fn qemu_io(s: &Scratch, name: &str, commands: &[&str]) {
    let o = opts(name);
    let mut args = vec!["--object", OBJECT, "--image-opts", &o];
    for c in commands {
        args.extend(["-c", c]);
    }
    ok(&s.qemu_io(&args));
}

#[test]
fn info_prints_the_encryption_as_qemu_img() {
    let s = Scratch::new();
    qemu_create(
        &s,
        "i.qcow2",
        ",encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1",
        "1M",
    );
    for args in [
        &["info", "i.qcow2"][..],
        &["info", "--output=json", "i.qcow2"],
    ] {
        let theirs = ok(&s.qemu_img(args));
        let ours = ok(&s.blk(args));
        if args.len() == 3 {
            let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
            assert_eq!(parse(&ours), parse(&theirs));
        } else {
            assert_eq!(ours, theirs);
        }
    }
}

#[test]
fn reads_and_writes_with_the_secret_match_qemu() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "base.qcow2", "2M"]));
    ok(&s.qemu_io(&["-c", "write -P 0x33 0 2M", "base.qcow2"]));
    let commands = [
        "aio_write -P 0xab 0 100k",
        "aio_write -P 0x11 200k 1000",
        "aio_flush",
        "aio_write -P 0x22 300 700",
        "aio_write -z 512k 64k",
        "aio_write -P 0x55 900k 4k",
        "aio_flush",
        "aio_read -P 0x55 900k 4k",
        "aio_read -P 0x33 600k 4k",
        "aio_read -P 0x22 300 700",
        "aio_flush",
    ];
    for (name, backend) in [("u.qcow2", "io_uring"), ("t.qcow2", "threads")] {
        for image in [name.to_string(), format!("q-{name}")] {
            let o = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
            ok(&s.qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "--object",
                OBJECT,
                "-o",
                o,
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                &image,
            ]));
        }
        let o = opts(name);
        let mut args = vec!["io", "--object", OBJECT, "-i", backend];
        if backend == "io_uring" {
            args.push("-n");
        }
        args.extend(["--image-opts", &o]);
        for c in commands {
            args.extend(["-c", c]);
        }
        let out = ok(&s.blk(&args));
        assert!(!out.contains("verification failed"), "{out}");
        qemu_io(&s, &format!("q-{name}"), &commands);
        assert_eq!(
            qemu_plain(&s, name),
            qemu_plain(&s, &format!("q-{name}")),
            "{backend}"
        );
        ok(&s.qemu_img(&["check", "--object", OBJECT, "--image-opts", &o]));
        // blk convert reads it as qemu-img does.
        ok(&s.blk(&[
            "convert",
            "--object",
            OBJECT,
            "--image-opts",
            &o,
            "-O",
            "raw",
            "b.raw",
        ]));
        assert_eq!(s.read("b.raw"), qemu_plain(&s, name));
    }
}

#[test]
fn wrong_and_missing_secrets_fail_as_in_qemu() {
    let s = Scratch::new();
    qemu_create(&s, "w.qcow2", "", "1M");
    let wrong = "secret,id=sec0,data=battery staple";
    let o = opts("w.qcow2");
    let out = s.blk(&[
        "convert",
        "--object",
        wrong,
        "--image-opts",
        &o,
        "-O",
        "raw",
        "x.raw",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Invalid password, cannot unlock any keyslot"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("battery"));
    let theirs = s.qemu_img(&[
        "convert",
        "--object",
        wrong,
        "--image-opts",
        &o,
        "-O",
        "raw",
        "x.raw",
    ]);
    assert!(stderr(&theirs).contains("Invalid password, cannot unlock any keyslot"));
    let out = s.blk(&["convert", "-O", "raw", "w.qcow2", "x.raw"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{}",
        stderr(&out)
    );
    let out = s.blk(&["io", "-c", "write 0 4k", "w.qcow2"]);
    assert!(
        stdout(&out).contains("encrypt.key-secret") || stderr(&out).contains("encrypt.key-secret")
    );
}

#[test]
fn created_images_open_in_qemu() {
    let s = Scratch::new();
    for (name, extra) in [
        ("default.qcow2", ""),
        ("aes128.qcow2", ",encrypt.cipher-alg=aes-128"),
        (
            "essiv.qcow2",
            ",encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha512",
        ),
        ("small.qcow2", ",cluster_size=512"),
    ] {
        let o = format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=50{extra}");
        let out = ok(&s.blk(&["create", "-f", "qcow2", "--object", OBJECT, "-o", &o, name, "4M"]));
        let theirs_name = format!("q-{name}");
        let theirs = ok(&s.qemu_img(&["create", "-f", "qcow2", "--object", OBJECT, "-o", &o, &theirs_name, "4M"]));
        assert_eq!(out, theirs.replace(&theirs_name, name), "Formatting line");
        qemu_io(&s, name, &["write -P 0x5c 64k 1M", "read -P 0x5c 64k 1M"]);
        let mut expected = vec![0u8; 4 << 20];
        expected[65536..65536 + (1 << 20)].fill(0x5c);
        assert_eq!(qemu_plain(&s, name), expected, "{name}");
        ok(&s.qemu_img(&["check", "--object", OBJECT, "--image-opts", &opts(name)]));
        ok(&s.blk(&["check", "--object", OBJECT, "--image-opts", &opts(name)]));
        // Without the secret, as qemu-img: only `info` opens it.
        let out = s.blk(&["check", name]);
        assert_eq!(code(&out), code(&s.qemu_img(&["check", name])));
        // The same description as qemu-img's twin, but for the random salts, UUID and calibrated iterations.
        let info = |out: String| {
            let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let e = &mut v["format-specific"]["data"]["encrypt"];
            for key in ["uuid", "master-key-iters"] {
                e.as_object_mut().unwrap().remove(key);
            }
            assert!(e["slots"][0]["iters"].as_u64().unwrap() >= 1000);
            e["slots"][0].as_object_mut().unwrap().remove("iters");
            v["format-specific"].clone()
        };
        assert_eq!(
            info(ok(&s.qemu_img(&["info", "--output=json", name]))),
            info(ok(&s.qemu_img(&["info", "--output=json", &theirs_name]))),
            "{name}"
        );
    }
    // Without a secret, or with an unknown id: qemu-img's messages.
    let out = s.blk(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks",
        "x.qcow2",
        "1M",
    ]);
    assert!(
        stderr(&out).contains("Parameter 'encrypt.key-secret' is required for cipher"),
        "{}",
        stderr(&out)
    );
    let out = s.blk(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "encrypt.cipher-alg=aes-128",
        "x.qcow2",
        "1M",
    ]);
    assert!(
        stderr(&out).contains("Parameter 'encrypt.format' is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn convert_to_and_from_encrypted_images() {
    let s = Scratch::new();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    s.write("src.raw", &data);
    ok(&s.blk(&[
        "convert",
        "--object",
        OBJECT,
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "src.raw",
        "enc.qcow2",
    ]));
    assert_eq!(qemu_plain(&s, "enc.qcow2"), data);
    ok(&s.qemu_img(&[
        "check",
        "--object",
        OBJECT,
        "--image-opts",
        &opts("enc.qcow2"),
    ]));
    ok(&s.blk(&[
        "convert",
        "--object",
        OBJECT,
        "--image-opts",
        &opts("enc.qcow2"),
        "-O",
        "raw",
        "back.raw",
    ]));
    assert_eq!(s.read("back.raw"), data);
}
