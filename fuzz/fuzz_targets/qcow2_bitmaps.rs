//! Bytes over the bitmaps extension, directory and tables of a valid qcow2 image: listing, reading, writing
//! and changing bitmaps must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::qcow2_bitmaps::qcow2_bitmaps(data));
