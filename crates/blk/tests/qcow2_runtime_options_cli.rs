//! QCOW2's runtime options through `--image-opts`: `overlap-check=none` lets through the write QEMU's default
//! (`cached`) refuses, as qemu-io given the same string does, and bad values and combinations are refused
//! with qemu-img's messages.
#![cfg(feature = "qcow2")]

mod common;

use common::{assert_both_fail_with, code, ok, stderr, stdout, Scratch};

fn be64(image: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(image[at..at + 8].try_into().unwrap())
}

/// A 64 MiB image whose snapshot table is declared over the data cluster of guest offset 0 (one all-zero
/// entry, valid as such): a guest write there overlaps the snapshot table (the crafted image of
/// `qcow2_overlap_cli.rs`).
fn snapshot_table_over_data(s: &Scratch, name: &str) {
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", name, "64M"]));
    ok(&s.qemu_io(&["-c", "write -P 0 0 64k", name]));
    let mut image = s.read(name);
    let l2 = (be64(&image, be64(&image, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = be64(&image, l2) & 0x00ff_ffff_ffff_fe00;
    // nb_snapshots = 1, snapshots_offset = that data cluster.
    image[60..64].copy_from_slice(&1u32.to_be_bytes());
    image[64..72].copy_from_slice(&data.to_be_bytes());
    s.write(name, &image);
}

#[test]
fn overlap_check_none_lets_through_the_write_cached_refuses() {
    let s = Scratch::new();
    snapshot_table_over_data(&s, "o.qcow2");
    for name in [
        "q-cached.qcow2",
        "b-cached.qcow2",
        "q-none.qcow2",
        "b-none.qcow2",
    ] {
        s.write(name, &s.read("o.qcow2"));
    }
    let opts =
        |name: &str, mode: &str| format!("driver=qcow2,file.filename={name},overlap-check={mode}");
    let write = "write -P 0x5a 0 4k";
    // cached (QEMU's default, given explicitly): both refuse the write over the snapshot table.
    let expected = "Preventing invalid write on metadata (overlaps with snapshot table)";
    let theirs = s.qemu_io(&[
        "--image-opts",
        "-c",
        write,
        &opts("q-cached.qcow2", "cached"),
    ]);
    let ours = s.blk(&[
        "io",
        "--image-opts",
        "-c",
        write,
        &opts("b-cached.qcow2", "cached"),
    ]);
    assert!(
        stderr(&theirs).contains(expected),
        "qemu-io: {}",
        stderr(&theirs)
    );
    // (blk io reports the refused write as qemu-io's `write failed: Input/output error`; the image is marked
    // corrupt as QEMU marks its copy.)
    assert!(
        stdout(&ours).contains("write failed"),
        "blk: {}",
        stdout(&ours)
    );
    assert!(be64(&s.read("q-cached.qcow2"), 72) & 2 != 0);
    assert!(be64(&s.read("b-cached.qcow2"), 72) & 2 != 0);
    // none: both write, leaving the same bytes.
    let theirs = s.qemu_io(&["--image-opts", "-c", write, &opts("q-none.qcow2", "none")]);
    let ours = s.blk(&[
        "io",
        "--image-opts",
        "-c",
        write,
        &opts("b-none.qcow2", "none"),
    ]);
    assert!(
        !stderr(&theirs).contains("Preventing"),
        "qemu-io: {}",
        stderr(&theirs)
    );
    assert_eq!(code(&ours), 0, "blk: {}", stderr(&ours));
    assert!(
        !stderr(&ours).contains("Preventing"),
        "blk: {}",
        stderr(&ours)
    );
    assert!(
        s.read("b-none.qcow2") == s.read("q-none.qcow2"),
        "blk left other bytes than qemu-io"
    );
    // (The write landed in the declared snapshot table, which QEMU then refuses to open: the equal bytes are
    // the check.)
    assert_ne!(s.read("b-none.qcow2"), s.read("o.qcow2"));
}

/// `overlap-check.<structure>` switches one structure's check on top of the mode, as qemu-io does: the
/// snapshot table's check off under `cached` lets the write through, on under `none` refuses it; the bytes
/// each tool leaves are the same.
#[test]
fn overlap_check_structure_switches_as_qemu_io() {
    let s = Scratch::new();
    snapshot_table_over_data(&s, "o.qcow2");
    let write = "write -P 0x5a 0 4k";
    for (case, options, refused) in [
        (
            "off",
            "overlap-check=cached,overlap-check.snapshot-table=off",
            false,
        ),
        (
            "on",
            "overlap-check=none,overlap-check.snapshot-table=on",
            true,
        ),
        // Another structure switched off leaves the snapshot table's check on.
        (
            "other",
            "overlap-check.active-l2=off,overlap-check.main-header=no",
            true,
        ),
    ] {
        let (q, b) = (format!("q-{case}.qcow2"), format!("b-{case}.qcow2"));
        s.write(&q, &s.read("o.qcow2"));
        s.write(&b, &s.read("o.qcow2"));
        let theirs = s.qemu_io(&[
            "--image-opts",
            "-c",
            write,
            &format!("driver=qcow2,file.filename={q},{options}"),
        ]);
        let ours = s.blk(&[
            "io",
            "--image-opts",
            "-c",
            write,
            &format!("driver=qcow2,file.filename={b},{options}"),
        ]);
        assert_eq!(
            stderr(&theirs).contains("Preventing invalid write"),
            refused,
            "{case}: qemu-io: {}",
            stderr(&theirs)
        );
        if refused {
            assert!(
                stdout(&ours).contains("write failed"),
                "{case}: blk: {}",
                stdout(&ours)
            );
        } else {
            assert_eq!(code(&ours), 0, "{case}: blk: {}", stderr(&ours));
            assert!(
                !stderr(&ours).contains("Preventing"),
                "{case}: blk: {}",
                stderr(&ours)
            );
        }
        assert!(
            s.read(&b) == s.read(&q),
            "{case}: blk left other bytes than qemu-io"
        );
    }
}

/// `pass-discard-request=off` leaves the clusters guest discards and unmapping write-zeroes free allocated in
/// the file, as qemu-io given the same string does; by default both punch them. The files end byte for byte
/// equal to qemu-io's either way. QEMU's other discard options are taken at blk's fixed behaviour (their
/// defaults) and refused otherwise.
#[test]
fn pass_discard_request_as_qemu_io() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "d.qcow2", "16M"]));
    ok(&s.qemu_io(&["-c", "write -P 1 0 4M", "d.qcow2"]));
    let commands = ["discard 0 1M", "write -z -u 2M 1M"];
    for (case, extra) in [("off", ",pass-discard-request=off"), ("default", "")] {
        let (q, b) = (format!("q-{case}.qcow2"), format!("b-{case}.qcow2"));
        s.write(&q, &s.read("d.qcow2"));
        s.write(&b, &s.read("d.qcow2"));
        let mut qemu_args = vec!["--image-opts"];
        let mut blk_args = vec!["io", "--image-opts"];
        for c in commands {
            qemu_args.extend(["-c", c]);
            blk_args.extend(["-c", c]);
        }
        let q_opts = format!("driver=qcow2,file.filename={q}{extra}");
        let b_opts = format!("driver=qcow2,file.filename={b}{extra}");
        qemu_args.push(&q_opts);
        blk_args.push(&b_opts);
        ok(&s.qemu_io(&qemu_args));
        ok(&s.blk(&blk_args));
        assert!(
            s.read(&b) == s.read(&q),
            "{case}: blk left other bytes than qemu-io"
        );
        ok(&s.qemu_img(&["check", &b]));
    }
    assert!(
        s.read("b-off.qcow2") != s.read("b-default.qcow2"),
        "pass-discard-request=off changed nothing"
    );
    let text =
        "driver=qcow2,file.filename=d.qcow2,pass-discard-snapshot=on,pass-discard-other=off,\
                discard-no-unref=off";
    ok(&s.blk(&["info", "--image-opts", text]));
    for refused in [
        "pass-discard-snapshot=off",
        "pass-discard-other=on",
        "discard-no-unref=on",
    ] {
        let text = format!("driver=qcow2,file.filename=d.qcow2,{refused}");
        let out = s.blk(&["info", "--image-opts", &text]);
        assert_eq!(code(&out), 1, "{refused}");
        assert!(
            stderr(&out).contains("blk supports only"),
            "{refused}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_values_and_combinations_get_qemu_img_messages() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "x.qcow2", "1G"]));
    for (options, message) in [
        (
            "overlap-check=bad",
            "Unsupported value 'bad' for qcow2 option 'overlap-check'. Allowed are any of the following: \
             none, constant, cached, all",
        ),
        (
            "overlap-check=none,overlap-check.template=all",
            "Conflicting values for qcow2 options 'overlap-check' ('none') and 'overlap-check.template' \
             ('all')",
        ),
        (
            "l2-cache-size=abc",
            "Parameter 'l2-cache-size' expects a non-negative number below 2^64",
        ),
        (
            "l2-cache-size=-1",
            "Value '-1' is out of range for parameter 'l2-cache-size'",
        ),
        (
            "cache-size=1M,l2-cache-size=2M",
            "l2-cache-size may not exceed cache-size",
        ),
        (
            "cache-size=1M,refcount-cache-size=2M",
            "refcount-cache-size may not exceed cache-size",
        ),
        (
            "cache-size=1M,l2-cache-size=512k,refcount-cache-size=1k",
            "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
        ),
        (
            "l2-cache-entry-size=1000",
            "L2 cache entry size must be a power of two between 512 and the cluster size (65536)",
        ),
        (
            "cache-clean-interval=abc",
            "Parameter 'cache-clean-interval' expects a number",
        ),
        ("cache-clean-interval=5000000000", "Cache clean interval too big"),
        (
            "bogus=1",
            "Block format 'qcow2' does not support the option 'bogus'",
        ),
        (
            "overlap-check.main-header=maybe",
            "Parameter 'overlap-check.main-header' expects 'on' or 'off'",
        ),
        (
            "overlap-check.bogus=on",
            "Block format 'qcow2' does not support the option 'overlap-check.bogus'",
        ),
    ] {
        let text = format!("driver=qcow2,file.filename=x.qcow2,{options}");
        assert_both_fail_with(&s, &["info", "--image-opts", &text], message);
    }
    // qemu-io words the refusal its own way.
    let text = "driver=qcow2,file.filename=x.qcow2,overlap-check=bad";
    let theirs = s.qemu_io(&["--image-opts", "-c", "read 0 512", text]);
    let ours = s.blk(&["io", "--image-opts", "-c", "read 0 512", text]);
    let expected = "can't open: Unsupported value 'bad' for qcow2 option 'overlap-check'";
    assert!(
        stderr(&theirs).contains(expected),
        "qemu-io: {}",
        stderr(&theirs)
    );
    assert!(stderr(&ours).contains(expected), "blk: {}", stderr(&ours));
    assert_eq!(code(&ours), code(&theirs));
    // Values QEMU takes open the image.
    for options in [
        "l2-cache-size=1M",
        "cache-size=4M",
        "cache-size=2M,refcount-cache-size=256k",
        "l2-cache-entry-size=4k,cache-clean-interval=0",
        "overlap-check=all",
        "overlap-check.inactive-l2=on,overlap-check.bitmap-directory=false",
    ] {
        let text = format!("driver=qcow2,file.filename=x.qcow2,{options}");
        ok(&s.qemu_img(&["info", "--image-opts", &text]));
        ok(&s.blk(&["info", "--image-opts", &text]));
    }
}

#[test]
fn bench_takes_runtime_options() {
    let s = Scratch::new();
    ok(&s.qemu_img(&["create", "-q", "-f", "qcow2", "b.qcow2", "16M"]));
    let text = "driver=qcow2,file.filename=b.qcow2,overlap-check=none,l2-cache-size=1M";
    ok(&s.blk(&["bench", "--image-opts", "-w", "-c", "16", "-s", "4k", text]));
    let bad = "driver=qcow2,file.filename=b.qcow2,overlap-check=bad";
    let out = s.blk(&["bench", "--image-opts", "-c", "1", bad]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("Unsupported value 'bad'"),
        "{}",
        stderr(&out)
    );
}
