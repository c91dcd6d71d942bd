//! Any bytes as a vhd image: open, read, write and flush must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::vhd::vhd(data));
