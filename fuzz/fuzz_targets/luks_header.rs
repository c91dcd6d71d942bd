//! Any bytes as a LUKS1 header area inside a qcow2 image: parse, check and unlock must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::luks_header::luks_header(data));
