//! Any bytes as a vhdx image: open, read, write and flush must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::vhdx::vhdx(data));
