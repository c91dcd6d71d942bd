//! Any bytes as an image file: detection, open, map and read must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::open_image(data));
