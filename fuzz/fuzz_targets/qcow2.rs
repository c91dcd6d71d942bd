//! Any bytes as a qcow2 image: open, read, write and flush must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::qcow2::qcow2(data));
